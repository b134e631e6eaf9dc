"""Celery app and tasks: a job id in, a supervised training run out, the outcome on the job row."""
