from django.apps import AppConfig


class AgentmaticWebConfig(AppConfig):
    """The project package itself: its system checks and shared templates."""

    name = "agentmatic_web"
    verbose_name = "Agentmatic console"

    def ready(self) -> None:
        from agentmatic_web import checks  # noqa: F401  (registers the checks)
