from django.apps import AppConfig


class CheckpointsConfig(AppConfig):
    """Retention policies, legal holds and (later) the Postgres saver's tables."""

    name = "checkpoints"
    verbose_name = "Checkpoints and retention"
