"""The template helpers for times and money."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from django.template import Context, Template

from agentmatic_web.templatetags.console import money, timeago


def test_timeago_renders_the_exact_utc_time_for_the_script_to_rewrite():
    moment = datetime(2025, 3, 1, 14, 5, 9, tzinfo=timezone(timedelta(hours=2)))

    html = timeago(moment)

    assert (
        html
        == '<time datetime="2025-03-01T12:05:09+00:00" data-relative>2025-03-01 12:05 UTC</time>'
    )


def test_timeago_says_never_for_no_time():
    assert "never" in timeago(None)


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        (250, "USD", "$250.00"),
        ("1249.5", "usd", "$1,249.50"),
        (12800, "JPY", "¥12,800"),
        (80, "CHF", "CHF 80.00"),
        (-5, "EUR", "-€5.00"),
        (None, "USD", "—"),
        ("n/a", "USD", "n/a"),
    ],
)
def test_money_shows_the_currency(amount, currency, text):
    assert money(amount, currency) == text


def test_the_tags_load_in_templates():
    rendered = Template(
        "{% load console %}{% timeago when %} {{ amount|money:'GBP' }}"
    ).render(Context({"when": datetime(2025, 1, 1, tzinfo=UTC), "amount": 145}))

    assert "£145.00" in rendered and "<time" in rendered
