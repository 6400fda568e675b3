"""System checks for configuration mistakes, with stable ids."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register


@register(Tags.security, deploy=True)
def check_secret_key_source(
    app_configs: Sequence[AppConfig] | None, **kwargs: Any
) -> list[CheckMessage]:
    """Warn when a deployment relies on the key generated on this machine."""
    if not getattr(settings, "SECRET_KEY_FROM_FILE", False):
        return []
    path = Path(settings.DATA_DIR) / "secret_key"
    return [
        Warning(
            f"SECRET_KEY was generated into {path} on this machine.",
            hint="Set DJANGO_SECRET_KEY so every process and host shares one key.",
            id="agentmatic_web.W001",
        )
    ]


@register()
def check_readonly_files(
    app_configs: Sequence[AppConfig] | None, **kwargs: Any
) -> list[CheckMessage]:
    """Warn about read-only checkpoint files that do not exist."""
    return [
        Warning(
            f"AGENTMATIC_READONLY_FILES names {path}, which is not a file.",
            hint="Fix the path or remove it from AGENTMATIC_READONLY_FILES.",
            id="agentmatic_web.W002",
        )
        for path in getattr(settings, "AGENTMATIC_READONLY_FILES", [])
        if not Path(path).is_file()
    ]


@register()
def check_optional_packages(
    app_configs: Sequence[AppConfig] | None, **kwargs: Any
) -> list[CheckMessage]:
    """Fail when a configured service needs a package that is missing."""
    errors: list[CheckMessage] = []
    if getattr(settings, "REDIS_URL", "") and not importlib.util.find_spec(
        "channels_redis"
    ):
        errors.append(
            Error(
                "REDIS_URL is set, but channels_redis is not installed.",
                hint="Install channels-redis, or unset REDIS_URL to use the "
                "in-memory channel layer.",
                id="agentmatic_web.E001",
            )
        )
    return errors
