"""The demo data set of refund requests: enough, varied, and anonymous."""

import json
import re
from collections import Counter
from pathlib import Path

import pytest

DATA = (
    Path(__file__).resolve().parents[2] / "approvals" / "data" / "refund_requests.json"
)
FIELDS = {
    "id",
    "order",
    "account",
    "text",
    "expected_amount",
    "currency",
    "language",
    "note",
}
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
# Nine or more digits in a row, allowing the usual separators: a phone number.
PHONE = re.compile(r"(?:\+?\d[\s().-]?){9,}")


@pytest.fixture(scope="module")
def requests():
    return json.loads(DATA.read_text(encoding="utf-8"))


def test_there_are_at_least_fifty_requests_each_complete(requests):
    assert len(requests) >= 50
    for entry in requests:
        assert set(entry) == FIELDS, entry["id"]
        assert entry["text"].strip() and entry["note"].strip()


def test_ids_orders_and_accounts_are_unique_and_opaque(requests):
    for field in ("id", "order", "account"):
        values = [entry[field] for entry in requests]
        assert len(set(values)) == len(values), field
    for entry in requests:
        assert re.fullmatch(r"req-\d{3}", entry["id"])
        assert re.fullmatch(r"#\d{4}", entry["order"])
        assert re.fullmatch(r"acct-[0-9a-f]{4}", entry["account"])
        assert entry["order"] in entry["text"]


def test_amounts_span_twelve_to_four_thousand_eight_hundred_dollars(requests):
    dollars = [
        e["expected_amount"]
        for e in requests
        if e["currency"] == "USD" and e["expected_amount"]
    ]

    assert min(dollars) <= 12
    assert max(dollars) >= 4800
    assert len({round(amount, -1) for amount in dollars}) >= 15


def test_currencies_and_languages_vary(requests):
    currencies = Counter(entry["currency"] for entry in requests)
    languages = Counter(entry["language"] for entry in requests)

    assert {"USD", "EUR", "GBP", "JPY", "CHF"} <= set(currencies)
    assert {"en", "de", "fr", "es", "ja", "pt", "it"} <= set(languages)
    for language in ("de", "fr", "es", "ja"):
        assert languages[language] >= 5, language


def test_some_requests_are_ambiguous(requests):
    ambiguous = [entry for entry in requests if entry["expected_amount"] is None]
    notes = " ".join(entry["note"].lower() for entry in ambiguous)

    assert len(ambiguous) >= 8
    assert "no amount" in notes
    assert "two amounts" in notes
    assert "fair" in notes


def test_no_request_holds_an_email_address_or_phone_number(requests):
    for entry in requests:
        for value in entry.values():
            if isinstance(value, str):
                assert not EMAIL.search(value), entry["id"]
                assert not PHONE.search(value), entry["id"]
