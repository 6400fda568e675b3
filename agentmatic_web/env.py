"""Read configuration from the environment, failing loudly on bad values.

Each helper takes the variable's name, a default and, for tests, the mapping
to read from. A value that is set but malformed raises
``ImproperlyConfigured`` naming the variable, so a typo in a deployment
stops the process at start-up instead of silently falling back to a default.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _raw(name: str, environ: Mapping[str, str] | None) -> str | None:
    source = os.environ if environ is None else environ
    value = source.get(name)
    return None if value is None else value.strip()


def env_str(
    name: str, default: str = "", environ: Mapping[str, str] | None = None
) -> str:
    """Return the variable as a string, or ``default`` when unset or empty."""
    value = _raw(name, environ)
    return value if value else default


def env_bool(
    name: str, default: bool = False, environ: Mapping[str, str] | None = None
) -> bool:
    """Return the variable as a boolean (1/0, true/false, yes/no, on/off)."""
    value = _raw(name, environ)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(
        f"{name}={value!r} is not a boolean; use one of 1/0, true/false, "
        "yes/no, on/off."
    )


def env_int(
    name: str,
    default: int,
    environ: Mapping[str, str] | None = None,
    *,
    minimum: int | None = None,
) -> int:
    """Return the variable as an integer, optionally no less than ``minimum``."""
    value = _raw(name, environ)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer.") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number} is below the minimum {minimum}.")
    return number


def env_list(
    name: str, default: list[str], environ: Mapping[str, str] | None = None
) -> list[str]:
    """Return a comma-separated variable as a list of non-empty items."""
    value = _raw(name, environ)
    if value is None:
        return list(default)
    items = [item.strip() for item in value.split(",")]
    if any(not item for item in items) and value:
        raise ImproperlyConfigured(
            f"{name}={value!r} has an empty item; separate values with single commas."
        )
    return [item for item in items if item]


def env_choice(
    name: str,
    default: str,
    choices: tuple[str, ...],
    environ: Mapping[str, str] | None = None,
) -> str:
    """Return the variable, which must be one of ``choices``."""
    value = env_str(name, default, environ)
    if value not in choices:
        raise ImproperlyConfigured(
            f"{name}={value!r} is not one of {', '.join(choices)}."
        )
    return value


def parse_database_url(url: str, base_dir: Path) -> dict[str, Any]:
    """Return a Django ``DATABASES`` entry for a postgres or sqlite URL.

    ``postgresql://user:password@host:5432/name?sslmode=require`` maps query
    parameters to ``OPTIONS``; ``sqlite:///relative/path`` is relative to
    ``base_dir`` and ``sqlite:////absolute/path`` is absolute.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("postgres", "postgresql"):
        name = unquote(parts.path.lstrip("/"))
        if not name or "/" in name:
            raise ImproperlyConfigured(
                "DATABASE_URL must name exactly one database, as in "
                "postgresql://user@host:5432/agentmatic."
            )
        try:
            port = parts.port
        except ValueError:
            raise ImproperlyConfigured("DATABASE_URL has an invalid port.") from None
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(port or ""),
            "OPTIONS": dict(parse_qsl(parts.query)),
        }
    if scheme == "sqlite":
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": _sqlite_path(
                url, parts.netloc, parts.path, base_dir, "DATABASE_URL"
            ),
        }
    # Never echo the URL itself: it may carry a password.
    raise ImproperlyConfigured(
        f"DATABASE_URL has the unsupported scheme {scheme!r}; "
        "use postgresql://… or sqlite:///…."
    )


def _sqlite_path(url: str, netloc: str, path: str, base_dir: Path, name: str) -> str:
    if netloc or not path.startswith("/") or path == "/":
        raise ImproperlyConfigured(
            f"{name}={url!r} is not a SQLite URL; write sqlite:///relative/path "
            "or sqlite:////absolute/path."
        )
    relative = unquote(path[1:])
    return str(Path(relative) if relative.startswith("/") else base_dir / relative)


@dataclass(frozen=True)
class CheckpointStore:
    """Where the console reads and writes checkpoints.

    ``kind`` is one of memory, sqlite, postgresql, redis, s3; ``location`` is
    the SQLite path, the connection URL, or the bucket; ``prefix`` is the S3
    key prefix.
    """

    kind: str
    location: str
    prefix: str = ""


def parse_checkpoint_url(url: str, base_dir: Path) -> CheckpointStore:
    """Return the checkpoint store named by an ``AGENTMATIC_CHECKPOINTS`` URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "memory":
        return CheckpointStore("memory", "")
    if scheme == "sqlite":
        path = _sqlite_path(
            url, parts.netloc, parts.path, base_dir, "AGENTMATIC_CHECKPOINTS"
        )
        return CheckpointStore("sqlite", path)
    if scheme in ("postgres", "postgresql"):
        if not parts.path.strip("/"):
            raise ImproperlyConfigured(
                "AGENTMATIC_CHECKPOINTS must name a database, as in "
                "postgresql://user@host:5432/agentmatic."
            )
        return CheckpointStore("postgresql", url)
    if scheme in ("redis", "rediss"):
        if not parts.hostname:
            raise ImproperlyConfigured(
                "AGENTMATIC_CHECKPOINTS must name a Redis host, as in "
                "redis://localhost:6379/0."
            )
        return CheckpointStore("redis", url)
    if scheme == "s3":
        if not parts.netloc:
            raise ImproperlyConfigured(
                f"AGENTMATIC_CHECKPOINTS={url!r} names no bucket; write "
                "s3://bucket/prefix."
            )
        return CheckpointStore("s3", parts.netloc, parts.path.strip("/"))
    raise ImproperlyConfigured(
        f"AGENTMATIC_CHECKPOINTS has the unsupported scheme {scheme!r}; use "
        "sqlite:///…, postgresql://…, redis://…, s3://bucket/prefix or memory://."
    )


def read_or_create_secret(path: Path) -> str:
    """Return the secret stored at ``path``, creating it on first use.

    The key is written to a private temporary file and hard-linked into
    place, so two processes starting at once agree on one complete key
    instead of one reading the other's half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".secret-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(secrets.token_urlsafe(64) + "\n")
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(temporary)
    secret = path.read_text(encoding="utf-8").strip()
    if len(secret) < 50:
        raise ImproperlyConfigured(
            f"{path} holds no usable secret key; delete it to have a new one "
            "generated, or set DJANGO_SECRET_KEY."
        )
    return secret


def parse_archive_url(url: str) -> tuple[str, str] | None:
    """Return ``(bucket, prefix)`` of an ``AGENTMATIC_ARCHIVE`` URL; None if unset."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme.lower() != "s3" or not parts.netloc:
        raise ImproperlyConfigured(
            f"AGENTMATIC_ARCHIVE={url!r} is not an S3 archive; write "
            "s3://bucket/prefix."
        )
    return parts.netloc, parts.path.strip("/")
