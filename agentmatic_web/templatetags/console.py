"""Template helpers shared by every screen: times and money."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from django import template
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

register = template.Library()

# Currencies shown with a symbol before the amount; others show their code.
SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥"}
# ISO 4217 minor units where they differ from two.
MINOR_UNITS = {"JPY": 0, "KRW": 0, "CLP": 0, "ISK": 0, "BHD": 3, "KWD": 3}


@register.simple_tag
def timeago(value: datetime | None) -> SafeString:
    """Render a ``<time>`` the page script turns into "4 min ago".

    The server writes the exact UTC time, which stays readable without
    JavaScript; the script adds the relative text and the exact time in the
    viewer's time zone as the title.
    """
    if value is None:
        return mark_safe('<span class="muted">never</span>')
    if timezone.is_naive(value):
        value = timezone.make_aware(value, UTC)
    utc = value.astimezone(UTC)
    return format_html(
        '<time datetime="{}" data-relative>{}</time>',
        utc.isoformat(timespec="seconds"),
        utc.strftime("%Y-%m-%d %H:%M UTC"),
    )


@register.filter
def money(value: object, currency: str = "") -> str:
    """Format ``value`` with its currency: ``$1,250.00``, ``CHF 80.00``, ``¥12,000``."""
    if value is None or value == "":
        return "—"
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return str(value)
    code = (currency or "").upper()
    places = MINOR_UNITS.get(code, 2)
    number = f"{amount:,.{places}f}"
    if code in SYMBOLS:
        sign, digits = ("-", number[1:]) if number.startswith("-") else ("", number)
        return f"{sign}{SYMBOLS[code]}{digits}"
    return f"{code} {number}".strip()
