"""Import a Hugging Face Hub model as a registered version (`POST /models/{name}/versions` `{"hub": …}`).

The job downloads the repo's safetensors weights, config, tokenizer and card (never a pickle, never code), or
takes them from this server's cache when the Hub is offline or unreachable; checks the folder as an uploaded
archive is checked (inference/importing.py); and registers it, fenced, in the transaction that ends the job.
"""

from __future__ import annotations

import fnmatch
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from filelock import FileLock

from core.errors import UserError
from registry import jobs as jobrepo
from registry import versions
from registry.access import Viewer
from registry.db import session_scope
from registry.models import ModelVersion
from worker.operations import OperationCancelled, OperationContext, Outcome, operation

log = logging.getLogger("ftserve.child")

# What is fetched of a repo: weights as safetensors only, configs, tokenizer files and the card.
ALLOWED = ("*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json",
           "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
           "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model",
           "README.md", "training_params.json", "metrics.json")
PICKLES = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt", "*.h5", "*.msgpack")


def _wanted(path: str) -> bool:
    return "/" not in path and any(fnmatch.fnmatch(path, p) for p in ALLOWED)


def _online_files(repo_id: str, revision: str | None, *, max_bytes: int) -> tuple[list[str], str]:
    """The repo's files to fetch and the commit they are at; raises what the Hub raised when it cannot say."""
    from huggingface_hub import HfApi

    info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    siblings = info.siblings or []
    names = [s.rfilename for s in siblings]
    if not any(fnmatch.fnmatch(n, "*.safetensors") and "/" not in n for n in names):
        pickles = [n for n in names if any(fnmatch.fnmatch(n, p) for p in PICKLES)]
        detail = f" (it has {', '.join(sorted(pickles)[:3])}: pickle formats are never loaded)" if pickles else ""
        raise UserError(f"hub model '{repo_id}' has no safetensors weights{detail}; import a repo or revision "
                        "that has model.safetensors")
    chosen = [s for s in siblings if _wanted(s.rfilename)]
    size = sum(s.size or 0 for s in chosen)
    if size > max_bytes:
        raise UserError(f"hub model '{repo_id}' is {size} bytes, over the import limit of {max_bytes} bytes "
                        "(FTSERVE_MAX_IMPORT_BYTES)")
    return [s.rfilename for s in chosen], str(info.sha or "")


def _unreachable(exc: BaseException) -> bool:
    """Offline mode, no route, a timeout, a 429 or 5xx: the Hub cannot answer now, and the cache is the other way."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return status is None or status == 429 or status >= 500
    return isinstance(exc, ConnectionError | TimeoutError | httpx2.TransportError)


def fetch(repo_id: str, revision: str | None, *, max_bytes: int) -> tuple[Path, str, str]:
    """(snapshot folder, commit, where from: "hub" | "cache") of the repo's wanted files."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        files, commit = _online_files(repo_id, revision, max_bytes=max_bytes)
        path = snapshot_download(repo_id, revision=commit or revision, allow_patterns=files)
        return Path(str(path)), commit, "hub"
    except (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError) as exc:
        # The Hub answered: the repo (or revision) is not there for us. Not a reason to serve a stale copy.
        what = f"revision '{revision}' of " if isinstance(exc, RevisionNotFoundError) else ""
        raise UserError(f"the Hub has no {what}model '{repo_id}' that this server may read "
                        f"({type(exc).__name__}); check the id, the revision and that the repo is public") from exc
    except UserError:
        raise
    except Exception as exc:
        if not _unreachable(exc):
            raise  # a local failure (disk, a bug) is not the Hub's, and the cache would hide it
        reason = f"{type(exc).__name__}: {str(exc)[:200]}"
        log.info("hub model %s: the Hub is not reachable (%s); trying the cache", repo_id, reason)
    try:
        path = snapshot_download(repo_id, revision=revision, allow_patterns=list(ALLOWED), local_files_only=True)
    except LocalEntryNotFoundError as exc:
        raise UserError(f"hub model '{repo_id}' could not be downloaded (the Hub is offline or unreachable: "
                        f"{reason}) and is not in this server's cache; import it when the Hub can be reached, "
                        "or upload an archive of it") from exc
    folder = Path(str(path))
    if not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.iterdir() if any(fnmatch.fnmatch(p.name, g) for g in PICKLES))
        detail = f" (it has {', '.join(pickles[:3])}: pickle formats are never loaded)" if pickles else ""
        raise UserError(f"hub model '{repo_id}' has no safetensors weights in this server's cache{detail}; import "
                        "a repo or revision that has model.safetensors")
    return folder, folder.name, "cache"


