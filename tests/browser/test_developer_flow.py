"""A developer opens a thread, compares two checkpoints and forks a branch."""

import re

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.xdist_group("browser")


def test_a_developer_walks_a_thread_diffs_and_forks(page, login, artifacts):
    login("developer")
    expect(page.get_by_role("heading", name="Threads")).to_be_visible()

    page.get_by_role("link", name="dev-refund-1042").click()
    expect(page.get_by_role("heading", name="Timeline")).to_be_visible()
    timeline = page.get_by_role("table", name=re.compile("Checkpoints of"))
    # The seed's run reads the order, then proposes the refund: at least
    # the input, the start and two model turns, whatever the policy says.
    expect(timeline.get_by_role("row").nth(4)).to_be_visible()
    expect(timeline).to_contain_text("read_account")
    page.screenshot(path=artifacts / "timeline.png", full_page=True)

    # j/k moves through the timeline; Enter opens the focused checkpoint.
    page.locator("body").press("j")
    page.keyboard.press("j")
    page.keyboard.press("Enter")
    detail = page.locator("#detail")
    expect(detail.get_by_role("heading", name="Conversation")).to_be_visible()
    expect(detail).to_contain_text("Please refund order #1042, $40.")

    detail.get_by_role("link", name="Compare with parent").click()
    expect(page.get_by_role("heading", name="Compare checkpoints")).to_be_visible()
    expect(page.get_by_role("heading", name="What changed")).to_be_visible()
    page.screenshot(path=artifacts / "diff.png", full_page=True)
    page.get_by_role("navigation", name="Breadcrumb").get_by_role(
        "link", name="dev-refund-1042"
    ).click()

    # Fork from an early checkpoint: the one after the customer's message.
    page.get_by_role("link", name="Oldest first").click()
    page.get_by_role("row").filter(has_text="start").get_by_role("link").first.click()
    expect(detail.get_by_text("Fork from here")).to_be_visible()
    detail.get_by_text("Fork from here").click()
    detail.get_by_label("Branch name").fill("Try a smaller refund")
    detail.get_by_label("New message (optional)").fill(
        "Sorry, I meant $25 for order #1042."
    )
    detail.get_by_role("button", name="Create branch").click()

    expect(
        page.get_by_text(re.compile("Branch “Try a smaller refund” started"))
    ).to_be_visible()
    expect(page).to_have_url(re.compile(r"/threads/try-a-smaller-refund-[0-9a-f]{6}/"))
    expect(page.get_by_role("link", name="dev-refund-1042").first).to_be_visible()
    # The branch runs in the console; the page offers its timeline once it has one.
    for _ in range(30):
        if page.get_by_role("heading", name="Timeline").count():
            break
        page.wait_for_timeout(500)
        page.reload()
    expect(page.get_by_role("heading", name="Timeline")).to_be_visible()
    expect(page.locator(".timeline-table")).to_contain_text("forked from")

    page.get_by_role("link", name="dev-refund-1042").first.click()
    expect(page.get_by_text("Branches of this thread:")).to_be_visible()
    expect(page.get_by_role("link", name="Try a smaller refund").first).to_be_visible()
    page.screenshot(path=artifacts / "timeline-with-branch.png", full_page=True)
