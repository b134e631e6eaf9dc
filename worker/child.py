"""One training attempt, run as a child process of the Celery task
(`python -m worker.child JOB WORKER PARENT_PID ATTEMPT`).

The child writes progress, events and the outcome to the job row, each write fenced by its attempt (see
registry/jobs.py): once the row belongs to another attempt, the next write raises `Superseded` and the child
stops at once, writing nothing more. Its parent (worker.execute) supervises it: heartbeat, cancel escalation,
maximum duration, and the outcome of a crash.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from filelock import FileLock
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from core.cpus import size_torch_threads
from core.errors import Conflict, UserError, ValidationFailed, scrub_paths
from core.ids import new_id
from core.logging import setup_logging
from core.settings import Settings, configure_environment, get_settings
from core.tasks import TASKS
from registry import jobs as jobrepo
from registry import versions
from registry.access import Viewer
from registry.db import in_session, is_transient, session_scope
from registry.jobs import Fence, Superseded
from registry.models import Dataset, ModelVersion
from registry.store import ArtifactStore
from training.spec import JobSpec
from worker import failpoints

if TYPE_CHECKING:
    from worker.promotion import Decision

log = logging.getLogger("ftserve.child")
T = TypeVar("T")

# Exit codes the supervisor reads: the attempt lost the job row / could not reach the database for a lease.
# Either way the child wrote nothing more, and neither is the job's failure.
EXIT_SUPERSEDED = 3
EXIT_DB_UNAVAILABLE = 75
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
_ATTEMPT = re.compile(r"attempt-(\d+)")


def complete_checkpoints(folder: Path) -> dict[int, Path]:
    """step → checkpoint folder, for checkpoints the Trainer finished writing: it writes trainer_state.json
    last, so one that parses and names the folder's step marks a complete checkpoint (a worker killed while
    saving leaves none, or a truncated one)."""
    found: dict[int, Path] = {}
    if not folder.is_dir():
        return found
    for path in folder.iterdir():
        m = _CHECKPOINT.fullmatch(path.name)
        if m is None:
            continue
        try:
            state = json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue  # not (yet) complete
        if isinstance(state, dict) and state.get("global_step") == int(m.group(1)):
            found[int(m.group(1))] = path
    return found


def newest_checkpoint(root: Path, *, before_attempt: int) -> Path | None:
    """The newest complete checkpoint of any earlier attempt of a job (`root` is its checkpoints folder; a
    checkpoint directly in it is one from before checkpoints had per-attempt folders)."""
    folders = [root]
    if root.is_dir():
        folders += [p for p in root.iterdir()
                    if (m := _ATTEMPT.fullmatch(p.name)) and int(m.group(1)) < before_attempt]
    best: tuple[int, Path] | None = None
    for folder in folders:
        for step, path in complete_checkpoints(folder).items():
            if best is None or step > best[0]:
                best = (step, path)
    return best[1] if best else None


def link_resume_point(store: ArtifactStore, *, job_id: str, attempt: int) -> Path | None:
    """Hard-link the newest checkpoint of an earlier attempt (and the others of its folder, which hold the best
    one) into this attempt's folder and return the linked copy to resume from.

    The earlier attempt may still be running somewhere, unaware that it lost the job: its checkpoint rotation
    deletes from its own folder only, and a link keeps the files alive.
    """
    source = newest_checkpoint(store.checkpoints_dir(job_id), before_attempt=attempt)
    if source is None:
        return None
    own = store.attempt_checkpoints_dir(job_id, attempt)
    if own.exists():
        shutil.rmtree(own)  # a half-linked copy left by this same attempt: attempts never share a number
    own.mkdir(parents=True)
    store.link_tree(source, own / source.name)
    linked = {source.name}
    for path in complete_checkpoints(source.parent).values():
        if path.name in linked:
            continue
        try:
            store.link_tree(path, own / path.name)
            linked.add(path.name)
        except (OSError, shutil.Error) as exc:
            # Rotated away by the attempt that wrote it: the Trainer then ignores the best checkpoint it names.
            log.warning("could not link checkpoint %s (%s); resuming without it", path.name, exc)
            _remove(own / path.name)
    for name in linked:
        _retarget_best(own / name / "trainer_state.json", linked=linked, own=own)
    return own / source.name


def _retarget_best(state_file: Path, *, linked: set[str], own: Path) -> None:
    """Point the resumed state's best checkpoint at this attempt's copy; the file is replaced, never written
    in place, since it is a hard link shared with the earlier attempt."""
    state = json.loads(state_file.read_text())
    best = state.get("best_model_checkpoint")
    if best is None:
        return
    name = Path(best).name
    state["best_model_checkpoint"] = str(own / name) if name in linked else None
    tmp = state_file.with_name(f".{state_file.name}.tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, state_file)


def _remove(path: Path) -> None:
    def report(_fn: Callable[..., Any], failed: str, exc_info: Any) -> None:
        log.warning("could not remove %s: %s", failed, exc_info[1])

    if path.exists():
        shutil.rmtree(path, onerror=report)


class JobCallbacks:
    """Training callbacks backed by the job row; writes are throttled, fenced and retried while the database
    is briefly away (the supervisor stops this process if it stays away longer than a lease)."""

    def __init__(self, fence: Fence, settings: Settings) -> None:
        self.fence = fence
        self.job_id = fence.job_id
        self.settings = settings
        self._last_progress = 0.0
        self._last_stop_check = 0.0
        self._stop = False

    def write(self, what: str, fn: Callable[[Session], T]) -> T:
        return in_session(fn, retry_for=self.settings.lease_seconds, what=f"{what} of {self.fence}")

    def on_progress(self, progress: dict[str, Any]) -> None:
        now = time.monotonic()
        final = progress.get("step") == progress.get("total_steps")
        if final or now - self._last_progress >= self.settings.progress_interval_seconds:
            self._last_progress = now
            self.write("progress", lambda s: jobrepo.set_progress(s, self.job_id, progress, fence=self.fence))

    def on_event(self, type_: str, message: str, data: dict[str, Any]) -> None:
        self.write(f"{type_} event", lambda s: jobrepo.add_event(s, self.job_id, type_, message, data,
                                                                 fence=self.fence))

    def on_data(self, stats: dict[str, int]) -> None:
        self.write("data stats", lambda s: jobrepo.set_data_stats(s, self.job_id, stats, fence=self.fence))

    def on_method(self, method: dict[str, Any]) -> None:
        self.write("the effective method", lambda s: jobrepo.set_spec_value(s, self.job_id, "method", method,
                                                                            fence=self.fence))

    def on_hyperparameters(self, hyperparameters: dict[str, Any]) -> None:
        self.write("the chosen hyperparameters", lambda s: jobrepo.set_spec_value(
            s, self.job_id, "hyperparameters", hyperparameters, fence=self.fence))

    def should_stop(self) -> bool:
        """The cancel flag; also how a run that writes nothing for a while learns it lost the job."""
        now = time.monotonic()
        if not self._stop and now - self._last_stop_check >= 1.0:
            self._last_stop_check = now
            self._stop = self.write("cancel check", lambda s: jobrepo.is_cancel_requested(
                s, self.job_id, fence=self.fence))
        return self._stop


def source_for(ref: Any, store: ArtifactStore, callbacks: JobCallbacks) -> tuple[Any, dict[str, Any]]:
    """A dataset ref's source and what a version records of it (id and sha256, or the hub name)."""
    from training.data import FileSource, HubSource

    if ref.id is not None:
        ds = callbacks.write("reading the dataset", lambda s: s.get(Dataset, ref.id))
        if ds is None:
            raise ValidationFailed(f"dataset '{ref.id}' no longer exists")
        path = store.dataset_file(ds.id, ds.file_name)
        return FileSource(path, ds.format, f"dataset {ds.id} ({ds.name})"), {
            "dataset_id": ds.id, "dataset_sha256": ds.sha256, "dataset_file": ds.file_name}
    split = getattr(ref, "split", None) or "validation"
    return HubSource(ref.hub, ref.config, split), {"hub": {"name": ref.hub, "config": ref.config,
                                                            "split": split}}


