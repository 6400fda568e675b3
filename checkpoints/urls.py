"""Retention is edited in the Django admin; this app has no pages of its own."""

app_name = "checkpoints"

urlpatterns: list = []
