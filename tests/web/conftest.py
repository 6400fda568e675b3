"""Fixtures for the console's tests: users of each role, and a clean data dir."""

import pytest
from django.contrib.auth.models import Group

ROLES = ("operators", "developers", "admins")


@pytest.fixture
def make_user(db, django_user_model):
    """Return a function creating a user in the given role's group."""

    def make(username: str, role: str | None = None, **fields):
        user = django_user_model.objects.create_user(
            username=username, password="a-long-test-password", **fields
        )
        if role:
            user.groups.add(Group.objects.get(name=role))
        return user

    return make


@pytest.fixture
def operator(make_user):
    return make_user("olga-operator", "operators")


@pytest.fixture
def developer(make_user):
    return make_user("dev-developer", "developers")


@pytest.fixture
def administrator(make_user):
    return make_user("ada-admin", "admins", is_staff=True)


@pytest.fixture
def outsider(make_user):
    return make_user("no-role")


@pytest.fixture
def data_dir(settings, tmp_path):
    """Point settings.DATA_DIR at a fresh directory for this test."""
    settings.DATA_DIR = tmp_path
    return tmp_path


# The thread pages' fixtures: a checkpoint store, its agents, some threads.
from tests.web.console_support import (  # noqa: E402, F401 - fixtures
    langgraph_file,
    long_thread,
    payments,
    store,
    waiting_thread,
)