def _sources(spec: JobSpec, store: ArtifactStore, callbacks: JobCallbacks) -> Any:
    from training.runner import TrainingData

    train, provenance = source_for(spec.dataset, store, callbacks)
    validation = None
    if spec.validation.split_ratio is None:
        validation, val_prov = source_for(spec.validation, store, callbacks)
        provenance["validation"] = val_prov
    return TrainingData(train=train, validation=validation, split_ratio=spec.validation.split_ratio or 0.1,
                        provenance=provenance)


def _model_source(resolved: str, store: ArtifactStore) -> str:
    kind, _, rest = resolved.partition(":")
    if kind == "hub":
        return rest
    name, _, version = rest.rpartition(":")
    return str(store.version_dir(name, int(version)))


def lineage(*, job_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """Where a trained version came from, from what its run recorded in training_params.json."""
    base = params.get("base") or {}
    kind, _, resolved = str(params.get("base_model_resolved") or "").partition(":")
    data = params.get("data") or {}
    hub = data.get("hub")
    dataset = ({"id": data.get("dataset_id"), "sha256": data.get("dataset_sha256")} if data.get("dataset_id")
               else {"hub": hub.get("name"), "config": hub.get("config"), "split": hub.get("split")}
               if isinstance(hub, dict) else None)
    return {
        "source": "trained", "job_id": job_id,
        "base_model": resolved or params.get("base_model"),
        "base_revision": base.get("revision") if kind == "hub" else resolved,
        "dataset": dataset,
        "libraries": params.get("libraries") or {},
        "device": params.get("device"),
        "training_seconds": params.get("training_seconds"),
        "license": params.get("license"),
    }


def version_adapter(params: dict[str, Any]) -> dict[str, Any] | None:
    """What the registry keeps of an adapter (training_params.json's `adapter` less the config it loads with)."""
    adapter = params.get("adapter")
    if not isinstance(adapter, dict):
        return None
    return {k: v for k, v in adapter.items() if k != "model_config"}


def _register(fence: Fence, *, spec: JobSpec, result: Any, store: ArtifactStore, staging: Path,
              retry_for: float, promotion: Decision | None = None, push_id: str | None = None) -> int:
    """Publish the staged version and register it, in one transaction that holds the fence from its first
    statement: a stale attempt publishes and registers nothing.

    The directory is renamed into place before the commit (a committed row always has its files). If anything
    fails once the commit is under way, the row says whether it took effect; if it did not, the rename is undone,
    under a lock per model name so that no other job re-uses the number meanwhile.
    """
    from training import model_card

    name = spec.model_name
    deadline = time.monotonic() + retry_for
    collisions = 0
    delay = 0.1
    while True:
        version: int | None = None
        published = committing = False
        with FileLock(str(store.publish_lock_path(name)), timeout=max(60.0, retry_for)):
            try:
                with session_scope() as s:
                    jobrepo.hold(s, fence)
                    job = jobrepo.get_job(s, fence.job_id)
                    # The name was checked at submit; another owner may have taken it since (a user error here).
                    versions.ensure_model(s, name=name, task=spec.task,
                                          viewer=Viewer(job.owner, admin=job.owner in get_settings().admin_names))
                    # ensure_model rolls the transaction back when another job created the name first.
                    jobrepo.hold(s, fence)
                    version = versions.next_version(s, name)
                    data = result.training_params.get("data", {})
                    s.add(ModelVersion(
                        name=name, version=version, task=spec.task, owner=job.owner, job_id=fence.job_id,
                        base_model=spec.base_model, base_model_resolved=job.base_model_resolved or "",
                        dataset_id=data.get("dataset_id"), dataset_sha256=data.get("dataset_sha256"),
                        dataset_hub=data.get("hub"),
                        # as trained: the "auto" values resolved (training/auto.py)
                        hyperparameters=result.training_params.get("hyperparameters", spec.hyperparameters),
                        metrics=result.metrics, path=str(store.version_dir(name, version)),
                        lineage=lineage(job_id=fence.job_id, params=result.training_params),
                        method=result.training_params.get("method") or "full",
                        adapter=version_adapter(result.training_params),
                    ))
                    s.flush()  # takes the (name, version) key before the directory is published
                    model_card.write_card(staging, name=name, version=version, task=spec.task,
                                          metrics=result.metrics)
                    store.publish(staging, name, version)
                    published = True
                    if promotion is not None:  # worker/promotion.py: fenced with the registration
                        promotion.apply(s, fence, name=name, version=version)
                    if push_id is not None:  # the push the job asked for, queued with its version
                        from worker.op_push import add_job_push

                        add_job_push(s, fence.job_id, owner=job.owner, spec=spec, version=version, push_id=push_id)
                    jobrepo.finish(s, fence.job_id, fence=fence, status=jobrepo.SUCCEEDED,
                                   metrics=result.metrics, model_version=version)
                    committing = True
                return version
            except BaseException as exc:
                if published and version is not None:
                    # Whatever failed once the commit was under way (a lost reply, an error in a commit hook), the
                    # row decides: unpublishing the files of a committed version would leave it without weights.
                    if committing and _registered(fence, version, retry_for):
                        return version
                    store.unpublish(name, version, staging)
                if isinstance(exc, IntegrityError) and not committing and collisions < 5:
                    collisions += 1
                    log.info("version %s of %s taken by a concurrent job; retrying", version, name)
                    continue
                if not (isinstance(exc, DBAPIError) and is_transient(exc) and time.monotonic() < deadline):
                    raise
                log.warning("registering %s: database unavailable (%s); retrying", fence, exc.orig)
        time.sleep(delay)
        delay = min(2 * delay, 1.0)


def _registered(fence: Fence, version: int, retry_for: float) -> bool:
    """Whether a commit whose reply was lost registered `version` for this attempt."""
    def read(s: Session) -> bool:
        job = jobrepo.get_job(s, fence.job_id)
        return (job.status, job.model_version, job.worker_id, job.attempt) == (
            jobrepo.SUCCEEDED, version, fence.worker_id, fence.attempt)

    return in_session(read, retry_for=retry_for, what=f"checking the registration of {fence}")


def _read_job(fence: Fence) -> Callable[[Session], tuple[JobSpec, str]]:
    def read(s: Session) -> tuple[JobSpec, str]:
        spec = JobSpec.model_validate(own_row(s, fence).spec)
        return spec, jobrepo.get_job(s, fence.job_id).base_model_resolved or f"hub:{spec.base_model}"

    return read


def own_row(s: Session, fence: Fence) -> Any:
    job = jobrepo.get_job(s, fence.job_id)
    if (job.worker_id, job.attempt) != (fence.worker_id, fence.attempt) or job.status not in jobrepo.LIVE:
        raise Superseded(fence)
    return job


def _read_kind(fence: Fence) -> Callable[[Session], str]:
    return lambda s: str(own_row(s, fence).kind or "train")


def failure_outcome(job_id: str, exc: Exception) -> dict[str, Any]:
    """The row's outcome for an exception that ends an attempt: a user error (its message says what to fix) or
    a system one (its type and message, paths scrubbed)."""
    if isinstance(exc, UserError | ValidationFailed | Conflict):
        log.info("job %s failed (user): %s", job_id, exc.message)
        return {"status": jobrepo.FAILED, "error_type": "user", "error_message": scrub_paths(exc.message)}
    log.exception("job %s failed (system)", job_id)
    message = scrub_paths(f"{type(exc).__name__}: {exc}")
    if type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, MemoryError):
        message = f"out of memory ({message}); lower batch_size or max_length"
    return {"status": jobrepo.FAILED, "error_type": "system", "error_message": message[:4000]}


