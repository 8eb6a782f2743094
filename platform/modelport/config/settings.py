"""Modelport settings, read from the environment (see README "Configuration").

MODELPORT_ENV selects the posture: "development" (the default for `make run` and tests) allows
insecure defaults; "production" requires SECRET_KEY and DATABASE_URL and refuses DEBUG.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from modelport.config.env import env_bool, env_float, env_int, env_list, env_str, env_url

REPO_ROOT = Path(__file__).resolve().parents[3]

VAR_DIR = Path(env_str("MODELPORT_VAR_DIR", str(REPO_ROOT / "var")))

MODELPORT_ENV = env_str("MODELPORT_ENV", "development")
if MODELPORT_ENV not in {"development", "production"}:
    raise ImproperlyConfigured(f"MODELPORT_ENV={MODELPORT_ENV!r} must be development or production")
DEVELOPMENT = MODELPORT_ENV == "development"

DEBUG = env_bool("MODELPORT_DEBUG", False)
if DEBUG and not DEVELOPMENT:
    raise ImproperlyConfigured("MODELPORT_DEBUG=1 is refused with MODELPORT_ENV=production")

if DEVELOPMENT:
    SECRET_KEY = env_str("SECRET_KEY", "dev-only-insecure-secret-key-change-me-0123456789abcdef")
else:
    SECRET_KEY = env_str("SECRET_KEY")
    if len(SECRET_KEY) < 32:
        raise ImproperlyConfigured("SECRET_KEY must be at least 32 characters")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "modelport.accounts",
    "modelport.billing",
    "modelport.registry",
    "modelport.gateway",
    "modelport.dashboard",
    "modelport.ops",
]

MIDDLEWARE = [
    # First: everything below logs with the request id and is counted (both async-capable).
    "modelport.common.logging.RequestLogMiddleware",
    "modelport.ops.middleware.MetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "modelport.common.errors.JsonErrorsMiddleware",
]

ROOT_URLCONF = "modelport.config.urls"
ASGI_APPLICATION = "modelport.config.asgi.application"
WSGI_APPLICATION = "modelport.config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [REPO_ROOT / "frontend" / "templates"],
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

_default_db = f"sqlite:///{VAR_DIR / 'modelport.sqlite3'}" if DEVELOPMENT else None
_database_url = env_str("DATABASE_URL", _default_db) if _default_db else env_str("DATABASE_URL")
if _database_url == _default_db:
    VAR_DIR.mkdir(exist_ok=True)
try:
    # Persistent connections without a per-request health check (a `SELECT 1` round trip on every
    # call): a connection that fails is marked and replaced at the next close_old_connections().
    DATABASES = {"default": dj_database_url.parse(_database_url, conn_max_age=60, conn_health_checks=False)}
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a database URL: {exc}") from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # SQLite serializes writers; a busy timeout makes concurrent web/worker writes wait, not fail.
    DATABASES["default"]["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
    DATABASES["default"]["CONN_MAX_AGE"] = 0

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [REPO_ROOT / "frontend" / "static"]
STATIC_ROOT = VAR_DIR / "static"
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"

# --- Redis, Celery ----------------------------------------------------------------------------
REDIS_URL = env_url("REDIS_URL", "redis://127.0.0.1:6379/0", schemes=("redis", "rediss", "unix"))
# Every key the data plane writes starts with this prefix, so several deployments (or test runs)
# can share one Redis server.
MODELPORT_REDIS_PREFIX = env_str("MODELPORT_REDIS_PREFIX", "mp")

CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("MODELPORT_CONVERT_VISIBILITY_S", 3600)}
CELERY_TASK_DEFAULT_QUEUE = f"{MODELPORT_REDIS_PREFIX}.convert"
# Conversion (minutes, CPU-heavy) and control (load/unload, reaping) never share a queue with
# each other; inference itself does not travel through Celery at all (see gateway/dispatch.py).
CELERY_QUEUE_CONVERT = f"{MODELPORT_REDIS_PREFIX}.convert"
CELERY_QUEUE_CONTROL = f"{MODELPORT_REDIS_PREFIX}.control"
# Webhook deliveries wait on other people's servers: they have a worker of their own, off the
# serving workers (which consume control) and the conversion worker.
CELERY_QUEUE_WEBHOOKS = f"{MODELPORT_REDIS_PREFIX}.webhooks"
CELERY_TASK_ROUTES = {
    # An exact name is matched before the patterns below.
    "modelport.gateway.tasks.webhook_deliver": {"queue": CELERY_QUEUE_WEBHOOKS},
    "modelport.registry.tasks.*": {"queue": CELERY_QUEUE_CONVERT},
    "modelport.gateway.tasks.*": {"queue": CELERY_QUEUE_CONTROL},
    "modelport.billing.tasks.*": {"queue": CELERY_QUEUE_CONTROL},
    "modelport.ops.tasks.*": {"queue": CELERY_QUEUE_CONTROL},
}
CELERY_BEAT_SCHEDULE = {
    "reap-predictions": {
        "task": "modelport.gateway.tasks.predictions_reap",
        "schedule": 15.0,
    },
    "expire-outputs": {
        "task": "modelport.gateway.tasks.outputs_expire",
        "schedule": 3600.0,
    },
    "reap-versions": {
        "task": "modelport.registry.tasks.versions_reap",
        "schedule": 60.0,
    },
    "sync-disabled-versions": {
        "task": "modelport.ops.tasks.disabled_versions_sync",
        "schedule": 30.0,
    },
}
# Celery keeps the LOGGING below (JSON, request ids) instead of installing its own root handler.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# --- Modelport ----------------------------------------------------------------------------------
MODELPORT_ARTIFACT_ROOT = Path(env_str("MODELPORT_ARTIFACT_ROOT", str(VAR_DIR / "artifacts")))
MODELPORT_MAX_UPLOAD_BYTES = env_int("MODELPORT_MAX_UPLOAD_MB", 512, minimum=1) * 1024 * 1024
MODELPORT_MAX_REQUEST_BYTES = env_int("MODELPORT_MAX_REQUEST_MB", 16, minimum=1) * 1024 * 1024
MODELPORT_MAX_TENSOR_ELEMENTS = env_int("MODELPORT_MAX_TENSOR_ELEMENTS", 16_000_000, minimum=1)
DATA_UPLOAD_MAX_MEMORY_SIZE = MODELPORT_MAX_REQUEST_BYTES
FILE_UPLOAD_MAX_MEMORY_SIZE = 4 * 1024 * 1024
FILE_UPLOAD_TEMP_DIR = None

# Per-account upload throttle (registry.services.upload_admit): versions queued, validating or
# converting at once, and uploads per window (`limits` notation). Beyond either: 429.
MODELPORT_UPLOAD_MAX_IN_PROGRESS = env_int("MODELPORT_UPLOAD_MAX_IN_PROGRESS", 3, minimum=1)
MODELPORT_UPLOAD_RATE_LIMIT = env_str("MODELPORT_UPLOAD_RATE_LIMIT", "10/minute;100/hour")
MODELPORT_SIGNUP_CREDITS = env_int("MODELPORT_SIGNUP_CREDITS", 50_000, minimum=0)
# What a public model's owner may ask per call of others, and how long callers are given before
# an increase applies (decreases apply at once); both shown in the model's metadata.
MODELPORT_MAX_ROYALTY_CREDITS = env_int("MODELPORT_MAX_ROYALTY_CREDITS", 100, minimum=0)
MODELPORT_ROYALTY_NOTICE_S = env_float("MODELPORT_ROYALTY_NOTICE_S", 86_400.0, minimum=0.0)
# Default and maximum time a call may wait for a worker plus run, in seconds.
MODELPORT_CALL_DEADLINE_S = env_float("MODELPORT_CALL_DEADLINE_S", 30.0, minimum=0.1)
# A worker whose heartbeat is older than this is not routed to.
MODELPORT_WORKER_STALE_S = env_float("MODELPORT_WORKER_STALE_S", 15.0, minimum=1.0)
MODELPORT_HEARTBEAT_S = env_float("MODELPORT_HEARTBEAT_S", 2.0, minimum=0.1)
MODELPORT_VALIDATION_TIMEOUT_S = env_int("MODELPORT_VALIDATION_TIMEOUT_S", 600, minimum=1)
MODELPORT_ALLOW_UNSANDBOXED = env_bool("MODELPORT_ALLOW_UNSANDBOXED", False)
# A converted model bigger than this keeps its tensors in an external data file beside the .onnx
# (protobuf cannot hold a file over 2 GiB). Lower it only to exercise that path with small models.
MODELPORT_ONNX_EXTERNAL_DATA_OVER_BYTES = env_int("MODELPORT_ONNX_EXTERNAL_DATA_OVER_BYTES", 1_900_000_000,
                                                  minimum=0)
if MODELPORT_ALLOW_UNSANDBOXED and not DEVELOPMENT:
    raise ImproperlyConfigured("MODELPORT_ALLOW_UNSANDBOXED=1 is refused with MODELPORT_ENV=production")
# Webhooks (gateway/webhooks.py). Private/loopback targets only in development, for local receivers.
MODELPORT_WEBHOOK_ALLOW_PRIVATE = env_bool("MODELPORT_WEBHOOK_ALLOW_PRIVATE", False)
if MODELPORT_WEBHOOK_ALLOW_PRIVATE and not DEVELOPMENT:
    raise ImproperlyConfigured("MODELPORT_WEBHOOK_ALLOW_PRIVATE=1 is refused with MODELPORT_ENV=production")
MODELPORT_WEBHOOK_MAX_ATTEMPTS = env_int("MODELPORT_WEBHOOK_MAX_ATTEMPTS", 6, minimum=1)
MODELPORT_WEBHOOK_BACKOFF_S = env_float("MODELPORT_WEBHOOK_BACKOFF_S", 5.0, minimum=0.0)
# Bounds a whole delivery attempt (resolve, connect, send, read at most 64 KiB of the reply).
MODELPORT_WEBHOOK_TIMEOUT_S = env_float("MODELPORT_WEBHOOK_TIMEOUT_S", 10.0, minimum=0.1)
# Outputs stay retrievable this long, so a failed webhook never loses a result.
MODELPORT_OUTPUT_RETENTION_H = env_float("MODELPORT_OUTPUT_RETENTION_H", 168.0, minimum=0.0)
# Default per-API-key request rate ("N/second;M/minute", the `limits` library's notation).
MODELPORT_RATE_LIMIT = env_str("MODELPORT_RATE_LIMIT", "100/second;3000/minute")
# bench/ only: admit and settle calls without holds or charges, to measure metering's share.
MODELPORT_BENCH_DISABLE_METERING = env_bool("MODELPORT_BENCH_DISABLE_METERING", False)
if MODELPORT_BENCH_DISABLE_METERING and not DEVELOPMENT:
    raise ImproperlyConfigured("MODELPORT_BENCH_DISABLE_METERING is a benchmark setting, refused in production")
MODELPORT_HOST_MEMORY_BUDGET_MB = env_int("MODELPORT_HOST_MEMORY_BUDGET_MB", 4096, minimum=1)
# Threads per web process for the blocking part of a call (one database connection each). Few:
# they contend for one GIL, and a call's wait for its worker holds none. Measured here (2 cores,
# wrk c=32, alternating runs): 4 threads 520/535 req/s, 8 483/468, 16 478/432, 2 405/437.
MODELPORT_WEB_THREADS = env_int("MODELPORT_WEB_THREADS", min(32, max(4, 2 * (os.cpu_count() or 1))), minimum=1)
MODELPORT_SESSION_THREADS = env_int("MODELPORT_SESSION_THREADS", 1, minimum=0)
# Memory limit (its memory cgroup) of one torch-runtime model process; it counts against the budget.
MODELPORT_TORCH_MEMORY_MB = env_int("MODELPORT_TORCH_MEMORY_MB", 2048, minimum=64)

# --- Operations (modelport.ops) -------------------------------------------------------------------
# /metrics on the web listener answers staff sessions, staff API keys and this bearer token
# (for Prometheus). Empty: no token accepted.
MODELPORT_METRICS_TOKEN = env_str("MODELPORT_METRICS_TOKEN", "")
if MODELPORT_METRICS_TOKEN and len(MODELPORT_METRICS_TOKEN) < 32:
    raise ImproperlyConfigured("MODELPORT_METRICS_TOKEN must be at least 32 characters")
# Serving workers' own metrics endpoint (ops.metrics.worker_metrics_start); 0 = off. Bind it to
# a private address only (in compose: 0.0.0.0 inside the stack network, port not published).
MODELPORT_WORKER_METRICS_PORT = env_int("MODELPORT_WORKER_METRICS_PORT", 0, minimum=0)
MODELPORT_WORKER_METRICS_ADDR = env_str("MODELPORT_WORKER_METRICS_ADDR", "127.0.0.1")
MODELPORT_LOG_JSON = env_bool("MODELPORT_LOG_JSON", False)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "modelport.accounts.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "modelport.common.parsers.JSONParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "EXCEPTION_HANDLER": "modelport.common.problems.drf_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Modelport API",
    "DESCRIPTION": "Upload PyTorch/ONNX models and call them as a metered API.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The native prediction-create endpoints and the V2 endpoints are async views the generator
    # cannot see.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "modelport.accounts.schema.native_prediction_paths",
        "modelport.accounts.schema.v2_paths",
    ],
    # A version's `runtime` (what serves it) and an upload's `runtime` (what is asked for) are two
    # choice sets with one field name.
    "ENUM_NAME_OVERRIDES": {
        "VersionRuntimeEnum": "modelport.registry.models.ModelVersion.Runtime",
        "RequestedRuntimeEnum": "modelport.registry.models.ModelVersion.RequestedRuntime",
    },
    # Swagger UI and ReDoc from the installed sidecar package: nothing loads from a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "modelport.common.logging.RequestIdFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {"()": "modelport.common.logging.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "filters": ["request_id"],
                             "formatter": "json" if MODELPORT_LOG_JSON else "plain"}},
    "root": {"handlers": ["console"], "level": env_str("MODELPORT_LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
