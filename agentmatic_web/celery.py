"""The Celery application that runs and resumes agent runs on workers.

Configuration comes from the Django settings prefixed ``CELERY_``. The
embedded default uses the ``memory://`` broker and runs executions in a
thread pool inside the server instead (``AGENTMATIC_RUNNER=thread``), so no
worker is needed until ``AGENTMATIC_RUNNER=celery`` and a real broker are set.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentmatic_web.settings")

app = Celery("agentmatic_web")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
