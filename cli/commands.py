"""The client commands (`datasets`, `jobs`, `models`, `classify`, `answer`, `summarize`, `generate`), on the
Python SDK only: they never import the server's packages."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

import ftserve
from cli import follow as following
from cli.output import (
    EXIT_API_ERROR,
    EXIT_JOB_FAILED,
    EXIT_USAGE,
    api_error,
    err,
    fail,
    fields,
    out,
    print_json,
    table,
)
from ftserve.types import Job

T = TypeVar("T")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON (one document) instead of a table.")]
IdArg = Annotated[str, typer.Argument(metavar="ID")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="A model ref: NAME, NAME:VERSION or NAME@ALIAS.")]


@dataclass
class Connection:
    url: str | None = None
    api_key: str | None = None


def make_client(conn: Connection) -> ftserve.Client:
    """The SDK client for a command (tests replace this to point it at an in-process app)."""
    return ftserve.Client(conn.url, api_key=conn.api_key)


@contextmanager
def client(ctx: typer.Context) -> Iterator[ftserve.Client]:
    """The SDK client; an API error becomes `error: <type>: <message>` on stderr and exit code 3."""
    conn = ctx.find_object(Connection) or Connection()
    c = make_client(conn)
    try:
        yield c
    except ftserve.FtserveError as exc:
        api_error(exc)
    finally:
        c.close()


def respond(value: T, as_json: bool, render: Callable[[T], object]) -> None:
    """The API's JSON with `--json`, else the human rendering."""
    if as_json:
        print_json(value)
    else:
        render(value)


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()


# -- datasets -----------------------------------------------------------------------------------------------
datasets = typer.Typer(help="Upload and manage training datasets.", no_args_is_help=True)
DATASET_COLUMNS: list[tuple[str, Callable[[Any], Any]]] = [
    ("id", lambda d: d.id), ("name", lambda d: d.name), ("format", lambda d: d.format),
    ("rows", lambda d: d.num_rows), ("columns", lambda d: d.columns), ("created", lambda d: d.created_at)]


@datasets.command("upload")
def datasets_upload(ctx: typer.Context, path: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
                    name: Annotated[str | None, typer.Option(help="A name for it (default: the file's).")] = None,
                    as_json: JsonOpt = False) -> None:
    """Upload a .csv, .jsonl, .json, .parquet or .txt file."""
    with client(ctx) as c:
        ds = c.datasets.upload(path, name=name)
    if as_json:
        return print_json(ds)
    out.print(ds.id)


@datasets.command("list")
def datasets_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Your datasets, newest first."""
    with client(ctx) as c:
        rows = list(c.datasets.list())
    if as_json:
        return print_json(rows)
    table(rows, DATASET_COLUMNS)


@datasets.command("show")
def datasets_show(ctx: typer.Context, dataset_id: IdArg,
                  as_json: JsonOpt = False) -> None:
    """A dataset with its column types and first rows."""
    with client(ctx) as c:
        ds = c.datasets.get(dataset_id)
    if as_json:
        return print_json(ds)
    fields(ds, ["id", "name", "format", "num_rows", "columns", "column_types", "size_bytes", "sha256", "owner",
                "created_at"])
    if ds.preview:
        table(ds.preview, [(k, lambda r, k=k: r.get(k)) for k in ds.preview[0]], title="preview")


@datasets.command("rm")
def datasets_rm(ctx: typer.Context, dataset_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Delete a dataset."""
    with client(ctx) as c:
        c.datasets.delete(dataset_id)
    out.print(f"deleted {dataset_id}")


# -- jobs ---------------------------------------------------------------------------------------------------
jobs = typer.Typer(help="Submit, follow and manage fine-tuning jobs.", no_args_is_help=True)
JOB_COLUMNS: list[tuple[str, Callable[[Job], Any]]] = [
    ("id", lambda j: j.id), ("kind", lambda j: j.kind), ("status", lambda j: j.status), ("task", lambda j: j.task),
    ("base model", lambda j: j.base_model), ("model", lambda j: j.model.ref if j.model else j.model_name),
    ("progress", lambda j: _progress(j)), ("created", lambda j: j.created_at)]

