"""The Django project of the Agentmatic console."""

# Loaded with Django so that @shared_task functions bind to this app.
from agentmatic_web.celery import app as celery_app

__all__ = ["celery_app"]
