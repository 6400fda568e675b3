"""The console's server time on a long thread: `python -m bench.console`.

Writes one thread of about 1,000 checkpoints to a fresh SQLite file (an
agent whose offline model keeps calling a no-op tool), then times the
console's pages with Django's test client, in this process: the thread
page's first screen (the newest 50 checkpoints and their branch graph), the
next page of older checkpoints, one checkpoint opened with its values, a
diff against the parent, and the threads list. The same file is then opened
as a read-only file (as AGENTMATIC_READONLY_FILES would name it), whose
index is built on first open in a side file: that first open is timed on
its own.

Target: the first screen of a 1,000-checkpoint SQLite thread in under
200 ms. Options: `--steps N` (supersteps, default 1000), `--repeat N`.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

THREAD = "bench-console"


def _setup(data: Path, checkpoints: str | None) -> None:
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "agentmatic_web.settings",
            "AGENTMATIC_DATA_DIR": str(data),
            "AGENTMATIC_CHECKPOINTS": checkpoints
            or f"sqlite:///{data}/checkpoints.sqlite",
            "AGENTMATIC_LOG_LEVEL": "WARNING",
        }
    )
    for name in ("DATABASE_URL", "REDIS_URL", "OPENAI_API_KEY"):
        os.environ.pop(name, None)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _write_thread(steps: int) -> int:
    from agentmatic import Agent, HumanMessage
    from agentmatic.llms import LoopModel
    from runs import services

    def noop(payload: str) -> str:
        """Do nothing, at the size of a real tool result."""
        return "ok:" + payload[:397]

    model = LoopModel("noop", steps=steps // 2, payload_bytes=400)
    saver = services.get_saver()
    agent = Agent.builder("bench").llm(model).tools([noop]).checkpoint(saver).build()
    config = {"configurable": {"thread_id": THREAD}, "recursion_limit": steps + 10}
    agent.invoke({"messages": [HumanMessage("go")]}, config, actor="bench")
    return len(saver.get_state_history(THREAD, values=False))


def _time(call: Callable[[], object], repeat: int) -> list[float]:
    call()  # warm the caches a long-running server would have warm
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        out.append((time.perf_counter() - start) * 1000)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument(
        "--checkpoints",
        help="a checkpoint store URL (e.g. an empty Postgres database) instead "
        "of a fresh SQLite file; the read-only file figure is then skipped",
    )
    args = parser.parse_args(argv)

    data = Path(tempfile.mkdtemp(prefix="agentmatic-bench-console-"))
    try:
        _setup(data, args.checkpoints)
        return _run(data, args.steps, args.repeat, sqlite=not args.checkpoints)
    finally:
        shutil.rmtree(data, ignore_errors=True)


def _run(data: Path, steps: int, repeat: int, *, sqlite: bool = True) -> int:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.test import Client
    from django.urls import reverse

    from runs import services
    from runs.indexing import index_threads, reset_refresh_clock

    start = time.perf_counter()
    count = _write_thread(steps)
    written_s = time.perf_counter() - start
    index_threads()

    user = get_user_model().objects.create_user("bench-developer")
    user.groups.add(Group.objects.get(name="developers"))
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(user)

    saver = services.get_saver()
    history = saver.get_state_history(THREAD, values=False)
    head, older = history[0], history[60]
    thread_url = reverse("runs:thread", args=[THREAD])
    first = client.get(thread_url)
    assert first.status_code == 200, first.status_code
    found = re.search(r'href="([^"]*/page/\?before=[^"]*)"', first.content.decode())
    assert found, "the first screen has no link to older checkpoints"
    more_url = html.unescape(found.group(1))
    partial = {"HTTP_X_PARTIAL": "1"}

    def get(url: str, **extra: str) -> Callable[[], object]:
        def call() -> object:
            response = client.get(url, **extra)
            assert response.status_code == 200, (url, response.status_code)
            return response

        return call

    rows: list[tuple[str, list[float]]] = [
        ("thread page, first screen (newest 50)", _time(get(thread_url), repeat)),
        (
            "next 50 older checkpoints (partial)",
            _time(get(more_url, **partial), repeat),
        ),
        (
            "thread page, oldest first",
            _time(get(thread_url + "?order=oldest"), repeat),
        ),
        (
            "a checkpoint opened (values, partial)",
            _time(
                get(
                    reverse("runs:checkpoint", args=[THREAD, older.checkpoint_id]),
                    **partial,
                ),
                repeat,
            ),
        ),
        (
            "diff with its parent",
            _time(get(reverse("runs:diff", args=[THREAD, head.checkpoint_id])), repeat),
        ),
        ("threads list", _time(get(reverse("runs:threads")), repeat)),
    ]

    if not sqlite:
        _print(count, written_s, rows, None)
        return 0
    # The same file as a read-only file: its index goes to a side file, built
    # on the first open.
    readonly = data / "readonly" / "copy.sqlite"
    readonly.parent.mkdir()
    saver.close()
    shutil.copyfile(data / "checkpoints.sqlite", readonly)
    readonly.chmod(0o444)
    services.reset_caches()
    reset_refresh_clock()
    os.environ["AGENTMATIC_CHECKPOINTS"] = f"sqlite:///{data}/empty.sqlite"
    from django.conf import settings

    from agentmatic_web.env import CheckpointStore

    settings.AGENTMATIC_CHECKPOINT_STORE = CheckpointStore(
        "sqlite", str(data / "empty.sqlite")
    )
    settings.AGENTMATIC_READONLY_FILES = [str(readonly)]
    start = time.perf_counter()
    cold = client.get(thread_url)
    cold_ms = (time.perf_counter() - start) * 1000
    assert cold.status_code == 200 and b"Read-only." in cold.content
    rows.append(("read-only copy: first screen, warm", _time(get(thread_url), repeat)))

    _print(count, written_s, rows, cold_ms)
    return 0


def _print(
    count: int,
    written_s: float,
    rows: list[tuple[str, list[float]]],
    cold_ms: float | None,
) -> None:
    store = os.environ["AGENTMATIC_CHECKPOINTS"].split(":", 1)[0]
    repeat = len(rows[0][1])
    print(
        f"\nConsole server time, {store} thread of {count} checkpoints "
        f"(written in {written_s:.1f} s); {repeat} requests each, Django test client\n"
    )
    print(f"{'page':<42} {'median ms':>10} {'p95 ms':>8} {'min ms':>8}")
    print("-" * 71)
    for name, times in rows:
        ordered = sorted(times)
        p95 = ordered[max(0, int(len(ordered) * 0.95) - 1)]
        print(
            f"{name:<42} {statistics.median(times):>10.1f} {p95:>8.1f} "
            f"{ordered[0]:>8.1f}"
        )
    if cold_ms is not None:
        print(f"{'read-only copy: first open (builds index)':<42} {cold_ms:>10.1f}")
    target = statistics.median(rows[0][1])
    verdict = "meets" if target < 200 else "MISSES"
    print(f"\nFirst screen: {target:.1f} ms median, {verdict} the 200 ms target.")


if __name__ == "__main__":
    sys.exit(main())