JOB_FIELDS = ["id", "kind", "status", "task", "base_model", "base_model_resolved", "dataset", "validation", "columns",
              "hyperparameters", "model_name", "queue_position", "attempt", "progress", "metrics", "error", "model",
              "created_at", "started_at", "finished_at"]


def _progress(job: Job) -> str:
    p = job.progress or {}
    return f"{p['step']}/{p['total_steps']}" if p.get("step") is not None and p.get("total_steps") else ""


def parse_pairs(pairs: list[str], option: str, *, typed: bool) -> dict[str, Any]:
    """`key=value` pairs; with `typed`, a value that parses as JSON (`3`, `2e-5`, `true`) is that value."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            fail(f"{option} wants key=value, got {pair!r}")
        parsed: Any = value
        if typed:
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = value
        result[key.strip()] = parsed
    return result


def load_spec(path: Path) -> dict[str, Any]:
    """A job spec file: the `POST /jobs` body as JSON, or as YAML (`.yaml`/`.yml`)."""
    import yaml

    text = path.read_text(encoding="utf-8")
    try:
        spec = yaml.safe_load(text) if path.suffix.lower() in (".yaml", ".yml") else json.loads(text)
    except (ValueError, yaml.YAMLError) as exc:
        fail(f"{path.name} is not a valid job spec: {exc}")
    if not isinstance(spec, dict):
        fail(f"{path.name} must hold a mapping of the POST /jobs fields (task, base_model, dataset, …)")
    return spec


def finished(job: Job, *, as_json: bool) -> None:
    """Print a finished job; exit 1 (with its error) when it failed or was cancelled."""
    if as_json:
        print_json(job)
    elif job.status == "succeeded":
        out.print(f"job {job.id} succeeded" + (f": model {job.model.ref}" if job.model else ""))
        if job.metrics:
            out.print("metrics: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                             for k, v in job.metrics.items()), markup=False)
    if job.status in ("failed", "cancelled"):
        detail = f"{job.error.type}: {job.error.message}" if job.error else job.status
        err.print(f"job {job.id} {job.status}: {detail}", markup=False)
        raise typer.Exit(EXIT_JOB_FAILED)


def _follow(c: ftserve.Client, job_id: str, as_json: bool) -> None:
    job = c.jobs.wait(job_id) if as_json else following.follow(c, job_id, tty=stdout_is_tty(), console=out)
    finished(job, as_json=as_json)


@jobs.command("submit")
def jobs_submit(
    ctx: typer.Context,
    file: Annotated[Path | None, typer.Option("--file", "-f", exists=True, dir_okay=False,
                                              help="A job spec: the POST /jobs body as .json or .yaml.")] = None,
    task: Annotated[str | None, typer.Option(help="classification, question-answering, summarization or "
                                                  "generation.")] = None,
    base_model: Annotated[str | None, typer.Option(help="A Hugging Face model id, or NAME:VERSION.")] = None,
    dataset: Annotated[str | None, typer.Option(help="An uploaded dataset's id (ds_…).")] = None,
    hub: Annotated[str | None, typer.Option(help="A Hugging Face Hub dataset instead of --dataset.")] = None,
    validation: Annotated[str | None, typer.Option(help="A validation dataset's id.")] = None,
    model_name: Annotated[str | None, typer.Option(help="The model to register the result as.")] = None,
    hp: Annotated[list[str] | None, typer.Option("--hp", help="A hyperparameter key=value (repeatable; values "
                                                              "are JSON: 3, 2e-5, true).")] = None,
    column: Annotated[list[str] | None, typer.Option("--column", help="A column mapping role=column "
                                                                      "(repeatable), e.g. text=sentence.")] = None,
    follow: Annotated[bool, typer.Option("--follow", help="Follow the job to its end (exit 1 if it fails).")]
    = False,
    as_json: JsonOpt = False,
) -> None:
    """Submit a fine-tuning job, from flags or a spec file (flags override the file's fields)."""
    spec: dict[str, Any] = load_spec(file) if file else {}
    if dataset and hub:
        fail("give --dataset or --hub, not both")
    given = {"task": task, "base_model": base_model, "model_name": model_name,
             "dataset": {"id": dataset} if dataset else {"hub": hub} if hub else None,
             "validation": {"id": validation} if validation else None}
    spec.update({k: v for k, v in given.items() if v is not None})
    if hp:
        spec["hyperparameters"] = {**(spec.get("hyperparameters") or {}), **parse_pairs(hp, "--hp", typed=True)}
    if column:
        spec["columns"] = {**(spec.get("columns") or {}), **parse_pairs(column, "--column", typed=False)}
    missing = [f"--{k.replace('_', '-')}" for k in ("task", "base_model", "dataset") if not spec.get(k)]
    if missing:
        fail(f"missing {', '.join(missing)} (or give them in --file)")
    with client(ctx) as c:
        job = c.jobs.create(**spec)
        if not follow:
            return print_json(job) if as_json else out.print(job.id)
        if not as_json:
            out.print(f"submitted {job.id}")
        _follow(c, job.id, as_json)


@jobs.command("list")
def jobs_list(ctx: typer.Context,
              status: Annotated[str | None, typer.Option(help="Only jobs with this status.")] = None,
              kind: Annotated[str | None, typer.Option(help="train, import, push or evaluate.")] = None,
              as_json: JsonOpt = False) -> None:
    """Your jobs, newest first."""
    with client(ctx) as c:
        rows = list(c.jobs.list(status=status, kind=kind))
    if as_json:
        return print_json(rows)
    table(rows, JOB_COLUMNS)


@jobs.command("show")
def jobs_show(ctx: typer.Context, job_id: IdArg, as_json: JsonOpt = False) -> None:
    """A job: its spec, status, progress, metrics, error and model."""
    with client(ctx) as c:
        job = c.jobs.get(job_id)
    respond(job, as_json, lambda j: fields(j, JOB_FIELDS))


@jobs.command("cancel")
def jobs_cancel(ctx: typer.Context, job_id: IdArg, as_json: JsonOpt = False) -> None:
    """Cancel a job (a running one stops at its next step)."""
    with client(ctx) as c:
        job = c.jobs.cancel(job_id)
    respond(job, as_json, lambda j: out.print(f"job {j.id} {j.status}"))


@jobs.command("logs")
def jobs_logs(ctx: typer.Context, job_id: IdArg,
              follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow the job to its end with a "
                                                   "progress bar (exit 1 if it fails).")] = False,
              as_json: JsonOpt = False) -> None:
    """A job's events (status, logs, metrics)."""
    with client(ctx) as c:
        if follow:
            return _follow(c, job_id, as_json)
        events = c.jobs.events(job_id)
    if as_json:
        return print_json(events)
    for event in events:
        out.print(following.event_line(event), markup=False)


