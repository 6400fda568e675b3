"""Forms of the approvals app: the decision forms, the queue's and audit's filters.

The modify form is generated from the tool's JSON schema. Its fields take
text as typed and leave coercion to the tool's own validator, so the error a
reviewer sees names the same field and rule the runtime would apply.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib.auth import get_user_model

from approvals.models import DecisionKind, DecisionStatus

STATE_CHOICES = [
    ("pending", "Waiting"),
    ("decided", "Decided"),
    ("stale", "No longer current"),
    ("mine", "Decided by me"),
]
SORT_CHOICES = [("oldest", "Oldest first"), ("newest", "Newest first")]


class QueueFilterForm(forms.Form):
    """The queue's filters; every field is optional and bad input is ignored."""

    state = forms.ChoiceField(choices=STATE_CHOICES, required=False)
    tool = forms.CharField(required=False, max_length=100)
    agent = forms.CharField(required=False, max_length=100)
    amount_min = forms.DecimalField(
        required=False, min_value=0, max_digits=14, decimal_places=2, label="From"
    )
    amount_max = forms.DecimalField(
        required=False, min_value=0, max_digits=14, decimal_places=2, label="To"
    )
    sort = forms.ChoiceField(choices=SORT_CHOICES, required=False)

    def __init__(
        self,
        *args: Any,
        tools: list[str] | None = None,
        agents: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        for name, label, values in (
            ("tool", "Any tool", tools or []),
            ("agent", "Any agent", agents or []),
        ):
            # A value in the address that is not a known choice stays selectable.
            current = str(self.data.get(name, "")) if self.is_bound else ""
            options = sorted({*values, current} - {""})
            self.fields[name].widget = forms.Select(
                choices=[("", label), *((v, v) for v in options)]
            )
        for name in ("amount_min", "amount_max"):
            self.fields[name].widget.attrs.update(
                {"inputmode": "decimal", "step": "0.01", "min": "0"}
            )

    def value(self, name: str) -> Any:
        """Return the cleaned value, or None when missing or invalid."""
        if not self.is_bound:
            return None
        self.is_valid()  # fills cleaned_data with the fields that are valid
        return self.cleaned_data.get(name) or None


class RejectForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        max_length=2000,
        label="Reason",
        help_text="Required. The model and the audit trail see it.",
    )

    def clean_reason(self) -> str:
        reason = str(self.cleaned_data["reason"]).strip()
        if not reason:
            raise forms.ValidationError("Say why you reject the call.")
        return reason


class ModifyForm(forms.Form):
    """A form for a tool's arguments, generated from its JSON schema.

    Each field starts with the proposed value and remembers it, so the page
    can show which fields differ from the proposal.
    """

    def __init__(
        self,
        schema: dict[str, Any],
        proposal: dict[str, Any],
        *args: Any,
        **kwargs: Any,
    ) -> None:
        self.schema = schema
        self.proposal = proposal
        initial = {}
        for name, prop in _properties(schema).items():
            value = proposal.get(name, prop.get("default"))
            initial[name] = _as_text(value, _kind(prop))
        kwargs.setdefault("initial", initial)
        super().__init__(*args, **kwargs)
        required = set(schema.get("required") or ())
        for name, prop in _properties(schema).items():
            self.fields[name] = _field_for(name, prop, name in required)
            self.fields[name].original = initial[name]  # type: ignore[attr-defined]

    def raw_args(self) -> dict[str, Any]:
        """Return the submitted arguments, typed only where the form must."""
        data = self.data
        out: dict[str, Any] = {}
        for name, prop in _properties(self.schema).items():
            kind = _kind(prop)
            if kind == "boolean":
                out[name] = name in data and data.get(name) not in ("", "off", "false")
                continue
            raw = str(data.get(name, "")).strip()
            if raw == "" and name not in (self.schema.get("required") or ()):
                continue
            if kind in ("object", "array"):
                try:
                    out[name] = json.loads(raw)
                except ValueError:
                    out[name] = raw
            else:
                out[name] = raw
        return out

    def changed_names(self) -> set[str]:
        """Return the fields whose submitted value differs from the proposal."""
        if not self.is_bound:
            return set()
        changed = set()
        for name, field in self.fields.items():
            submitted = str(self.data.get(name, "")).strip()
            if _kind(_properties(self.schema).get(name, {})) == "boolean":
                submitted = "true" if name in self.data else "false"
            if not _same(submitted, field.original):  # type: ignore[attr-defined]
                changed.add(name)
        return changed

    def rows(self) -> list[dict[str, Any]]:
        """Return each field with its proposed value and whether it changed."""
        changed = self.changed_names()
        for name, field in self.fields.items():
            if self.is_bound and name in self.errors:
                field.widget.attrs["aria-invalid"] = "true"
                field.widget.attrs["aria-describedby"] = f"{self[name].auto_id}-error"
        return [
            {
                "field": self[name],
                "original": field.original,  # type: ignore[attr-defined]
                "changed": name in changed,
            }
            for name, field in self.fields.items()
        ]


