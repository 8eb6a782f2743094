"""Settings for the test suite: real Postgres and Redis on loopback, a private artifact root and a
private Redis key prefix, so a test run never touches another run's data. The worker processes
the tests start inherit these variables (see tests/stack.py)."""

import os
import tempfile

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/modelport")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/12")
os.environ.setdefault("MODELPORT_REDIS_PREFIX", f"mptest{os.getpid()}")
os.environ.setdefault("MODELPORT_ARTIFACT_ROOT", tempfile.mkdtemp(prefix="mp-test-artifacts-"))
os.environ.setdefault("MODELPORT_CALL_DEADLINE_S", "20")
os.environ.setdefault("MODELPORT_HEARTBEAT_S", "0.5")
os.environ.setdefault("MODELPORT_WEBHOOK_ALLOW_PRIVATE", "1")  # the tests' receivers listen on loopback
os.environ.setdefault("MODELPORT_WEBHOOK_BACKOFF_S", "0.3")
os.environ.setdefault("MODELPORT_WEBHOOK_MAX_ATTEMPTS", "3")
os.environ.setdefault("MODELPORT_WEBHOOK_TIMEOUT_S", "2")
os.environ.setdefault("MODELPORT_RATE_LIMIT", "1000/second")
# Tests upload freely; tests/integration/test_upload_admission.py runs a web process with small limits.
os.environ.setdefault("MODELPORT_UPLOAD_MAX_IN_PROGRESS", "100")
os.environ.setdefault("MODELPORT_UPLOAD_RATE_LIMIT", "1000/minute")

from modelport.config.settings import *  # noqa: F403

# One test database per pytest process, so concurrent runs on one machine never collide.
DATABASES["default"]["TEST"] = {"NAME": f"test_modelport_{os.getpid()}"}  # noqa: F405
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
