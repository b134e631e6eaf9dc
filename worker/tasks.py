"""Thin Celery tasks: each takes a job id and calls a plain function that runs without a broker."""

from __future__ import annotations

import logging

from celery.signals import worker_process_init

from core.settings import configure_environment, get_settings
from worker.celery_app import TRAIN_TASK, make_app
from worker.execute import execute_job, prepare_standby

settings = configure_environment(get_settings())
app = make_app(settings)
log = logging.getLogger(__name__)


@app.task(name=TRAIN_TASK, acks_late=True, ignore_result=True)
def run_job(job_id: str) -> None:
    # No autoretry: a failed job is written to its row; re-running is the reconciler's decision.
    execute_job(job_id, settings=settings)


@worker_process_init.connect
def _warm_pool_process(**_: object) -> None:
    """A prefork pool process runs jobs: its first job's training process starts now (the solo pool's is
    started by `ftserve worker`)."""
    prepare_standby(settings)
