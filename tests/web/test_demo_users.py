"""The demo_users command: users per role, passwords kept private, idempotent."""

import stat

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import CommandError, call_command

from approvals.models import ApproverLimit

pytestmark = pytest.mark.django_db
USERS = {
    "operator": "operators",
    "operator2": "operators",
    "developer": "developers",
    "admin": "admins",
}


def read_passwords(path):
    return dict(line.split(" ", 1) for line in path.read_text().splitlines())


def test_it_creates_one_user_per_role_with_a_private_password_file(
    data_dir, monkeypatch, capsys
):
    monkeypatch.delenv("AGENTMATIC_DEMO_PASSWORD", raising=False)

    call_command("demo_users")

    User = get_user_model()
    for username, group in USERS.items():
        assert User.objects.get(username=username).groups.filter(name=group).exists()
    assert User.objects.get(username="admin").is_staff
    assert not User.objects.get(username="operator").is_staff
    password_file = data_dir / "demo_passwords.txt"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    passwords = read_passwords(password_file)
    assert set(passwords) == set(USERS)
    assert passwords["operator"] in capsys.readouterr().out
    assert authenticate(username="operator", password=passwords["operator"])
    assert ApproverLimit.objects.filter(user__username="operator").exists()


def test_running_it_again_changes_nothing(data_dir, monkeypatch, capsys):
    monkeypatch.delenv("AGENTMATIC_DEMO_PASSWORD", raising=False)
    call_command("demo_users")
    first = read_passwords(data_dir / "demo_passwords.txt")
    capsys.readouterr()

    call_command("demo_users")

    assert get_user_model().objects.count() == len(USERS)
    assert read_passwords(data_dir / "demo_passwords.txt") == first
    assert first["developer"] not in capsys.readouterr().out
    assert authenticate(username="developer", password=first["developer"])
    assert ApproverLimit.objects.count() == 2


def test_it_uses_the_password_from_the_environment(data_dir, monkeypatch):
    monkeypatch.setenv("AGENTMATIC_DEMO_PASSWORD", "correct-horse-battery")

    call_command("demo_users")
    call_command("demo_users")

    for username in USERS:
        assert authenticate(username=username, password="correct-horse-battery")
    assert not (data_dir / "demo_passwords.txt").exists()


def test_it_refuses_a_short_password_from_the_environment(data_dir, monkeypatch):
    monkeypatch.setenv("AGENTMATIC_DEMO_PASSWORD", "short")

    with pytest.raises(CommandError, match="at least 8"):
        call_command("demo_users")


def test_reset_passwords_gives_new_ones(data_dir, monkeypatch):
    monkeypatch.delenv("AGENTMATIC_DEMO_PASSWORD", raising=False)
    call_command("demo_users")
    first = read_passwords(data_dir / "demo_passwords.txt")

    call_command("demo_users", "--reset-passwords")

    second = read_passwords(data_dir / "demo_passwords.txt")
    assert second["operator"] != first["operator"]
    assert authenticate(username="operator", password=second["operator"])