def run_attempt(fence: Fence, settings: Settings) -> int:
    """Run the attempt and write its outcome; returns the process's exit code."""
    store = ArtifactStore(settings.data_dir)
    callbacks = JobCallbacks(fence, settings)
    job_id, attempt = fence.job_id, fence.attempt
    try:
        kind = callbacks.write("reading the job", _read_kind(fence))
        if kind != "train":
            from worker.operations import run_operation

            return run_operation(kind, fence, settings=settings, store=store, callbacks=callbacks)
        spec, resolved = callbacks.write("reading the job", _read_job(fence))
    except Superseded as exc:
        log.warning("%s; not starting", exc)
        return EXIT_SUPERSEDED
    from training.runner import Cancelled, run  # torch: only for an attempt that owns its job
    staging = store.staging_dir(spec.model_name, job_id, attempt)
    try:
        resume_from = link_resume_point(store, job_id=job_id, attempt=attempt)
        if resume_from is not None:
            step = int(resume_from.name.split("-")[1])
            callbacks.on_event("status", f"attempt {attempt} resumes from step {step}",
                               {"status": "running", "resumed_from_step": step, "attempt": attempt})
        else:
            callbacks.on_event("status", f"attempt {attempt} started", {"status": "running", "attempt": attempt})
        if staging.exists():
            shutil.rmtree(staging)
        data = _sources(spec, store, callbacks)
        failpoints.hit(settings.failpoints, "before_train", model_name=spec.model_name, attempt=attempt,
                       data_dir=settings.data_dir)
        result = run(
            spec, data=data, model_source=_model_source(resolved, store), base_model_resolved=resolved,
            out_dir=staging, checkpoints_dir=store.attempt_checkpoints_dir(job_id, attempt),
            on_progress=callbacks.on_progress, on_event=callbacks.on_event, should_stop=callbacks.should_stop,
            resume_from=resume_from, on_data=callbacks.on_data, on_method=callbacks.on_method,
            on_hyperparameters=callbacks.on_hyperparameters,
            checkpoint_seconds=settings.checkpoint_seconds,
            default_license=settings.default_license,
        )
        promotion = None
        if spec.promote is not None:
            from worker.promotion import evaluate_for_promotion

            promotion = evaluate_for_promotion(spec, staging=staging, store=store, callbacks=callbacks)
        push_id = new_id("push") if spec.push is not None else None
        version = _register(fence, spec=spec, result=result, store=store, staging=staging,
                            retry_for=settings.lease_seconds, promotion=promotion, push_id=push_id)
        log.info("job %s succeeded: %s:%s", job_id, spec.model_name, version)
        if push_id is not None:
            _send(push_id)
        _clean_up(store, job_id=job_id, model_name=spec.model_name)
        return 0
    except Cancelled:
        outcome: dict[str, Any] | int = {"status": jobrepo.CANCELLED}
    except Exception as exc:
        outcome = outcome_of(fence, exc, settings)
    finally:
        _remove(staging)
    code = write_outcome(callbacks, outcome)
    if code == 0 and isinstance(outcome, dict) and outcome["status"] == jobrepo.CANCELLED:
        _clean_up(store, job_id=job_id, model_name=spec.model_name)
    return code


