"""Start the console on the embedded defaults: `python manage.py runconsole`.

Migrates the console's database, makes sure the demo users exist, feeds the
demo refund requests on the first start (when the console knows no thread
yet), prints how to log in, then serves HTTP and WebSockets with daphne on
127.0.0.1:8000.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from runs.models import ThreadRecord

PASSWORD_ENV = "AGENTMATIC_DEMO_PASSWORD"  # noqa: S105 (a variable name)


class Command(BaseCommand):
    help = (
        "Migrate, create demo users, feed the demo refund requests on first "
        "start, and serve the console (embedded defaults)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("addrport", nargs="?", default="127.0.0.1:8000")
        parser.add_argument(
            "--no-demo",
            action="store_true",
            help="Create no demo users and feed no demo requests.",
        )
        parser.add_argument(
            "--no-serve",
            action="store_true",
            help="Prepare everything, print how to log in, and exit.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        address = options["addrport"]
        if not options["no_serve"]:
            _ensure_free(address)
        call_command("migrate", interactive=False, verbosity=0)
        call_command("index_pending", stdout=self.stdout)
        if not options["no_demo"]:
            call_command("demo_users", stdout=self.stdout)
            self._feed_on_first_start()

        self.stdout.write("")
        self.stdout.write(f"Console: http://{address}/  (Ctrl-C stops it)")
        if not options["no_demo"]:
            self.stdout.write(self._how_to_log_in())
        if options["no_serve"]:
            return
        # daphne's runserver (daphne is first in INSTALLED_APPS) serves HTTP
        # and WebSockets from this process; runs execute in its thread pool.
        call_command("runserver", address, use_reloader=False)

    def _feed_on_first_start(self) -> None:
        if ThreadRecord.objects.exists():
            return
        self.stdout.write("First start: feeding the demo refund requests…")
        call_command("feed_demo", sync=True, stdout=self.stdout)

    def _how_to_log_in(self) -> str:
        if os.environ.get(PASSWORD_ENV):
            where = f"the password in {PASSWORD_ENV}"
        else:
            where = f"the passwords in {Path(settings.DATA_DIR) / 'demo_passwords.txt'}"
        return (
            "Log in with " + where + ":\n"
            "  operator, operator2  approve, modify or reject refunds (Approvals)\n"
            "  developer            walk threads, compare checkpoints, fork (Threads)\n"
            "  admin                policies, retention and users (Admin)"
        )


def _ensure_free(address: str) -> None:
    """Refuse to start when the address is taken, before anything else runs.

    daphne reports a busy port in its log and exits 0, which looks like a
    start; a user would then open whatever else listens there.
    """
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise CommandError(f"{address!r} is not HOST:PORT") from None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, number))
        except OSError as exc:
            raise CommandError(
                f"cannot listen on {address}: {exc.strerror}. Something else is "
                f"using it; pick another address, e.g. "
                f"`make run ADDR=127.0.0.1:{number + 1}`."
            ) from None