@jobs.command("wait")
def jobs_wait(ctx: typer.Context, job_id: IdArg,
              timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds (exit 3).")]
              = None, as_json: JsonOpt = False) -> None:
    """Wait for a job to end; exit 0 if it succeeded, 1 if it failed or was cancelled."""
    with client(ctx) as c:
        try:
            job = c.jobs.wait(job_id, timeout=timeout)
        except ftserve.JobWaitTimeout:
            fail(f"timeout: job {job_id} did not end within {timeout:g} s", EXIT_API_ERROR)
    finished(job, as_json=as_json)


# -- models -------------------------------------------------------------------------------------------------
models = typer.Typer(help="Registered models and their versions.", no_args_is_help=True)


@models.command("list")
def models_list(ctx: typer.Context, task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
                as_json: JsonOpt = False) -> None:
    """Your models and the shared ones."""
    with client(ctx) as c:
        rows = list(c.models.list(task=task))
    if as_json:
        return print_json(rows)
    table(rows, [("name", lambda m: m.name), ("task", lambda m: m.task), ("latest", lambda m: m.latest_version),
                 ("aliases", lambda m: m.aliases), ("visibility", lambda m: m.visibility),
                 ("owner", lambda m: m.owner), ("created", lambda m: m.created_at)])


@models.command("show")
def models_show(ctx: typer.Context, name: str, as_json: JsonOpt = False) -> None:
    """A model with its versions."""
    with client(ctx) as c:
        model = c.models.get(name)
    if as_json:
        return print_json(model)
    fields(model, ["name", "task", "owner", "visibility", "latest_version", "aliases", "created_at"])
    table(model.versions or [], [("version", lambda v: v.version), ("base model", lambda v: v.base_model),
                                 ("job", lambda v: v.job_id), ("metrics", lambda v: v.metrics),
                                 ("created", lambda v: v.created_at)], title="versions")


