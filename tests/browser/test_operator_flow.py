"""An operator approves one refund, modifies another's amount, rejects a third."""

import re

import pytest
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.xdist_group("browser")

OUTCOME_SECONDS = 30


def open_call(page: Page, thread_id: str) -> None:
    page.goto("/approvals/")
    row = page.get_by_role("row").filter(has_text=thread_id)
    row.get_by_role("link").first.click()
    expect(page.get_by_role("heading", name="Decision")).to_be_visible()


def outcome(page: Page, pattern: str) -> None:
    """Wait until the call's receipt shows its outcome (the run finishes)."""
    receipt = page.locator("article.receipt").first
    expect(receipt).to_contain_text(
        re.compile(pattern, re.IGNORECASE), timeout=OUTCOME_SECONDS * 1000
    )


def test_an_operator_approves_modifies_and_rejects_refunds(page, login, artifacts):
    login("operator")
    expect(page.get_by_role("heading", name="Approvals")).to_be_visible()
    expect(page.get_by_role("row").filter(has_text="refund-req-001")).to_be_visible()
    page.screenshot(path=artifacts / "queue.png", full_page=True)

    open_call(page, "refund-req-001")
    page.get_by_role("button", name=re.compile(r"^Approve \$250")).click()
    outcome(page, r"Refund of \$250\.00 sent")

    open_call(page, "refund-req-005")
    page.get_by_text("Modify the arguments").click()
    page.get_by_label("Amount").fill("80")
    page.get_by_role("button", name="Approve with these arguments").click()
    outcome(page, r"Refund of \$80\.00 sent")

    open_call(page, "refund-req-008")
    page.get_by_text("Reject", exact=True).click()
    page.get_by_label("Reason").fill("The return has not reached the warehouse yet.")
    page.get_by_role("button", name="Reject the call").click()
    outcome(page, r"call not made \(rejected\)")

    page.goto("/approvals/")
    expect(page.get_by_role("row").filter(has_text="refund-req-001")).to_have_count(0)