def _send(job_id: str) -> None:
    from worker.dispatch import send_job

    try:
        send_job(job_id)
    except Exception:
        # The row is queued already: the reconciler re-sends a queued job whose message was lost.
        log.exception("could not enqueue %s now; the reconciler will re-send it", job_id)


def outcome_of(fence: Fence, exc: Exception, settings: Settings) -> dict[str, Any] | int:
    """The job's outcome for an exception that ended the attempt, or the exit code of an attempt that must
    write nothing (it lost the row; the database stayed away)."""
    if isinstance(exc, Superseded):
        log.warning("%s; stopping without writing anything else", exc)
        return EXIT_SUPERSEDED
    if isinstance(exc, DBAPIError) and is_transient(exc):
        # The job could go on; failing it would blame the user's job for our database. The supervisor gives the
        # attempt back to the queue.
        log.error("%s: the database stayed unavailable for %.0fs (%s); stopping this attempt without writing",
                  fence, settings.lease_seconds, exc.orig)
        return EXIT_DB_UNAVAILABLE
    return failure_outcome(fence.job_id, exc)


def write_outcome(callbacks: JobCallbacks, outcome: dict[str, Any] | int) -> int:
    """Write the outcome, fenced; returns the child's exit code."""
    if isinstance(outcome, int):
        return outcome
    fence = callbacks.fence
    try:
        callbacks.write("the outcome", lambda s: jobrepo.finish(s, fence.job_id, fence=fence, **outcome))
    except Superseded as exc:
        log.warning("%s; its outcome (%s) is not written", exc, outcome["status"])
        return EXIT_SUPERSEDED
    return 0


