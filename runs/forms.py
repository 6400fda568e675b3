"""Forms of the runs app."""

from __future__ import annotations

from django import forms

from runs.models import RunStatus


class ThreadFilterForm(forms.Form):
    """Filters of the threads list, read from the query string."""

    q = forms.CharField(
        label="Thread id starts with",
        required=False,
        max_length=255,
        strip=True,
    )
    status = forms.ChoiceField(
        choices=[("", "Any status"), *RunStatus.choices], required=False
    )
    agent = forms.CharField(required=False, max_length=100, strip=True)


class ForkForm(forms.Form):
    """Start a branch from a checkpoint: a name, and optionally new input."""

    branch_name = forms.CharField(
        label="Branch name",
        max_length=60,
        strip=True,
        help_text="Names the new thread: its id is this name and a short "
        "random suffix.",
    )
    message = forms.CharField(
        label="New message (optional)",
        required=False,
        max_length=20_000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Sent as the user's next message on the branch. Leave empty "
        "to continue from the checkpoint as it is.",
    )
    system_prompt = forms.CharField(
        label="System prompt (optional)",
        required=False,
        max_length=20_000,
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="Replaces the first system message on the branch. Leave "
        "unchanged to keep it.",
    )

    def __init__(self, *args: object, has_system_prompt: bool = True, **kwargs: object):
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if not has_system_prompt:
            del self.fields["system_prompt"]

    def clean_branch_name(self) -> str:
        from django.utils.text import slugify

        name: str = self.cleaned_data["branch_name"]
        if not slugify(name):
            raise forms.ValidationError(
                "Use at least one letter or digit, so the thread id can be made "
                "from it."
            )
        return name


class DiffForm(forms.Form):
    """Which checkpoint to compare against; empty means the parent."""

    against = forms.CharField(
        label="Compare with checkpoint",
        required=False,
        max_length=64,
        strip=True,
        help_text="A checkpoint id from any thread; leave empty for the parent.",
    )
    against_thread = forms.CharField(
        label="In thread",
        required=False,
        max_length=255,
        strip=True,
        help_text="Leave empty to find the checkpoint in any thread.",
    )