def _copy(snapshot: Path, into: Path, *, max_bytes: int) -> None:
    """The snapshot's wanted files, as plain files (the cache's are links into its blob store)."""
    into.mkdir(parents=True)
    total = 0
    for path in sorted(snapshot.iterdir()):
        if not (_wanted(path.name) and path.is_file()):
            continue
        total += path.stat().st_size
        if total > max_bytes:
            raise UserError(f"the model is over the import limit of {max_bytes} bytes (FTSERVE_MAX_IMPORT_BYTES)")
        shutil.copyfile(path, into / path.name)


@operation("import")
def import_from_hub(ctx: OperationContext) -> Outcome:
    from inference.importing import check_model_folder
    from training.imported_card import imported_card
    from training.provenance import card_license

    spec, job = ctx.job.spec, ctx.job
    repo_id, revision, task = spec["hub"], spec.get("revision"), spec.get("task")
    max_bytes = ctx.settings.max_import_bytes
    started = time.monotonic()
    ctx.callbacks.on_event("log", f"fetching hub model {repo_id}", {"hub": repo_id, "revision": revision})
    snapshot, commit, source = fetch(repo_id, revision, max_bytes=max_bytes)
    ctx.callbacks.on_event("log", f"hub model {repo_id} at {commit[:12]} from the {source}",
                           {"hub": repo_id, "commit": commit, "from": source})
    if ctx.callbacks.should_stop():
        raise OperationCancelled
    staging = ctx.store.import_dir(job.id) / f"attempt-{ctx.fence.attempt}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _copy(snapshot, staging, max_bytes=max_bytes)
        checked = check_model_folder(staging, task=task)
        lineage = {"source": "imported", "job_id": job.id, "base_model": repo_id, "base_revision": commit,
                   "hub": {"name": repo_id, "revision": revision, "commit": commit, "from": source},
                   "import_seconds": round(time.monotonic() - started, 3),
                   "license": card_license(staging / "README.md") or checked.license}
        params = {**checked.training_params, "base_model": repo_id, "base_model_resolved": f"hub:{repo_id}"}
        checked.training_params = params

        def card(version: int) -> str | None:
            if checked.has_card:
                return None  # the repo's own card stays
            return imported_card(name=job.model_name, version=version, task=checked.task, base_model=repo_id,
                                 license=checked.license, labels=checked.labels, metrics=checked.metrics,
                                 hub={"name": repo_id, "commit": commit})

        version = _register(ctx, staging, checked, lineage=lineage, card=card)
    finally:
        # This attempt's folder only: a stale attempt still running must not pull the live one's files away.
        shutil.rmtree(staging, ignore_errors=True)
    log.info("job %s imported %s as %s:%s", job.id, repo_id, job.model_name, version)
    return Outcome(written=True, model_version=version)


def _register(ctx: OperationContext, staging: Path, checked: Any, *, lineage: dict[str, Any],
              card: Any) -> int:
    """Publish the folder as the next version and end the job, in one transaction that holds the fence: a stale
    attempt registers nothing (see worker/child.py `_register` for the same steps of a trained version)."""
    from inference.importing import write_params
    from worker.child import _registered

    job, fence, store = ctx.job, ctx.fence, ctx.store
    name = job.model_name
    viewer = Viewer(job.owner, admin=job.owner in ctx.settings.admin_names)
    with FileLock(str(store.publish_lock_path(name)), timeout=60):
        version: int | None = None
        published = committing = False
        try:
            with session_scope() as s:
                jobrepo.hold(s, fence)
                versions.ensure_model(s, name=name, task=checked.task, viewer=viewer)
                jobrepo.hold(s, fence)
                version = versions.next_version(s, name)
                write_params(staging, checked)
                text = card(version)
                if text is not None:
                    (staging / "README.md").write_text(text)
                s.add(ModelVersion(
                    name=name, version=version, task=checked.task, owner=job.owner, job_id=job.id,
                    base_model=lineage["base_model"], base_model_resolved=f"hub:{lineage['base_model']}",
                    hyperparameters=checked.hyperparameters, metrics=checked.metrics,
                    path=str(store.version_dir(name, version)), lineage=lineage))
                s.flush()
                store.publish(staging, name, version)
                published = True
                jobrepo.finish(s, job.id, fence=fence, status=jobrepo.SUCCEEDED, model_version=version,
                               result={"hub": lineage["hub"]})
                committing = True
            return version
        except BaseException:
            if published and version is not None:
                # A commit whose reply was lost may have taken effect: the row decides (as for a trained version).
                if committing and _registered(fence, version, ctx.settings.lease_seconds):
                    return version
                store.unpublish(name, version, staging)
            raise