def _clean_up(store: ArtifactStore, *, job_id: str, model_name: str) -> None:
    """A finished job needs no checkpoints, nor the staging folders its lost attempts left behind."""
    _remove(store.checkpoints_dir(job_id))
    for leftover in store.staging_dirs(model_name, job_id):
        _remove(leftover)


def die_with_parent(parent_pid: int) -> None:
    """On Linux, have the kernel SIGKILL this process when its worker dies, so a lost worker never leaves a
    training run behind to race the re-queued attempt (the supervisor lives in another process group)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the worker died before the line above took effect
        raise SystemExit(f"worker {parent_pid} is gone; not starting")


def _follow_offline_setting() -> None:
    """A standby imported the Hugging Face libraries before `configure_environment` ran for its job; if that went
    offline (the hub became unreachable), their import-time copies of HF_HUB_OFFLINE follow now, as a process
    that imports them after it would."""
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        return
    for module in ("huggingface_hub.constants", "datasets.config"):
        loaded = sys.modules.get(module)
        if loaded is not None and hasattr(loaded, "HF_HUB_OFFLINE"):
            loaded.HF_HUB_OFFLINE = True


def main(argv: list[str]) -> int:
    die_with_parent(int(argv[2]))
    setup_logging(get_settings().log_level)
    settings = configure_environment(get_settings())
    _follow_offline_setting()
    size_torch_threads(settings.torch_threads)
    fence = Fence(job_id=argv[0], worker_id=argv[1], attempt=int(argv[3]))
    # An empty working directory of its own, inside the data dir: `from_pretrained("org/name")` and
    # `load_dataset("org/name")` try a local directory of that name first, and no directory a user named may ever
    # become a model or training data.
    cwd = ArtifactStore(settings.data_dir).job_dir(fence.job_id) / f"cwd-{fence.attempt}"
    shutil.rmtree(cwd, ignore_errors=True)
    cwd.mkdir(parents=True)
    os.chdir(cwd)
    try:
        return run_attempt(fence, settings)
    except DBAPIError as exc:
        if not is_transient(exc):
            raise
        # Writing the outcome failed too; the supervisor gives the attempt back.
        log.error("%s: the database stayed unavailable (%s); exiting without writing", fence, exc.orig)
        return EXIT_DB_UNAVAILABLE
    except Exception:
        # Only reached when writing the failure failed; the parent sees the exit code and records it.
        traceback.print_exc()
        return 1
    finally:
        os.chdir(settings.data_dir)
        shutil.rmtree(cwd, ignore_errors=True)


# What a job's process imports before it can train: ~7 s of a CPU, paid by a standby before its job is known.
# Every task's module (core/tasks.py names them) and AutoModel class.
PRELOAD = ("torch", "transformers", "datasets", "training.runner", "training.data",
           *(info.trainer_module for info in TASKS.values()),
           "worker.operations", "peft")  # peft: a LoRA job's (its import is ~2 s of a CPU too)
PRELOAD_ATTRS = ("Trainer", "Seq2SeqTrainer", "TrainingArguments", "AutoConfig", "AutoTokenizer",
                 *(info.auto_class for info in TASKS.values()), "DataCollatorWithPadding")


def standby(parent_pid: int) -> int:
    """A training process started before its job (`FTSERVE_WARM_TRAINING_PROCESS`): it imports what training
    needs, then reads its job from stdin — one JSON line `{"argv": [...], "log": path}` — points its output at
    the attempt's log and runs it as `main` would. EOF instead (its worker stopping) ends it. It dies with its
    worker like any job's process, and touches no GPU and no database before its job."""
    die_with_parent(parent_pid)
    import importlib

    started = time.monotonic()
    failed: BaseException | None = None
    try:
        for module in PRELOAD:
            importlib.import_module(module)
        transformers = sys.modules["transformers"]
        for name in PRELOAD_ATTRS:
            getattr(transformers, name)
    except BaseException as exc:  # kept for the job's log: the job fails with it, not a silent standby
        failed = exc
    imported = time.monotonic() - started
    line = sys.stdin.readline()
    if not line:
        return 0
    job = json.loads(line)
    fd = os.open(job["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    print(f"training process {os.getpid()} was started {time.monotonic() - started:.1f}s before its job "
          f"(imports: {imported:.1f}s)", file=sys.stderr, flush=True)
    if failed is not None:
        traceback.print_exception(failed)
        return 1
    return main(job["argv"])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--standby"]:
        sys.exit(standby(int(sys.argv[2])))
    sys.exit(main(sys.argv[1:]))
