"""An administrator sets a retention policy in the Django admin, then changes it."""

import re

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.xdist_group("browser")


def test_an_admin_changes_a_retention_policy(page, login):
    login("admin")
    page.goto("/admin/")
    page.get_by_role("link", name="Retention policies").click()
    page.get_by_role("link", name=re.compile("Add retention policy")).click()
    page.get_by_label("Agent").fill("payments")
    page.get_by_label("Days to keep").fill("30")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.get_by_text(re.compile("was added successfully"))).to_be_visible()

    page.get_by_role("link", name="payments", exact=True).click()
    page.get_by_label("Days to keep").fill("45")
    page.get_by_role("button", name="Save", exact=True).click()

    expect(page.get_by_text(re.compile("was changed successfully"))).to_be_visible()
    row = page.get_by_role("row").filter(has_text="payments")
    expect(row).to_contain_text("45")
