"""Celery tasks: a worker executes queued runs (any worker, any thread)."""

from __future__ import annotations

from celery import shared_task

from runs.services import execute_run


@shared_task(name="runs.execute_run", acks_late=True)
def execute_run_task(run_id: str) -> str:
    """Execute the queued run `run_id` unless another worker claimed it."""
    return execute_run(run_id)
