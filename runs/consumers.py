"""Live updates over WebSockets: a thread's events, and the approval queue's.

The runner publishes a ``run.event`` message to the thread's group and to
the approvals group whenever a run changes (`runs.services.publish`); these
consumers join those groups for signed-in users allowed to see them and
pass each event on as JSON. Pages use the event only as a cue to reload
the part that changed, so an event carries ids and a status, never values.
"""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from runs.services import APPROVALS_GROUP, thread_group

# Close codes in the private range: 4403 mirrors HTTP 403.
FORBIDDEN = 4403


class EventConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """Join one channel-layer group and forward its run events."""

    permission = ""
    group = ""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=FORBIDDEN)
            return
        if not await database_sync_to_async(user.has_perm)(self.permission):
            await self.close(code=FORBIDDEN)
            return
        self.group = self.group_name()
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Ignore what the browser sends; these sockets only speak."""

    async def run_event(self, event: dict[str, Any]) -> None:
        await self.send_json({k: v for k, v in event.items() if k != "type"})

    def group_name(self) -> str:
        raise NotImplementedError


class ThreadConsumer(EventConsumer):
    """Events of one thread, for users who may view threads."""

    permission = "runs.view_threadrecord"

    def group_name(self) -> str:
        return thread_group(self.scope["url_route"]["kwargs"]["thread_id"])


class ApprovalsConsumer(EventConsumer):
    """Events of every run, for the approval queue."""

    permission = "approvals.view_decision"

    def group_name(self) -> str:
        return APPROVALS_GROUP
