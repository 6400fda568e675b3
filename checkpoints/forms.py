"""Forms of the checkpoints app: none yet, the Django admin edits retention."""
