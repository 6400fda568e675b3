"""Fixtures of the approvals tests: a console on a fresh store, and reviewers.

Load with ``pytest_plugins = ["tests.web.approvals_fixtures"]``; the users of
each role come from ``tests/web/conftest.py``.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from approvals.models import ApprovalPolicy, ApproverLimit
from runs import services
from tests.web.approvals_support import use_checkpoints


@pytest.fixture
def console(settings, tmp_path, db):
    """A console on a fresh checkpoint file with the demo payments policy."""
    use_checkpoints(settings, tmp_path / "checkpoints.sqlite")
    ApprovalPolicy.objects.update_or_create(
        tool="transfer_funds",
        agent="payments",
        defaults={
            "threshold": Decimal("100"),
            "four_eyes_above": Decimal("1000"),
            "active": True,
        },
    )
    yield services.get_saver()
    services.get_saver().close()
    services.reset_caches()


@pytest.fixture
def reviewer(operator):
    """An operator who may approve up to 5,000."""
    ApproverLimit.objects.create(user=operator, max_amount=Decimal("5000"))
    return operator


@pytest.fixture
def second_reviewer(make_user):
    user = make_user("otto-operator", "operators")
    ApproverLimit.objects.create(user=user, max_amount=Decimal("5000"))
    return user


@pytest.fixture
def low_limit_reviewer(make_user):
    user = make_user("lena-low-limit", "operators")
    ApproverLimit.objects.create(user=user, max_amount=Decimal("200"))
    return user