@models.command("alias")
def models_alias(ctx: typer.Context, name: str, alias: str, version: int, as_json: JsonOpt = False) -> None:
    """Point ALIAS of model NAME at VERSION (serve it as NAME@ALIAS)."""
    with client(ctx) as c:
        model = c.models.set_alias(name, alias, version)
    respond(model, as_json, lambda _: out.print(f"{name}@{alias} -> {version}", markup=False))


@models.command("rm")
def models_rm(ctx: typer.Context, name: str,
              version: Annotated[int | None, typer.Option(help="Delete only this version.")] = None,
              force: Annotated[bool, typer.Option(help="Delete a model that has aliases too.")] = False) -> None:
    """Delete a model (every version) or one version of it."""
    with client(ctx) as c:
        c.models.delete(name, version, force=force)
    out.print(f"deleted {name}" + (f":{version}" if version is not None else ""), markup=False)


@models.command("card")
def models_card(ctx: typer.Context, name: str, version: int) -> None:
    """A version's model card (markdown)."""
    with client(ctx) as c:
        sys.stdout.write(c.models.card(name, version))
    sys.stdout.flush()


@models.command("export")
def models_export(ctx: typer.Context, name: str, version: int,
                  output: Annotated[Path, typer.Option("--output", "-o", help="A file, or a directory for "
                                                       "NAME-VERSION.tar.gz.")] = Path(".")) -> None:
    """Download a version as a .tar.gz archive."""
    with client(ctx) as c:
        written = c.models.export(name, version, output)
    out.print(str(written), markup=False)


@models.command("import")
def models_import(ctx: typer.Context, name: str,
                  path: Annotated[Path | None, typer.Argument(exists=True, dir_okay=False,
                                                              help="An archive from `models export`.")] = None,
                  hub: Annotated[str | None, typer.Option(help="A Hugging Face model id instead of PATH.")] = None,
                  task: Annotated[str | None, typer.Option(help="The task (needed when it cannot be told).")]
                  = None,
                  revision: Annotated[str | None, typer.Option(help="A Hub revision.")] = None,
                  as_json: JsonOpt = False) -> None:
    """A new version of NAME from an archive (servable at once) or the Hub (a job: follow it with `jobs logs`)."""
    if (path is None) == (hub is None):
        fail("give PATH (an archive) or --hub REPO, one of them")
    with client(ctx) as c:
        made = c.models.import_(name, path, hub=hub, task=task, revision=revision)
    if as_json:
        return print_json(made)
    if isinstance(made, Job):
        out.print(made.id)
    else:
        out.print(f"{made.name}:{made.version}", markup=False)


