"""Start the console on the embedded defaults: `python manage.py runconsole`.

Migrates the console's database, makes sure the demo users exist, prints how
to log in, then serves HTTP and WebSockets with daphne on 127.0.0.1:8000.
"""

from __future__ import annotations

from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Migrate, create demo users and serve the console (embedded defaults)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("addrport", nargs="?", default="127.0.0.1:8000")
        parser.add_argument(
            "--no-demo", action="store_true", help="Do not create the demo users."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        if not options["no_demo"]:
            call_command("demo_users", stdout=self.stdout)
        self.stdout.write(f"Console: http://{options['addrport']}/  (Ctrl-C stops it)")
        call_command("runserver", options["addrport"], use_reloader=False)
