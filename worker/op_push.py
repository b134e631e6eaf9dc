"""Push a registered version to the Hugging Face Hub: jobs of kind "push" (api/routes/pushes.py queues them, and
so does a training job that asked for a `push`).

`create_repo(exist_ok=True)`, the branch when it is not `main`, then `upload_folder` of the version's folder
(weights, tokenizer, config, model card, training_params.json, metrics.json; an imported version's other
files too, all checked at import) and nothing outside it. The Hub is
`FTSERVE_HF_ENDPOINT` (huggingface_hub's default otherwise). `HF_HUB_OFFLINE` (set at start by the hub probe,
or by the operator) is about downloads: a push contacts the endpoint whatever was reachable at start, so
huggingface_hub's offline switch, which it checks on every request, is off for the push.

The token (the request's, from the job row's secret, or the server's FTSERVE_HF_TOKEN) goes to `HfApi` and
nowhere else: every message that leaves this module has it replaced by `***`, and the exceptions raised here
carry no chain back to the library's, so a logged traceback shows none of what the Hub sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from sqlalchemy.orm import Session

from core.errors import UserError, scrub_paths
from registry import jobs as jobrepo
from registry.models import Job, ModelVersion
from training.spec import JobSpec, server_push_problem
from worker.operations import OperationCancelled, OperationContext, Outcome, operation

log = logging.getLogger("ftserve.child")
T = TypeVar("T")
# Connecting must be quick (an unreachable endpoint fails the push at once); a commit of large files may take
# the Hub a while to answer.
IO_TIMEOUT_SECONDS = 300.0


class HubPushError(RuntimeError):
    """A push failed for a reason the user cannot fix (an answer huggingface_hub could not use); its message
    is scrubbed of tokens and paths."""


def scrub(text: str, secrets: tuple[str | None, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return scrub_paths(text)


@contextmanager
def hub_session(*, connect_timeout: float) -> Iterator[None]:
    """huggingface_hub's HTTP client for the push: online (whatever HF_HUB_OFFLINE says: that governs downloads)
    and with timeouts (the library's default client has none). Restored afterwards."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    def client() -> httpx2.Client:
        return httpx2.Client(event_hooks={"request": [_http.hf_request_event_hook]}, follow_redirects=True,
                             timeout=httpx2.Timeout(IO_TIMEOUT_SECONDS, connect=connect_timeout))

    offline = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    _http.set_client_factory(client)
    try:
        yield
    finally:
        _http.set_client_factory(_http.default_client_factory)
        constants.HF_HUB_OFFLINE = offline


def _server_message(exc: Any) -> str:
    message = (getattr(exc, "server_message", None) or "").strip()
    if not message:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        message = lines[0] if lines else type(exc).__name__
    return message[:1000]


class _Hub:
    """Calls into huggingface_hub with its failures turned into messages a user can act on."""

    def __init__(self, *, endpoint: str | None, token: str, secrets: tuple[str | None, ...]) -> None:
        from huggingface_hub import HfApi

        self.api = HfApi(endpoint=endpoint, token=token)
        self.host = urlparse(self.api.endpoint).netloc or self.api.endpoint
        self.secrets = secrets

    def call(self, what: str, fn: Callable[[], T]) -> T:
        import httpx2
        from huggingface_hub.errors import HfHubHTTPError

        try:
            return fn()
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            said = _server_message(exc)
            if status in (401, 403):
                message = f"the Hub at {self.host} refused the token ({status}) while {what}: {said}"
            elif status is not None and status >= 500:
                message = f"the Hub at {self.host} failed ({status}) while {what}: {said}; try the push again later"
            else:
                message = f"the Hub at {self.host} refused {what} ({status}): {said}"
            raise UserError(scrub(message, self.secrets)) from None
        except httpx2.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise UserError(scrub(
                f"could not reach the Hub at {self.host} while {what} ({type(exc).__name__}: {reason}); check "
                "FTSERVE_HF_ENDPOINT and that the worker can reach it", self.secrets)) from None
        except (OperationCancelled, UserError):
            raise
        except Exception as exc:  # an answer the library could not use, or a local read error: said, scrubbed
            raise HubPushError(scrub(f"{what} failed: {type(exc).__name__}: {exc}", self.secrets)) from None


def _token(ctx: OperationContext) -> str:
    spec, settings = ctx.job.spec, ctx.settings
    if spec.get("auth") == "request":
        if not ctx.job.secret:
            raise UserError("the push's token is gone (a token is kept only until its push ends): push again "
                            "with a token")
        return ctx.job.secret
    problem = server_push_problem(spec["repo_id"], token_configured=settings.server_hf_token is not None,
                                  namespaces=settings.push_namespaces,
                                  own_token_hint=spec.get("requested_by") is None)
    if problem is not None:  # the settings may have changed since the push was queued
        raise UserError(problem)
    assert settings.server_hf_token is not None
    return settings.server_hf_token


def _folder(ctx: OperationContext) -> Path:
    name, version = ctx.job.model_name, ctx.job.model_version
    if version is None:
        raise UserError(f"push {ctx.job.id} names no version of '{name}'")

    def live(s: Session) -> bool:
        mv = s.get(ModelVersion, (name, version))
        return mv is not None and mv.deleted_at is None

    folder = ctx.store.version_dir(name, version)
    if not ctx.callbacks.write("reading the version", live) or not (folder / "config.json").is_file():
        raise UserError(f"model '{name}' has no version {version} any more (deleted): nothing to push")
    if any(p.is_symlink() for p in folder.rglob("*")):
        # Only the version's own files leave the server: a link could point anywhere.
        raise UserError(f"{name}:{version} holds a symbolic link; it cannot be pushed")
    return folder


@operation("push")
def push(ctx: OperationContext) -> Outcome:
    spec = ctx.job.spec
    repo_id, revision, private = spec["repo_id"], spec.get("revision") or "main", bool(spec.get("private", True))
    ref = f"{ctx.job.model_name}:{ctx.job.model_version}"
    folder = _folder(ctx)
    token = _token(ctx)
    secrets = (token, ctx.settings.server_hf_token)
    if ctx.callbacks.should_stop():
        raise OperationCancelled
    with hub_session(connect_timeout=min(10.0, ctx.settings.hub_timeout_seconds)):
        hub = _Hub(endpoint=ctx.settings.hf_endpoint, token=token, secrets=secrets)
        ctx.callbacks.on_event("log", f"pushing {ref} to {repo_id} ({revision}) on {hub.host}",
                               {"repo_id": repo_id, "revision": revision, "private": private, "endpoint": hub.host})
        hub.call(f"creating the repo {repo_id}", lambda: hub.api.create_repo(
            repo_id, private=private, exist_ok=True, repo_type="model"))
        if revision != "main":
            hub.call(f"creating the branch {revision}", lambda: hub.api.create_branch(
                repo_id, branch=revision, exist_ok=True, repo_type="model"))
        if ctx.callbacks.should_stop():
            raise OperationCancelled
        info = hub.call(f"uploading {ref}", lambda: hub.api.upload_folder(
            folder_path=folder, repo_id=repo_id, repo_type="model", revision=revision,
            commit_message=spec.get("commit_message") or f"Upload {ref} from ftserve"))
    result = {"url": str(info.commit_url), "commit": str(info.oid), "repo_id": repo_id, "revision": revision,
              "repo_url": str(info.repo_url)}
    ctx.callbacks.on_event("log", f"pushed {ref} to {repo_id}: commit {info.oid}", dict(result))
    log.info("push %s: %s → %s (%s) commit %s", ctx.job.id, ref, repo_id, revision, info.oid)
    return Outcome(result=result)


def add_job_push(s: Session, job_id: str, *, owner: str, spec: JobSpec, version: int, push_id: str) -> None:
    """The push a training job asked for, queued in the transaction that registers its `version` (and holds the
    job's fence): a push job of the training job's owner with the server's token, and an event on the training
    job naming it, before its final status event. A worker lost right after the commit loses no push; the
    message is sent after the commit (`send_job`), and a lost one is re-sent by the reconciler."""
    assert spec.push is not None
    if s.get(Job, push_id) is not None:
        return  # the registration transaction is being retried
    target = spec.push
    push_spec = {"repo_id": target.repo_id, "private": target.private, "revision": target.revision,
                 "commit_message": f"Upload {spec.model_name}:{version} from ftserve (job {job_id})",
                 "auth": "server", "requested_by": job_id}
    jobrepo.create_job(s, Job(id=push_id, owner=owner, kind="push", task=spec.task, spec=push_spec,
                              model_name=spec.model_name, model_version=version))
    jobrepo.add_event(s, job_id, "log", f"push {push_id} queued: {spec.model_name}:{version} to "
                      f"{target.repo_id} ({target.revision})",
                      {"push_id": push_id, "repo_id": target.repo_id, "revision": target.revision})
