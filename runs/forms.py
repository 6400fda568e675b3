"""Forms of the runs app."""

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
