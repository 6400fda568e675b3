"""The checkpoints app has no pages: retention is edited in the Django admin."""
