"""What changed between two checkpoints' values.

`diff_values(old, new)` compares two value dicts as the savers return them.
Messages are matched by id (a message without an id by its position):
those only in `new` were added, those only in `old` removed, and those in
both with different fields changed, each changed field listed with its two
sides. Every other channel is compared as a whole. The function is pure:
it reads its arguments and returns plain data.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from runs.present import ROLES, jsonable

MESSAGES = "messages"

Change = Literal["added", "removed", "changed"]


@dataclass(frozen=True)
class FieldChange:
    """One field on both sides; a missing side is None with `change` saying so."""

    name: str
    change: Change
    old: Any = None
    new: Any = None

    @property
    def old_text(self) -> str:
        return _text(self.old) if self.change != "added" else ""

    @property
    def new_text(self) -> str:
        return _text(self.new) if self.change != "removed" else ""


def _text(value: Any) -> str:
    """Return a side of a change as text: strings as they are, the rest as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False)


@dataclass(frozen=True)
class MessageChange:
    """A message present on both sides with some fields changed."""

    key: str
    role: str
    old: dict[str, Any]
    new: dict[str, Any]
    fields: list[FieldChange]


@dataclass(frozen=True)
class StateDiff:
    added: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    changed: list[MessageChange] = field(default_factory=list)
    unchanged_messages: int = 0
    fields: list[FieldChange] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.fields)

    def as_dict(self) -> dict[str, Any]:
        """Return the diff as JSON-ready data (the API's shape)."""
        return {
            "messages": {
                "added": self.added,
                "removed": self.removed,
                "changed": [
                    {
                        "key": c.key,
                        "role": c.role,
                        "fields": [_field_dict(f) for f in c.fields],
                    }
                    for c in self.changed
                ],
                "unchanged": self.unchanged_messages,
            },
            "fields": [_field_dict(f) for f in self.fields],
        }


def _field_dict(change: FieldChange) -> dict[str, Any]:
    return {
        "name": change.name,
        "change": change.change,
        "old": change.old,
        "new": change.new,
    }


def diff_values(old: Mapping[str, Any], new: Mapping[str, Any]) -> StateDiff:
    """Return what changed from `old` to `new` (two checkpoints' values)."""
    old_messages = _keyed(old.get(MESSAGES))
    new_messages = _keyed(new.get(MESSAGES))
    added = [_json(m) for k, m in new_messages.items() if k not in old_messages]
    removed = [_json(m) for k, m in old_messages.items() if k not in new_messages]
    changed: list[MessageChange] = []
    unchanged = 0
    for key, before in old_messages.items():
        if key not in new_messages:
            continue
        after = new_messages[key]
        # Equal objects need no JSON: a long conversation is mostly these.
        if type(before) is type(after) and before == after:
            unchanged += 1
            continue
        old_json, new_json = _json(before), _json(after)
        fields = _field_changes(old_json, new_json)
        if fields:
            changed.append(
                MessageChange(
                    key=key,
                    role=_role(new_json),
                    old=old_json,
                    new=new_json,
                    fields=fields,
                )
            )
        else:
            unchanged += 1
    others = _field_changes(
        {k: jsonable(v) for k, v in old.items() if k != MESSAGES},
        {k: jsonable(v) for k, v in new.items() if k != MESSAGES},
    )
    return StateDiff(
        added=added,
        removed=removed,
        changed=changed,
        unchanged_messages=unchanged,
        fields=others,
    )


def _keyed(messages: Any) -> dict[str, Any]:
    """Return messages keyed by id (by position when they have none)."""
    if messages is None:
        return {}
    items: Sequence[Any] = (
        messages if isinstance(messages, (list, tuple)) else [messages]
    )
    out: dict[str, Any] = {}
    for index, message in enumerate(items):
        ident = getattr(message, "id", None)
        if ident is None and isinstance(message, Mapping):
            ident = message.get("id")
        key = str(ident or f"#{index}")
        if key in out:
            key = f"{key}#{index}"
        out[key] = message
    return out


def _json(message: Any) -> dict[str, Any]:
    data = jsonable(message)
    return data if isinstance(data, dict) else {"value": data}


def _field_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[FieldChange]:
    changes: list[FieldChange] = []
    for name in [*old, *(k for k in new if k not in old)]:
        if name not in new:
            changes.append(FieldChange(name, "removed", old=old[name]))
        elif name not in old:
            changes.append(FieldChange(name, "added", new=new[name]))
        elif old[name] != new[name]:
            changes.append(FieldChange(name, "changed", old=old[name], new=new[name]))
    return changes


def _role(message: dict[str, Any]) -> str:
    kind = str(message.get("type") or "")
    return ROLES.get(kind, kind.title() or "Value")