@models.command("push")
def models_push(ctx: typer.Context, name: str, version: int,
                repo_id: Annotated[str, typer.Option(help="The Hub repo to push to (org/name).")],
                private: Annotated[bool | None, typer.Option("--private/--public", help="The repo's visibility "
                                                             "when it is created.")] = None,
                revision: Annotated[str | None, typer.Option(help="A branch to push to.")] = None,
                commit_message: Annotated[str | None, typer.Option()] = None,
                token: Annotated[str | None, typer.Option(envvar="FTSERVE_HUB_TOKEN", show_default=False,
                                                          help="A Hub write token; read it from the environment "
                                                               "(FTSERVE_HUB_TOKEN), not the command line.")]
                = None,
                as_json: JsonOpt = False) -> None:
    """Queue a push of a version to the Hugging Face Hub."""
    with client(ctx) as c:
        push = c.models.push(name, version, repo_id=repo_id, private=private, revision=revision,
                             commit_message=commit_message, token=token)
    respond(push, as_json, lambda p: out.print(f"push {p.id} {p.status}", markup=False))


# -- predict ------------------------------------------------------------------------------------------------
def line(text: str) -> None:
    """A result line as it is (no wrapping, tabs kept), for scripts to cut."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def classify(ctx: typer.Context, model: ModelOpt, texts: Annotated[list[str], typer.Argument(metavar="TEXT...")],
             top_k: Annotated[int | None, typer.Option(help="How many labels per text.")] = None,
             as_json: JsonOpt = False) -> None:
    """Classify texts: one line per text, `label<TAB>score`."""
    with client(ctx) as c:
        res = c.classify(texts, model=model, top_k=top_k)
    if as_json:
        return print_json(res)
    for preds in res.predictions:
        line("\t".join(f"{p.label}\t{p.score:.4f}" for p in preds))


def answer(ctx: typer.Context, model: ModelOpt, question: Annotated[str, typer.Option(help="The question.")],
           context: Annotated[str, typer.Option(help="The text holding the answer.")], as_json: JsonOpt = False
           ) -> None:
    """Answer a question from a context."""
    with client(ctx) as c:
        res = c.answer(question, context, model=model)
    if as_json:
        return print_json(res)
    for a in res.answers:
        line(a.answer)


def summarize(ctx: typer.Context, model: ModelOpt, texts: Annotated[list[str], typer.Argument(metavar="TEXT...")],
              max_new_tokens: Annotated[int | None, typer.Option()] = None, as_json: JsonOpt = False) -> None:
    """Summarize texts: one summary per line."""
    opts = {"max_new_tokens": max_new_tokens} if max_new_tokens is not None else {}  # else the API's default
    with client(ctx) as c:
        res = c.summarize(texts, model=model, **opts)
    if as_json:
        return print_json(res)
    for summary in res.summaries:
        line(summary)


def generate(ctx: typer.Context, model: ModelOpt, prompt: str,
             max_new_tokens: Annotated[int | None, typer.Option()] = None,
             min_new_tokens: Annotated[int | None, typer.Option()] = None,
             do_sample: Annotated[bool | None, typer.Option("--sample/--greedy")] = None,
             temperature: Annotated[float | None, typer.Option()] = None,
             seed: Annotated[int | None, typer.Option()] = None,
             as_json: JsonOpt = False) -> None:
    """Continue a prompt, streaming the text as it is generated (`--json`: the whole answer at the end)."""
    opts = {"max_new_tokens": max_new_tokens, "min_new_tokens": min_new_tokens, "do_sample": do_sample,
            "temperature": temperature, "seed": seed}
    opts = {k: v for k, v in opts.items() if v is not None}
    with client(ctx) as c:
        if as_json:
            return print_json(c.generate(prompt, model=model, **opts))
        for chunk in c.generate(prompt, model=model, stream=True, **opts):
            sys.stdout.write(chunk)
            sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    app.add_typer(datasets, name="datasets")
    app.add_typer(jobs, name="jobs")
    app.add_typer(models, name="models")
    for fn in (classify, answer, summarize, generate):
        app.command(fn.__name__)(fn)


__all__ = ["EXIT_USAGE", "Connection", "make_client", "register"]
