"""The container stack (docker-compose.yml, deploy/Dockerfile*, deploy/prometheus.yml) checked
against the code it runs, without a Docker engine.

The compose file is parsed with PyYAML and interpolated here the way Compose does (`${VAR}`,
`${VAR:-default}`, `${VAR:?error}`, `$$`). Settings, the Celery app, the ASGI application and
the CLIs' options are checked by running Python in subprocesses with each service's environment
(plus the Dockerfile's ENV, with /app mapped to this checkout), so a change in the code that the
stack no longer matches fails here. When the `docker compose` plugin is installed,
`docker compose config -q` validates the file against the Compose specification as well.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERFILE_GPU = REPO / "deploy" / "Dockerfile.gpu"
PROMETHEUS = REPO / "deploy" / "prometheus.yml"
ENTRYPOINT = REPO / "deploy" / "entrypoint.sh"
SETTINGS = REPO / "platform" / "modelport" / "config" / "settings.py"

SERVICES = {"postgres", "redis", "migrate", "web", "worker-convert", "worker-cpu", "worker-gpu", "worker-webhooks",
            "beat", "prometheus"}
APP_SERVICES = {"migrate", "web", "worker-convert", "worker-cpu", "worker-gpu", "worker-webhooks", "beat"}
WORKERS = {"worker-convert", "worker-cpu", "worker-gpu", "worker-webhooks"}
SERVE_WORKERS = {"worker-cpu", "worker-gpu"}
# What an operator must at least provide; 50 characters passes settings' length check.
BASE_ENV = {"SECRET_KEY": "k" * 50}
APP_ROOT = "/app"  # WORKDIR in the images


# --------------------------------------------------------------------------------------------
# Compose interpolation and loading

_VAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?$", re.S)


class MissingVariable(Exception):
    pass


def interpolate(text: str, env: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            return env.get(match["named"], "")
        braced = _BRACED.match(match["braced"])
        assert braced, f"unsupported interpolation ${{{match['braced']}}}"
        name, op, arg = braced["name"], braced["op"], braced["arg"] or ""
        value = env.get(name)
        if op is None:
            return value or ""
        if op in (":-", "-"):
            return value if (value if op == ":-" else value is not None) else interpolate(arg, env)
        if op in (":?", "?"):
            if not (value if op == ":?" else value is not None):
                raise MissingVariable(f"{name}: {arg}")
            return value or ""
        return interpolate(arg, env) if (value if op == ":+" else value is not None) else ""

    return _VAR.sub(one, text)


def _walk(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_walk(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _walk(value, env) for key, value in node.items()}
    return node


@cache
def _raw() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())  # resolves anchors and << merge keys like Compose
    assert isinstance(data, dict)
    return data


def load(env: dict[str, str] | None = None) -> dict[str, Any]:
    return _walk(_raw(), dict(BASE_ENV if env is None else env))


def services(env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    return load(env)["services"]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {key: "" if value is None else str(value) for key, value in raw.items()}


def argv_of(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return list(command) if isinstance(command, list) else shlex.split(command)


def option(argv: list[str], *names: str) -> str | None:
    for i, token in enumerate(argv):
        if token in names:
            return argv[i + 1]
        for name in names:
            if name.startswith("--") and token.startswith(name + "="):
                return token.split("=", 1)[1]
    return None


def named_volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> named volume source."""
    mounts = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        if source and not source.startswith((".", "/", "~")):
            mounts[target] = source
    return mounts


def published(service: dict[str, Any]) -> list[str]:
    return [str(port) if not isinstance(port, dict) else json.dumps(port) for port in service.get("ports") or []]


# --------------------------------------------------------------------------------------------
# Dockerfiles and requirements


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, rest = current.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    return instructions


def docker_env(path: Path) -> dict[str, str]:
    env = {}
    for keyword, rest in dockerfile(path):
        if keyword == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def runs(path: Path) -> list[str]:
    return [rest for keyword, rest in dockerfile(path) if keyword == "RUN"]


def requirement_pins(path: Path = REPO / "requirements.txt") -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^\s;#]+)", line.strip())
        if match:
            pins[match[1].lower()] = match[2]
    return pins


# --------------------------------------------------------------------------------------------
# Probing the code in subprocesses, with a service's environment

