"""The reconciler loop: at worker start and periodically, one instance at a time across workers."""

from __future__ import annotations

import logging
import threading

from sqlalchemy import text

from core.settings import Settings
from registry.db import get_engine
from worker.execute import reconcile

log = logging.getLogger("ftserve.reconciler")
_LOCK_KEY = 804202


def reconcile_once(settings: Settings) -> dict[str, int] | None:
    engine = get_engine(settings.sqlalchemy_url)
    if engine.dialect.name != "postgresql":
        # SQLite serializes writers, and the claim makes a duplicate message harmless.
        return reconcile(settings)
    with engine.connect() as conn:
        got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _LOCK_KEY}).scalar()
        if not got:
            return None
        try:
            return reconcile(settings)
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
            conn.commit()


def start_reconciler(settings: Settings, *, every: float | None = None) -> threading.Thread:
    stop = threading.Event()
    every = every or settings.reconcile_seconds

    def loop() -> None:
        while True:
            try:
                result = reconcile_once(settings)
                if result and any(result.values()):
                    log.info("reconciled: %s", result)
            except Exception:
                log.exception("reconciler pass failed; retrying in %.0fs", every)
            if stop.wait(every):
                return

    thread = threading.Thread(target=loop, name="reconciler", daemon=True)
    thread.start()
    return thread
