"""Template helpers of the approvals pages: durations, bars, argument values."""

from __future__ import annotations

import json
from typing import Any

from django import template
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

register = template.Library()

BAR_WIDTH, BAR_GAP, BAR_HEIGHT = 6, 2, 24


@register.filter
def duration(seconds: float | None) -> str:
    """Return ``45 s``, ``4 min``, ``2 h 5 min`` or ``3 d 2 h``."""
    if seconds is None:
        return "—"
    total = int(seconds)
    if total < 60:
        return f"{total} s"
    minutes, hours, days = total // 60, total // 3600, total // 86400
    if total < 3600:
        return f"{minutes} min"
    if total < 86400:
        rest = minutes - hours * 60
        return f"{hours} h {rest} min" if rest else f"{hours} h"
    rest = hours - days * 24
    return f"{days} d {rest} h" if rest else f"{days} d"


@register.simple_tag
def hour_bars(counts: list[int]) -> SafeString:
    """Draw decisions per hour as a small bar chart with a text equivalent."""
    peak = max(counts) if counts else 0
    width = max(1, len(counts)) * (BAR_WIDTH + BAR_GAP)
    bars = []
    for hour, count in enumerate(counts):
        height = round(BAR_HEIGHT * count / peak) if peak else 0
        bars.append(
            (
                hour * (BAR_WIDTH + BAR_GAP),
                BAR_HEIGHT - max(height, 1),
                BAR_WIDTH,
                max(height, 1),
                "bar" if count else "bar bar-empty",
                f"{hour:02d}:00 {count} decision{'s' if count != 1 else ''}",
            )
        )
    summary = ", ".join(f"{h:02d}:00 {c}" for h, c in enumerate(counts) if c)
    label = "Decisions per hour today: " + (summary or "none yet")
    rects = format_html_join(
        "",
        '<rect x="{}" y="{}" width="{}" height="{}" class="{}">'
        "<title>{}</title></rect>",
        bars,
    )
    return format_html(
        '<svg class="hour-bars" role="img" aria-label="{}" viewBox="0 0 {} {}" '
        'width="{}" height="{}">{}</svg>',
        label,
        width,
        BAR_HEIGHT,
        width,
        BAR_HEIGHT,
        rects,
    )


@register.filter
def arg_value(value: Any) -> str:
    """Show one tool argument: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, ensure_ascii=False)


_DECIDED_AS = {"approve": "Approved", "modify": "Modified", "reject": "Rejected"}


@register.filter
def decided_as(kind: str) -> str:
    """Return a decision kind as a receipt says it: "Approved", "Rejected"…"""
    return _DECIDED_AS.get(str(kind), str(kind).capitalize())
