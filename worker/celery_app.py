"""The Celery app, built from settings. Queue names live here and only here."""

from __future__ import annotations

from celery import Celery

from core.settings import Settings, get_settings

TRAIN_TASK = "ftserve.run_job"


def broker_options(settings: Settings) -> dict[str, object]:
    if settings.celery_broker_url.startswith("filesystem://"):
        # kombu's filesystem transport: a folder shared by every process on the machine.
        folder = settings.broker_dir / "messages"
        processed = settings.broker_dir / "processed"
        control = settings.broker_dir / "control"
        for path in (folder, processed, control):
            path.mkdir(parents=True, exist_ok=True)
        return {"data_folder_in": str(folder), "data_folder_out": str(folder),
                "processed_folder": str(processed), "store_processed": False, "control_folder": str(control)}
    return {}


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("ftserve", broker=settings.celery_broker_url)
    app.conf.update(
        broker_transport_options=broker_options(settings),
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.queue,
        task_routes={TRAIN_TASK: {"queue": settings.queue}},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
    )
    return app
