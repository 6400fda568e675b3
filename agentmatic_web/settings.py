"""Django settings for the Agentmatic console.

Everything that differs between a laptop and a deployment comes from the
environment through the helpers in ``agentmatic_web.env``, which refuse
malformed values. With no environment at all the console runs on embedded
defaults: SQLite for Django and for checkpoints under ``.data/``, the
in-memory channel layer, and runs executed inside the server process.
"""

from pathlib import Path

from agentmatic_web.env import (
    env_bool,
    env_choice,
    env_int,
    env_list,
    env_str,
    parse_archive_url,
    parse_checkpoint_url,
    parse_database_url,
    read_or_create_secret,
)

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("AGENTMATIC_DATA_DIR", str(BASE_DIR / ".data"))).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

# Off unless asked for: the command that starts the embedded demo sets it.
DEBUG = env_bool("DJANGO_DEBUG", False)

SECRET_KEY = env_str("DJANGO_SECRET_KEY")
# Recorded so a system check can warn when a deployment relies on the
# generated per-machine key.
SECRET_KEY_FROM_FILE = not SECRET_KEY
if SECRET_KEY_FROM_FILE:
    SECRET_KEY = read_or_create_secret(DATA_DIR / "secret_key")

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    # daphne first: its runserver serves HTTP and WebSockets from one process.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "channels",
    "agentmatic_web",
    "runs",
    "approvals",
    "checkpoints",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "agentmatic_web.middleware.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "agentmatic_web.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "agentmatic_web.urls"
WSGI_APPLICATION = "agentmatic_web.wsgi.application"
ASGI_APPLICATION = "agentmatic_web.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

_database_url = env_str("DATABASE_URL")
if _database_url:
    _database = parse_database_url(_database_url, BASE_DIR)
else:
    _database = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(DATA_DIR / "console.sqlite3"),
    }
_database["CONN_MAX_AGE"] = env_int("DJANGO_CONN_MAX_AGE", 0, minimum=0)
_database["CONN_HEALTH_CHECKS"] = _database["CONN_MAX_AGE"] > 0
DATABASES = {"default": _database}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Agentmatic -----------------------------------------------------------

# The checkpoint store the console reads and the runner writes; a URL:
# sqlite:///relative/path, sqlite:////absolute/path, postgresql://…,
# redis://…, s3://bucket/prefix, or memory:// (tests only).
AGENTMATIC_CHECKPOINTS = env_str(
    "AGENTMATIC_CHECKPOINTS", "sqlite:///.data/checkpoints.sqlite"
)
AGENTMATIC_CHECKPOINT_STORE = parse_checkpoint_url(AGENTMATIC_CHECKPOINTS, BASE_DIR)

# Where retention policies with "archive to S3" copy checkpoints before
# deleting them: s3://bucket/prefix (credentials from boto3's usual
# environment). Unset: such policies are not applied.
AGENTMATIC_ARCHIVE = parse_archive_url(env_str("AGENTMATIC_ARCHIVE", ""))

# Extra SQLite checkpoint files (LangGraph's or Agentmatic's) shown read-only.
AGENTMATIC_READONLY_FILES = [
    str((BASE_DIR / path).resolve())
    for path in env_list("AGENTMATIC_READONLY_FILES", [])
]

# Where runs execute: "thread" runs them in a pool inside the server
# process (embedded default); "celery" hands them to Celery workers.
AGENTMATIC_RUNNER = env_choice("AGENTMATIC_RUNNER", "thread", ("thread", "celery"))
AGENTMATIC_RUNNER_THREADS = env_int("AGENTMATIC_RUNNER_THREADS", 4)

# The agents the console can run and resume, by name: "module:factory", where
# the factory takes a checkpoint saver and returns a built Agent.
AGENTMATIC_AGENTS = {"payments": "approvals.demo:build_payments_agent"}

# --- Channels and Celery --------------------------------------------------

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "memory://")
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND") or None
CELERY_TASK_ALWAYS_EAGER = False
# A run may last minutes: a worker takes one task at a time and acknowledges
# it only when done, so a crashed worker's run is redelivered and resumed
# from its last checkpoint.
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]

# --- Auth, API and security -----------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": f"django.contrib.auth.password_validation.{name}"}
    for name in (
        "UserAttributeSimilarityValidator",
        "MinimumLengthValidator",
        "CommonPasswordValidator",
        "NumericPasswordValidator",
    )
]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

REST_FRAMEWORK = {
    # Token first, so an unauthenticated request gets 401 with a
    # WWW-Authenticate header rather than a bare 403.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Agentmatic console API",
    "DESCRIPTION": "Threads, history, approvals and forks of Agentmatic runs.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    # One name for a decision's kind, asked for (decision) or answered (kind).
    "ENUM_NAME_OVERRIDES": {"DecisionKindEnum": "approvals.models.DecisionKind"},
}

SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
# The small script reads the token from a <meta> tag, never from the cookie.
CSRF_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# Off by default because the embedded console is served over plain HTTP on
# localhost; a deployment behind TLS turns these on.
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", False)
if env_bool("DJANGO_BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Internationalisation and static files --------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("DJANGO_STATIC_ROOT", str(DATA_DIR / "static")))

# --- Logging --------------------------------------------------------------

LOG_LEVEL = env_choice(
    "AGENTMATIC_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")
)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    # Each module logs through logging.getLogger(__name__); these parents
    # set the level for all of them.
    "loggers": {
        name: {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False}
        for name in ("agentmatic", "agentmatic_web", "runs", "approvals", "checkpoints")
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
}
