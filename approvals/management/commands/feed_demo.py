"""Feed the demo refund requests to the payments agent, so the queue fills."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from approvals.demo import AGENT_NAME, DATA_FILE, ensure_demo_policy
from runs import services
from runs.models import Run, ThreadRecord

FEED_LABEL = "demo-feed"


class Command(BaseCommand):
    help = (
        "Start one payments-agent thread per demo refund request "
        "(refund-req-001, …) through the runner. Requests already fed are "
        "skipped, so it is safe to run again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--limit", type=int, default=None, help="Feed at most N requests."
        )
        parser.add_argument(
            "--sync",
            action="store_true",
            help="Run each request here and now instead of on the runner, and "
            "report where each one stopped.",
        )
        parser.add_argument(
            "--file",
            default=str(DATA_FILE),
            help="The JSON list of requests (default: the shipped demo set).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        limit: int | None = options["limit"]
        if limit is not None and limit < 0:
            raise CommandError("--limit must be zero or more.")
        if services.get_agent(AGENT_NAME) is None:
            raise CommandError(
                f"No agent named {AGENT_NAME!r} is registered in AGENTMATIC_AGENTS."
            )
        requests = _read(Path(options["file"]))[:limit]
        ensure_demo_policy()

        known = set(
            ThreadRecord.objects.filter(
                thread_id__in=[thread_id_for(r) for r in requests]
            ).values_list("thread_id", flat=True)
        )
        runs: list[Run] = []
        for request in requests:
            thread_id = thread_id_for(request)
            if thread_id in known:
                continue
            runs.append(
                services.start_run(
                    AGENT_NAME,
                    thread_id,
                    {"messages": [{"role": "user", "content": request["text"]}]},
                    FEED_LABEL,
                    inline=options["sync"],
                )
            )

        skipped = len(requests) - len(runs)
        self.stdout.write(
            f"Fed {len(runs)} refund request(s) to the {AGENT_NAME} agent"
            + (f"; {skipped} already fed" if skipped else "")
            + "."
        )
        if options["sync"] and runs:
            statuses = Counter(
                Run.objects.filter(pk__in=[r.pk for r in runs]).values_list(
                    "status", flat=True
                )
            )
            self.stdout.write(
                "Where they stopped: "
                + ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
            )


def thread_id_for(request: dict[str, Any]) -> str:
    """Return the thread id of a demo request: ``refund-req-001``."""
    return f"refund-{request['id']}"


def _read(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CommandError(f"Cannot read refund requests from {path}: {exc}") from exc
    if not isinstance(data, list) or not all(
        isinstance(r, dict) and r.get("id") and r.get("text") for r in data
    ):
        raise CommandError(f"{path} must be a JSON list of objects with id and text.")
    return data
