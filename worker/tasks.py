"""Thin Celery tasks: each takes a job id and calls a plain function that runs without a broker."""

from __future__ import annotations

import logging

from core.settings import configure_environment, get_settings
from worker.celery_app import TRAIN_TASK, make_app
from worker.execute import execute_job

settings = configure_environment(get_settings())
app = make_app(settings)
log = logging.getLogger(__name__)


@app.task(name=TRAIN_TASK, acks_late=True, ignore_result=True)
def run_job(job_id: str) -> None:
    # No autoretry: a failed job is written to its row; re-running is the reconciler's decision.
    execute_job(job_id, settings=settings)