def _properties(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(schema.get("properties") or {})


def _kind(prop: dict[str, Any]) -> str:
    kind = prop.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind is None:
        for option in prop.get("anyOf") or []:
            if isinstance(option, dict) and option.get("type") not in (None, "null"):
                return str(option["type"])
    return str(kind or "string")


def _as_text(value: Any, kind: str) -> str:
    if value is None:
        return ""
    if kind == "boolean":
        return "true" if value else "false"
    if kind in ("object", "array"):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _same(submitted: str, original: str) -> bool:
    if submitted == original:
        return True
    try:
        return Decimal(submitted) == Decimal(original)
    except ArithmeticError:
        return False
    except ValueError:
        return False


def _field_for(name: str, prop: dict[str, Any], required: bool) -> forms.Field:
    kind = _kind(prop)
    label = name.replace("_", " ").capitalize()
    help_text = str(prop.get("description") or "")
    attrs: dict[str, str] = {}
    field: forms.Field
    if "enum" in prop:
        choices = [(str(v), str(v)) for v in prop["enum"]]
        field = forms.ChoiceField(choices=choices, required=required)
    elif kind == "boolean":
        field = forms.BooleanField(required=False)
    elif kind in ("object", "array"):
        field = forms.CharField(
            required=required, widget=forms.Textarea(attrs={"rows": 3})
        )
        help_text = (help_text + " (JSON)").strip()
    else:
        field = forms.CharField(required=required)
        if kind in ("number", "integer"):
            attrs["inputmode"] = "decimal" if kind == "number" else "numeric"
            attrs["autocomplete"] = "off"
    field.label = label
    field.help_text = help_text
    field.widget.attrs.update(attrs)
    return field


class AuditFilterForm(forms.Form):
    actor = forms.CharField(required=False, max_length=150, label="Who")
    kind = forms.ChoiceField(
        choices=[("", "Any decision"), *DecisionKind.choices],
        required=False,
        label="Decision",
    )
    status = forms.ChoiceField(
        choices=[("", "Any status"), *DecisionStatus.choices], required=False
    )
    tool = forms.CharField(required=False, max_length=100)
    thread = forms.CharField(
        required=False, max_length=255, help_text="Thread id or its beginning."
    )
    since = forms.DateField(
        required=False, label="From", widget=forms.DateInput(attrs={"type": "date"})
    )
    until = forms.DateField(
        required=False, label="To", widget=forms.DateInput(attrs={"type": "date"})
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        User = get_user_model()
        names = (
            User.objects.filter(decisions__isnull=False)
            .order_by("username")
            .values_list("username", flat=True)
            .distinct()
        )
        self.fields["actor"].widget = forms.Select(
            choices=[("", "Anyone"), *((n, n) for n in names)]
        )
