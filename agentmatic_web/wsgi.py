"""WSGI entry point; the console normally runs under ASGI (see asgi.py)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentmatic_web.settings")

application = get_wsgi_application()
