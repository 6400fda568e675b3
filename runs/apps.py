from django.apps import AppConfig


class RunsConfig(AppConfig):
    """Threads, runs, timelines, forks and live run events."""

    name = "runs"
    verbose_name = "Runs and threads"