_PROBE = r"""
import fnmatch, importlib, json, sys
spec = json.loads(sys.argv[1])
out = {}
try:
    import django
    django.setup()
    from django.conf import settings
    from django.http.request import validate_host
    from django.urls import resolve
    db = settings.DATABASES["default"]
    out["db"] = {k: db.get(k) for k in ("ENGINE", "HOST", "PORT", "NAME", "USER")}
    out["settings"] = {k: str(getattr(settings, k)) for k in (
        "REDIS_URL", "CELERY_BROKER_URL", "CELERY_QUEUE_CONVERT", "CELERY_QUEUE_CONTROL",
        "CELERY_QUEUE_WEBHOOKS",
        "CELERY_TASK_DEFAULT_QUEUE", "MODELPORT_ARTIFACT_ROOT", "MODELPORT_REDIS_PREFIX", "DEBUG")}
    out["hosts"] = {h: validate_host(h, settings.ALLOWED_HOSTS) for h in spec["hosts"]}
    out["paths"] = {}
    for path in spec["paths"]:
        try:
            resolve(path)
            out["paths"][path] = True
        except Exception:
            out["paths"][path] = False
    mod_name, attr = spec["asgi"].split(":")
    out["asgi_callable"] = callable(getattr(importlib.import_module(mod_name), attr))
    config = importlib.import_module(spec["celery_module"])
    app = getattr(config, "celery_app", None)
    out["has_celery_app"] = app is not None
    out["worker_user_options"] = [o for opt in app.user_options["worker"] for o in opt.opts]
    app.loader.import_default_modules()
    routes = settings.CELERY_TASK_ROUTES
    def queue_of(task):
        for pattern, route in routes.items():
            if fnmatch.fnmatchcase(task, pattern):
                return route["queue"]
        return settings.CELERY_TASK_DEFAULT_QUEUE
    out["task_queues"] = {t: queue_of(t) for t in app.tasks if not t.startswith("celery.")}
    out["beat_tasks"] = sorted(entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values())
except Exception as exc:
    import traceback
    out["error"] = traceback.format_exc()
print(json.dumps(out))
"""


