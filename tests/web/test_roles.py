"""The role groups the migration creates, and what each may do."""

import importlib

import pytest
from django.contrib.auth.models import Group

pytestmark = pytest.mark.django_db


def test_the_three_role_groups_exist_after_migrate():
    names = set(Group.objects.values_list("name", flat=True))

    assert {"operators", "developers", "admins"} <= names


@pytest.mark.parametrize(
    ("user_fixture", "allowed", "denied"),
    [
        (
            "operator",
            [
                "approvals.decide",
                "approvals.add_decision",
                "approvals.change_decision",
                "runs.view_run",
            ],
            ["runs.fork_thread", "approvals.change_approvalpolicy"],
        ),
        (
            "developer",
            [
                "runs.fork_thread",
                "runs.view_threadrecord",
                "approvals.view_decision",
                "checkpoints.view_retentionpolicy",
            ],
            ["approvals.decide", "approvals.add_decision", "runs.change_run"],
        ),
        (
            "administrator",
            [
                "approvals.change_approvalpolicy",
                "approvals.add_approverlimit",
                "checkpoints.change_retentionpolicy",
                "checkpoints.add_legalhold",
                "auth.change_user",
                "runs.fork_thread",
                "approvals.decide",
            ],
            ["approvals.delete_decision", "auth.change_permission"],
        ),
        ("outsider", [], ["runs.view_run", "approvals.view_decision"]),
    ],
)
def test_each_role_has_its_permissions_and_no_more(
    request, user_fixture, allowed, denied
):
    user = request.getfixturevalue(user_fixture)

    for permission in allowed:
        assert user.has_perm(permission), permission
    for permission in denied:
        assert not user.has_perm(permission), permission


def test_the_group_migration_reverses_and_reapplies():
    from types import SimpleNamespace

    from django.db import connection
    from django.db.migrations.loader import MigrationLoader

    loader = MigrationLoader(connection)
    migration = importlib.import_module("runs.migrations.0002_create_role_groups")
    state_apps = loader.project_state(("runs", "0002_create_role_groups")).apps
    editor = SimpleNamespace(connection=connection)

    migration.delete_groups(state_apps, editor)
    assert not Group.objects.filter(
        name__in=["operators", "developers", "admins"]
    ).exists()

    migration.create_groups(state_apps, editor)
    migration.create_groups(state_apps, editor)
    assert Group.objects.filter(name="operators").count() == 1
    assert (
        Group.objects.get(name="operators")
        .permissions.filter(codename="decide")
        .exists()
    )
