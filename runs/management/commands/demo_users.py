"""Create the demo users, one or two per role; safe to run again."""

from __future__ import annotations

import os
import secrets
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from approvals.models import ApproverLimit

# (username, group, staff, approval limit)
DEMO_USERS: list[tuple[str, str, bool, Decimal | None]] = [
    ("operator", "operators", False, Decimal("5000")),
    ("operator2", "operators", False, Decimal("5000")),
    ("developer", "developers", False, None),
    ("admin", "admins", True, None),
]
PASSWORD_ENV = "AGENTMATIC_DEMO_PASSWORD"  # noqa: S105 (a variable name)


class Command(BaseCommand):
    help = (
        "Create the demo users operator, operator2, developer and admin in their "
        f"groups. Passwords come from {PASSWORD_ENV}, else are generated, printed "
        "once and kept in .data/demo_passwords.txt (mode 600). Existing users keep "
        "their passwords unless --reset-passwords is given."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--reset-passwords",
            action="store_true",
            help="Give existing demo users new passwords too.",
        )

    def handle(self, *args: Any, reset_passwords: bool = False, **options: Any) -> None:
        shared_password = os.environ.get(PASSWORD_ENV, "")
        if shared_password and len(shared_password) < 8:
            raise CommandError(f"{PASSWORD_ENV} must be at least 8 characters long.")

        groups = {group.name: group for group in Group.objects.all()}
        missing = {group for _, group, _, _ in DEMO_USERS} - groups.keys()
        if missing:
            raise CommandError(
                f"Groups {', '.join(sorted(missing))} do not exist; run migrate first."
            )

        generated: dict[str, str] = {}
        with transaction.atomic():
            for username, group, staff, limit in DEMO_USERS:
                password = self._ensure_user(
                    username,
                    groups[group],
                    staff,
                    limit,
                    shared_password,
                    reset_passwords,
                )
                if password:
                    generated[username] = password

        if generated:
            path = _store_passwords(
                Path(settings.DATA_DIR) / "demo_passwords.txt", generated
            )
            self.stdout.write(f"New demo passwords (also kept in {path}):")
            for username, password in generated.items():
                self.stdout.write(f"  {username:<10} {password}")
        elif shared_password:
            self.stdout.write(f"Demo users log in with the password in {PASSWORD_ENV}.")
        else:
            self.stdout.write("Demo users exist; their passwords are unchanged.")

    def _ensure_user(
        self,
        username: str,
        group: Group,
        staff: bool,
        limit: Decimal | None,
        shared_password: str,
        reset_password: bool,
    ) -> str:
        """Create or update one demo user; return a newly generated password."""
        User = get_user_model()
        user, created = User.objects.get_or_create(username=username)
        user.is_active = True
        user.is_staff = staff

        generated = ""
        if shared_password:
            if not user.check_password(shared_password):
                user.set_password(shared_password)
        elif created or reset_password:
            generated = secrets.token_urlsafe(12)
            user.set_password(generated)
        user.save()
        user.groups.add(group)

        if limit is not None:
            ApproverLimit.objects.get_or_create(
                user=user, defaults={"max_amount": limit}
            )

        self.stdout.write(
            f"{username} ({group.name}): {'created' if created else 'exists'}"
        )
        return generated


def _store_passwords(path: Path, generated: dict[str, str]) -> Path:
    """Merge ``generated`` into the password file, readable by its owner only."""
    known: dict[str, str] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            username, _, password = line.partition(" ")
            if username and password:
                known[username] = password
    known.update(generated)

    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file with mode 0600 before any secret is written.
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".demo-passwords-")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.writelines(f"{name} {password}\n" for name, password in known.items())
    os.replace(temporary, path)
    return path
