"""A live console for the browser tests, and Debian's Chromium to drive it.

pytest-django's live server speaks WSGI only, and the console's pages listen
on WebSockets, so the console runs as it does for a user: daphne (Django's
runserver under daphne) in a subprocess, on a free port of 127.0.0.1, with a
data directory of its own. Playwright drives /usr/bin/chromium; it never
downloads a browser. Without Chromium the tests skip, except under
``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "browser-test-password-7"  # a throwaway password for a throwaway server
STARTUP_SECONDS = 60


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _environment(data: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "AGENTMATIC_", "OPENAI_"))
        and k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "agentmatic_web.settings",
            "DJANGO_DEBUG": "1",
            "AGENTMATIC_DATA_DIR": str(data),
            "AGENTMATIC_CHECKPOINTS": f"sqlite:///{data}/checkpoints.sqlite",
            "AGENTMATIC_DEMO_PASSWORD": PASSWORD,
            "AGENTMATIC_RUNNER": "thread",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _manage(env: dict[str, str], *args: str) -> None:
    subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )


@pytest.fixture(scope="session")
def console_url(tmp_path_factory) -> Iterator[str]:
    """Start the console on a free port with demo users and data; yield its URL."""
    data = tmp_path_factory.mktemp("console-data")
    env = _environment(data)
    _manage(env, "migrate", "--no-input")
    _manage(env, "demo_users")
    subprocess.run(
        [sys.executable, "-m", "tests.browser.seed"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    _manage(env, "feed_demo", "--limit", "8", "--sync")
    port = _free_port()
    log = (data / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for(port, server, data / "server.log")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _wait_for(port: int, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the console exited:\n{log.read_text()[-4000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the console did not start:\n{log.read_text()[-4000:]}")


# Module scope: Playwright's sync API runs an event loop in this thread while
# it lives, and tests of other modules on the same worker must not see it.
@pytest.fixture(scope="module")
def browser():
    """Launch Debian's Chromium through Playwright (never a downloaded one)."""
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing; install Debian's chromium package"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, console_url):
    context = browser.new_context(
        base_url=console_url, viewport={"width": 1400, "height": 900}
    )
    from playwright.sync_api import expect

    tab = context.new_page()
    # Actions and assertions alike wait up to 15 s: the suite runs beside the
    # browser on two cores, and a page load can take a few seconds.
    tab.set_default_timeout(15_000)
    expect.set_options(timeout=15_000)
    yield tab
    context.close()


@pytest.fixture
def login(page):
    """Return a function logging the page in as one of the demo users."""

    def log_in(username: str) -> None:
        page.goto("/accounts/login/")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_load_state()

    return log_in


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
