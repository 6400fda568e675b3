"""WebSocket routes of the runs app (mounted by agentmatic_web.asgi)."""

from django.urls import re_path

from runs.consumers import ApprovalsConsumer, ThreadConsumer

websocket_urlpatterns = [
    re_path(r"^ws/threads/(?P<thread_id>[^/]+)/$", ThreadConsumer.as_asgi()),
    re_path(r"^ws/approvals/$", ApprovalsConsumer.as_asgi()),
]