def process_env(service_env: dict[str, str], dockerfile_path: Path = DOCKERFILE) -> dict[str, str]:
    """The environment a container process gets: the image's ENV, then the service's environment;
    /app paths point at this checkout. Nothing of this test process's environment leaks in."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    for key, value in {**docker_env(dockerfile_path), **service_env}.items():
        if key == "PYTHONPATH":
            value = os.pathsep.join(str(REPO / Path(p).relative_to(APP_ROOT)) for p in value.split(":"))
        env[key] = value
    return env


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)


_probe_failure: list[BaseException] = []


def probes() -> dict[str, Any]:
    """`_probes()`, whose failure is reported once and then re-raised without re-running it."""
    if _probe_failure:
        raise AssertionError(f"probe failed earlier: {_probe_failure[0]}")
    try:
        return _probes()
    except BaseException as exc:
        _probe_failure.append(exc)
        raise


@cache
def _probes() -> dict[str, Any]:
    """Per app service (and once more with another Redis prefix): what the code computes with
    that service's environment; plus the CLIs' --help texts."""
    web_argv = argv_of(services()["web"])
    spec = {
        "hosts": ["127.0.0.1", "web"],
        "paths": ["/healthz", "/readyz", "/metrics"],
        "asgi": web_argv[web_argv.index("uvicorn") + 1],
        "celery_module": option(argv_of(services()["worker-cpu"]), "-A", "--app"),
    }
    # Services whose processes get the same environment share one probe (this is CPU-bound).
    probe_envs: dict[str, dict[str, str]] = {}
    for name in sorted(APP_SERVICES):
        path = DOCKERFILE_GPU if name == "worker-gpu" else DOCKERFILE
        probe_envs[name] = process_env(env_of(services()[name]), path)
    other = services({**BASE_ENV, "MODELPORT_REDIS_PREFIX": "acme"})
    probe_envs["prefix:acme"] = process_env(env_of(other["worker-cpu"]))
    distinct: dict[str, str] = {}  # env as JSON -> first name probing it
    for name, env in probe_envs.items():
        distinct.setdefault(json.dumps(env, sort_keys=True), name)
    jobs: dict[str, tuple[list[str], dict[str, str]]] = {
        name: ([sys.executable, "-c", _PROBE, json.dumps(spec)], probe_envs[name]) for name in distinct.values()
    }
    plain = probe_envs["worker-cpu"]
    jobs["help:celery-worker"] = (
        [sys.executable, "-m", "celery", "-A", spec["celery_module"], "worker", "--help"],
        plain,
    )
    jobs["help:celery-beat"] = ([sys.executable, "-m", "celery", "-A", spec["celery_module"], "beat", "--help"], plain)
    jobs["help:uvicorn"] = ([sys.executable, "-m", "uvicorn", "--help"], plain)
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        done = dict(zip(jobs, pool.map(lambda job: _run(*job), jobs.values()), strict=True))
    results: dict[str, Any] = {}
    for name, proc in done.items():
        assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        if name.startswith("help:"):
            results[name] = proc.stdout
        else:
            results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
            assert "error" not in results[name], f"{name}: the code refuses this environment:\n{results[name]['error']}"
    for name, env in probe_envs.items():
        results[name] = results[distinct[json.dumps(env, sort_keys=True)]]
    return results


def settings_env_reads() -> tuple[set[str], set[str]]:
    """(names settings.py reads through env_* helpers, names it requires: called with no default)."""
    read, required = set(), set()
    for node in ast.walk(ast.parse(SETTINGS.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id.startswith("env_")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            read.add(node.args[0].value)
            if len(node.args) == 1 and not any(k.arg == "default" for k in node.keywords):
                required.add(node.args[0].value)
    return read, required


def queue_of_worker(argv: list[str]) -> list[str]:
    value = option(argv, "-Q", "--queues")
    assert value, f"worker without -Q: {argv}"
    return value.split(",")


# --------------------------------------------------------------------------------------------
# Services, environment, settings


def test_service_set_and_profiles() -> None:
    svc = services()
    assert set(svc) == SERVICES
    assert svc["worker-gpu"].get("profiles") == ["gpu"]
    assert svc["prometheus"].get("profiles") == ["monitoring"]
    for name in SERVICES - {"worker-gpu", "prometheus"}:
        assert not svc[name].get("profiles"), f"{name} must start with a plain `docker compose up`"


def test_secret_key_is_required_by_compose() -> None:
    with pytest.raises(MissingVariable, match="SECRET_KEY"):
        load({})
    assert "${SECRET_KEY:?" in _raw()["x-app-env"]["SECRET_KEY"]


def test_shared_environment_is_an_extension_field() -> None:
    shared = _raw()["x-app-env"]
    for name in APP_SERVICES:
        service_env = _raw()["services"][name]["environment"]
        assert service_env.items() >= shared.items(), f"{name} does not carry x-app-env"


def test_every_required_setting_is_set_for_every_app_service() -> None:
    _, required = settings_env_reads()
    assert {"SECRET_KEY", "DATABASE_URL"} <= required, required  # the AST scan still sees them
    for name in APP_SERVICES:
        env = env_of(services()[name])
        assert env.get("MODELPORT_ENV") == "production", name
        missing = {var for var in required if not env.get(var)}
        assert not missing, f"{name} lacks {missing}"


def test_environment_names_are_ones_the_code_reads() -> None:
    """A misspelt variable would be silently ignored; every name must be read somewhere."""
    read, _ = settings_env_reads()
    read |= {"DJANGO_SETTINGS_MODULE", "PYTHONUNBUFFERED", "PYTHONPATH"}
    for name in APP_SERVICES:
        unknown = set(env_of(services()[name])) - read
        assert not unknown, f"{name} sets variables nothing reads: {unknown}"


def test_settings_load_in_production_for_every_app_service() -> None:
    results = probes()
    for name in APP_SERVICES:
        assert results[name]["settings"]["DEBUG"] == "False", name


def test_database_url_points_at_the_postgres_service() -> None:
    svc = services()
    pg_env = env_of(svc["postgres"])
    for name in APP_SERVICES:
        url = urlparse(env_of(svc[name])["DATABASE_URL"])
        assert url.scheme in {"postgres", "postgresql"}
        assert url.hostname == "postgres" and (url.port or 5432) == 5432, name
        assert url.username == pg_env["POSTGRES_USER"], name
        assert url.password == pg_env["POSTGRES_PASSWORD"], name
        assert url.path.lstrip("/") == pg_env["POSTGRES_DB"], name
        db = probes()[name]["db"]
        assert db["ENGINE"] == "django.db.backends.postgresql", name
        assert (db["HOST"], int(db["PORT"]), db["NAME"], db["USER"]) == (
            "postgres",
            5432,
            pg_env["POSTGRES_DB"],
            pg_env["POSTGRES_USER"],
        ), name
    # The password follows POSTGRES_PASSWORD on both sides.
    changed = services({**BASE_ENV, "POSTGRES_PASSWORD": "s3cret"})
    assert env_of(changed["postgres"])["POSTGRES_PASSWORD"] == "s3cret"
    assert urlparse(env_of(changed["web"])["DATABASE_URL"]).password == "s3cret"


def test_redis_url_points_at_the_redis_service() -> None:
    for name in APP_SERVICES:
        url = urlparse(env_of(services()[name])["REDIS_URL"])
        assert url.scheme == "redis" and url.hostname == "redis" and (url.port or 6379) == 6379, name
        assert probes()[name]["settings"]["CELERY_BROKER_URL"] == env_of(services()[name])["REDIS_URL"]


def test_artifact_root_is_the_shared_named_volume() -> None:
    svc = services()
    roots = set()
    # The webhooks worker touches no artifact: it delivers JSON and mounts nothing.
    assert named_volume_mounts(svc["worker-webhooks"]) == {}
    for name in {"web"} | WORKERS - {"worker-webhooks"}:
        root = env_of(svc[name])["MODELPORT_ARTIFACT_ROOT"]
        assert probes()[name]["settings"]["MODELPORT_ARTIFACT_ROOT"] == root
        mounts = named_volume_mounts(svc[name])
        assert root in mounts, f"{name}: {root} is not a mounted named volume ({mounts})"
        roots.add((root, mounts[root]))
    assert len(roots) == 1, f"web and workers must share one artifact volume: {roots}"
    ((root, volume),) = roots
    assert volume in load()["volumes"]
    assert root == "/var/lib/modelport/artifacts"
    assert docker_env(DOCKERFILE)["MODELPORT_ARTIFACT_ROOT"] == root
    assert docker_env(DOCKERFILE_GPU)["MODELPORT_ARTIFACT_ROOT"] == root


# --------------------------------------------------------------------------------------------
# Commands


def test_web_command_serves_the_asgi_application() -> None:
    web = services()["web"]
    argv = argv_of(web)
    assert argv[:3] == ["python", "-m", "uvicorn"]
    target = argv[3]
    module = target.partition(":")[0]
    assert (REPO / "platform" / Path(*module.split("."))).with_suffix(".py").is_file(), target
    assert probes()["web"]["asgi_callable"], target
    assert option(argv, "--host") == "0.0.0.0"
    port = option(argv, "--port")
    assert "--no-access-log" in argv
    for flag in [t.split("=")[0] for t in argv[4:] if t.startswith("-")]:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", probes()["help:uvicorn"]), flag
    assert [p.rsplit(":", 1)[1] for p in published(web)] == [port]
    health = " ".join(web["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/readyz" in health
    assert probes()["web"]["paths"]["/readyz"], "the health check's path is not routed"
    assert probes()["web"]["hosts"]["127.0.0.1"], "ALLOWED_HOSTS refuses the health check's host"


def test_migrate_is_a_one_shot_the_app_waits_for() -> None:
    svc = services()
    migrate = svc["migrate"]
    assert argv_of(migrate) == ["python", "manage.py", "migrate", "--no-input"]
    assert (REPO / "manage.py").is_file()
    assert migrate.get("restart") in (None, "no")
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in {"web"} | WORKERS:
        deps = svc[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["postgres"]["condition"] == "service_healthy", name
        assert deps["redis"]["condition"] == "service_healthy", name


def test_worker_commands_match_the_celery_app_and_queues() -> None:
    svc = services()
    results = probes()
    help_text = results["help:celery-worker"]
    celery_module = option(argv_of(svc["worker-cpu"]), "-A")
    assert (REPO / "platform" / Path(*celery_module.split(".")) / "__init__.py").is_file()
    expected_names = {"worker-convert": "convert@%h", "worker-cpu": "serve-cpu@%h", "worker-gpu": "serve-gpu@%h",
                      "worker-webhooks": "webhooks@%h"}
    for name in WORKERS:
        argv = argv_of(svc[name])
        assert argv[:6] == ["python", "-m", "celery", "-A", celery_module, "worker"], name
        assert results[name]["has_celery_app"], f"{celery_module} has no celery_app"
        # Webhook deliveries wait on receivers (I/O, bounded per attempt): threads, not solo.
        assert option(argv, "-P", "--pool") == ("threads" if name == "worker-webhooks" else "solo"), name
        assert option(argv, "-n", "--hostname") == expected_names[name]
        assert {"--without-gossip", "--without-mingle"} <= set(argv), name
        for flag in [t.split("=")[0] for t in argv[6:] if t.startswith("-")]:
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), f"{name}: celery has no {flag}"
        settings = results[name]["settings"]
        if name in SERVE_WORKERS:
            assert "--serve" in argv and "--serve" in results[name]["worker_user_options"], name
            assert queue_of_worker(argv) == [settings["CELERY_QUEUE_CONTROL"]], name
        elif name == "worker-webhooks":
            assert "--serve" not in argv
            assert queue_of_worker(argv) == [settings["CELERY_QUEUE_WEBHOOKS"]], name
        else:
            assert "--serve" not in argv
            assert queue_of_worker(argv) == [settings["CELERY_QUEUE_CONVERT"]], name
    # With the default prefix the queues are the documented ones.
    assert queue_of_worker(argv_of(svc["worker-convert"])) == ["mp.convert"]
    assert queue_of_worker(argv_of(svc["worker-cpu"])) == ["mp.control"]
    assert queue_of_worker(argv_of(svc["worker-webhooks"])) == ["mp.webhooks"]


def test_queues_follow_the_redis_prefix() -> None:
    other = services({**BASE_ENV, "MODELPORT_REDIS_PREFIX": "acme"})
    settings = probes()["prefix:acme"]["settings"]
    assert settings["MODELPORT_REDIS_PREFIX"] == "acme"
    assert queue_of_worker(argv_of(other["worker-convert"])) == [settings["CELERY_QUEUE_CONVERT"]]
    assert queue_of_worker(argv_of(other["worker-cpu"])) == [settings["CELERY_QUEUE_CONTROL"]]
    assert queue_of_worker(argv_of(other["worker-gpu"])) == [settings["CELERY_QUEUE_CONTROL"]]
    assert queue_of_worker(argv_of(other["worker-webhooks"])) == [settings["CELERY_QUEUE_WEBHOOKS"]]


def test_every_task_is_routed_to_a_queue_a_default_worker_consumes() -> None:
    svc = services()
    consumed = {q for name in WORKERS - {"worker-gpu"} for q in queue_of_worker(argv_of(svc[name]))}
    task_queues = probes()["worker-cpu"]["task_queues"]
    assert task_queues, "no tasks registered"
    for task, queue in task_queues.items():
        assert queue in consumed, f"{task} goes to {queue}, which no worker consumes ({consumed})"
    for task in probes()["beat"]["beat_tasks"]:
        assert task in task_queues, f"beat schedules {task}, which is not a registered task"


def test_beat_command() -> None:
    argv = argv_of(services()["beat"])
    celery_module = option(argv_of(services()["worker-cpu"]), "-A")
    assert argv[:6] == ["python", "-m", "celery", "-A", celery_module, "beat"]
    schedule = option(argv, "-s", "--schedule")
    assert schedule and schedule.startswith("/tmp/"), "the schedule file must be writable by uid 10001"
    for flag in [t for t in argv[6:] if t.startswith("-")]:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", probes()["help:celery-beat"]), flag


# --------------------------------------------------------------------------------------------
# Exposure, privileges, GPU, monitoring


def test_postgres_and_redis_are_private_and_health_checked() -> None:
    svc = services()
    assert svc["postgres"]["image"].split(":") == ["postgres", "16"]
    assert svc["redis"]["image"].split(":") == ["redis", "7"]
    for name, probe in (("postgres", "pg_isready"), ("redis", "redis-cli")):
        assert not svc[name].get("ports"), f"{name} must not be published"
        test = svc[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and probe in " ".join(test), name
    assert "ping" in svc["redis"]["healthcheck"]["test"]
    assert named_volume_mounts(svc["postgres"]) == {"/var/lib/postgresql/data": "pgdata"}
    assert "pgdata" in load()["volumes"]


def test_only_web_and_prometheus_publish_ports_on_loopback_by_default() -> None:
    svc = services()
    assert {name for name, s in svc.items() if s.get("ports")} == {"web", "prometheus"}
    assert published(svc["web"]) == ["127.0.0.1:8000:8000"]
    assert all(p.startswith("127.0.0.1:") for p in published(svc["prometheus"]))
    assert published(services({**BASE_ENV, "MODELPORT_BIND": "0.0.0.0"})["web"]) == ["0.0.0.0:8000:8000"]


def test_only_the_conversion_worker_gets_sandbox_rights() -> None:
    svc = services()
    convert = svc["worker-convert"]
    assert convert["cap_add"] == ["SYS_ADMIN"]
    assert set(convert["security_opt"]) == {"seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"}
    assert str(convert.get("user")).split(":")[0] in {"0", "root"}, "the sandbox sets up uid maps as root"
    assert not convert.get("privileged")
    for name, service in svc.items():
        if name == "worker-convert":
            continue
        for key in ("cap_add", "security_opt", "privileged", "user"):
            assert not service.get(key), f"{name} must not set {key}"
    for name in APP_SERVICES:
        assert svc[name].get("init") is True, f"{name}: PID 1 must reap orphans (init: true)"


def test_gpu_worker_reserves_an_nvidia_gpu_and_uses_the_gpu_image() -> None:
    svc = services()
    gpu = svc["worker-gpu"]
    assert gpu["build"]["dockerfile"] == "deploy/Dockerfile.gpu"
    assert (REPO / gpu["build"]["context"] / gpu["build"]["dockerfile"]).resolve() == DOCKERFILE_GPU
    assert gpu["image"] != svc["worker-cpu"]["image"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    for name in APP_SERVICES - {"worker-gpu"}:
        assert svc[name]["build"]["dockerfile"] == "deploy/Dockerfile", name
        assert "deploy" not in svc[name], name


def test_prometheus_scrapes_web_metrics_and_worker_ports() -> None:
    svc = services()
    prom = svc["prometheus"]
    assert prom["image"].startswith("prom/prometheus:")
    assert any(v.startswith("./deploy/prometheus.yml:/etc/prometheus/prometheus.yml") for v in prom["volumes"])
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    web_port = option(argv_of(svc["web"]), "--port")
    targets = {t for job in jobs.values() for sc in job["static_configs"] for t in sc["targets"]}
    web_jobs = [job for job in jobs.values() if f"web:{web_port}" in job["static_configs"][0]["targets"]]
    assert web_jobs and web_jobs[0].get("metrics_path", "/metrics") == "/metrics"
    assert probes()["web"]["hosts"]["web"], "ALLOWED_HOSTS refuses Prometheus' Host header (web)"
    for name in WORKERS - {"worker-webhooks"}:  # no metrics endpoint: it serves no models
        assert f"{name}:9100" in targets, name
    for target in targets:
        assert target.split(":")[0] in svc, f"{target} is not a compose service"


# --------------------------------------------------------------------------------------------
# Images


def test_cpu_dockerfile() -> None:
    instructions = dockerfile(DOCKERFILE)
    pins = requirement_pins()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    assert '"3.11' in (REPO / "pyproject.toml").read_text() or ">=3.11" in (REPO / "pyproject.toml").read_text()
    assert ("WORKDIR", APP_ROOT) in instructions
    env = docker_env(DOCKERFILE)
    assert env["PYTHONPATH"] == "/app/platform:/app"
    module = env["DJANGO_SETTINGS_MODULE"]
    assert (REPO / "platform" / Path(*module.split("."))).with_suffix(".py").is_file()
    run_lines = runs(DOCKERFILE)
    torch_at = next(i for i, r in enumerate(run_lines) if re.search(r"pip install torch==", r))
    torch_pin = re.search(r"torch==(\S+)", run_lines[torch_at])[1]
    assert torch_pin == pins["torch"], "the image's torch must be requirements.txt's"
    assert "--index-url https://download.pytorch.org/whl/cpu" in run_lines[torch_at]
    req_at = next(i for i, r in enumerate(run_lines) if re.search(r"pip install -r (/app/)?requirements\.txt", r))
    assert torch_at < req_at, "CPU torch must be installed before requirements.txt (else pip takes the CUDA build)"
    assert ("COPY", "requirements.txt /app/requirements.txt") in instructions
    assert ("COPY", ". /app") in instructions
    assert any("util-linux" in r and "bubblewrap" in r and "apt-get install" in r for r in run_lines)
    assert any(re.search(r"useradd .*--uid 10001 .*modelport", r) for r in run_lines)
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1] in {"modelport", "10001"}, "web and workers run unprivileged"
    entry = json.loads(next(rest for keyword, rest in instructions if keyword == "ENTRYPOINT"))
    assert entry == ["/app/deploy/entrypoint.sh"]


def test_gpu_dockerfile_swaps_onnxruntime_for_onnxruntime_gpu() -> None:
    instructions = dockerfile(DOCKERFILE_GPU)
    pins = requirement_pins()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    assert docker_env(DOCKERFILE_GPU)["PYTHONPATH"] == "/app/platform:/app"
    args = dict(rest.split("=", 1) for keyword, rest in instructions if keyword == "ARG" and "=" in rest)
    gpu_version = tuple(int(p) for p in args["ONNXRUNTIME_GPU_VERSION"].split("."))
    cpu_version = tuple(int(p) for p in pins["onnxruntime"].split("."))
    # onnxruntime-gpu lags the CPU wheel on PyPI; same major, never newer, at most one minor behind.
    assert gpu_version[0] == cpu_version[0] and gpu_version <= cpu_version, "onnxruntime-gpu vs requirements.txt"
    assert cpu_version[1] - gpu_version[1] <= 1
    run_lines = runs(DOCKERFILE_GPU)
    text = "\n".join(run_lines)
    assert re.search(r'"onnxruntime-gpu(\[[^\]]*\])?==\$\{ONNXRUNTIME_GPU_VERSION\}"', text)
    assert not re.search(r"pip install[^\n]*\bonnxruntime==", text)
    # requirements.txt is installed only through the filter, and the filter drops exactly onnxruntime.
    filt = re.search(r"grep -v '([^']+)' /app/requirements\.txt > (\S+)", text)
    assert filt, "requirements.txt must be filtered of onnxruntime"
    assert re.findall(r"pip install -r (\S+)", text) == [filt[2]]
    lines = (REPO / "requirements.txt").read_text().splitlines()
    dropped = [line for line in lines if re.search(filt[1], line)]
    assert dropped == [f"onnxruntime=={pins['onnxruntime']}"], dropped
    assert "pip show -q onnxruntime" in text, "the build must fail if CPU onnxruntime sneaks in"
    torch_pin = re.search(r"pip install torch==(\S+)", text)[1]
    assert torch_pin == pins["torch"]
    assert any(re.search(r"useradd .*--uid 10001 .*modelport", r) for r in run_lines)
    assert [rest for keyword, rest in instructions if keyword == "USER"][-1] in {"modelport", "10001"}


def test_entrypoint_and_dockerignore() -> None:
    text = ENTRYPOINT.read_text()
    assert text.startswith("#!/bin/sh")
    assert text.rstrip().endswith('exec "$@"')
    sh = shutil.which("sh")
    if sh:
        assert subprocess.run([sh, "-n", str(ENTRYPOINT)], check=False).returncode == 0
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "var", ".env", "test-artifacts"} <= ignored
    patterns = [p for p in ignored if p and not p.startswith("#")]
    for needed in ("requirements.txt", "manage.py", "platform", "workers", "deploy", "frontend"):
        assert not any(fnmatch.fnmatch(needed, pattern) for pattern in patterns), needed


def test_docker_compose_config_validates() -> None:
    """`docker compose config -q` checks the file against the Compose specification without an
    engine. Runs only where the compose plugin is installed (not in every sandbox); the checks
    above stand either way."""
    docker = shutil.which("docker")
    if docker is None:
        return
    version = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, check=False)
    if version.returncode != 0:
        return
    env = {**os.environ, **BASE_ENV}
    for profiles in ([], ["--profile", "gpu", "--profile", "monitoring"]):
        proc = subprocess.run(
            [docker, "compose", "-f", str(COMPOSE), *profiles, "config", "-q"],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            check=False,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
    missing = {k: v for k, v in os.environ.items() if k != "SECRET_KEY"}
    proc = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        env=missing,
        cwd=REPO,
        check=False,
        timeout=60,
    )
    assert proc.returncode != 0 and "SECRET_KEY" in proc.stderr
