"""The one function the API uses to enqueue: send a job id by task name."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from core.settings import get_settings
from worker.celery_app import TRAIN_TASK, make_app


@lru_cache(maxsize=1)
def _producer_app() -> Celery:
    return make_app(get_settings())


def send_job(job_id: str) -> None:
    settings = get_settings()
    _producer_app().send_task(TRAIN_TASK, args=[job_id], queue=settings.queue,
                              retry=True, retry_policy={"max_retries": 3, "interval_start": 0.2})


def check_broker(timeout: float = 2.0) -> None:
    with _producer_app().connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
