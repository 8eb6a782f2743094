"""deploy/k8s/ rendered with `kubectl kustomize`, validated offline, and checked against the code,
docker-compose.yml and the settings (there is no cluster on this machine).

Every overlay is rendered by kubectl (1.32, kustomize v5; deploy/ci/ensure-services.sh installs
it); every Kubernetes object is validated against the API's schemas for that version by
`kubernetes-validate` (strict: unknown fields are errors, as with `kubectl apply`), and KEDA's
objects against KEDA's CRD schemas kept in tests/deploy/keda_crds.yaml. The consistency checks run
the settings in subprocesses with each container's environment (ConfigMap + Secret references,
with placeholder secrets), the way tests/deploy/test_compose.py does for compose.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.test_compose import (
    _PROBE,
    DOCKERFILE,
    DOCKERFILE_GPU,
    _run,
    argv_of,
    env_of,
    named_volume_mounts,
    process_env,
    services,
    settings_env_reads,
)

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu")
KUBE_VERSION = "1.32.0"  # kubectl's (Debian's kubectl package): the API the manifests target
KEDA_SCHEMAS = Path(__file__).with_name("keda_crds.yaml")
OPERATIONS = REPO / "docs" / "OPERATIONS.md"
SECRET = "modelport-secrets"
# Placeholders for the Secret's values when the settings are probed (never in the manifests).
SECRET_VALUES = {
    "SECRET_KEY": "k" * 50,
    "DATABASE_URL": "postgres://modelport:pw@db.example.internal:5432/modelport",
    "REDIS_URL": "redis://:pw@redis.example.internal:6379/0",
    "MODELPORT_METRICS_TOKEN": "t" * 40,
}
# Kubernetes workload -> the compose service whose process it runs (per overlay for the pool).
COMPOSE_OF = {"web": "web", "worker-convert": "worker-convert", "beat": "beat", "migrate": "migrate",
              "worker-control": "worker-cpu", "worker-webhooks": "worker-webhooks"}
SERVING_COMPOSE = {"cpu": "worker-cpu", "gpu": "worker-gpu"}
WORKLOAD_KINDS = {"Deployment", "Job"}


# --------------------------------------------------------------------------------------------
# Rendering and lookups


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is missing: deploy/ci/ensure-services.sh installs it (apt-get install kubectl)"
    proc = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def objects(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in render(overlay) if o["kind"] == kind}


def workloads(overlay: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in render(overlay) if o["kind"] in WORKLOAD_KINDS}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def containers(workload: dict[str, Any], *, init: bool = True) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*(spec.get("initContainers") or [] if init else []), *spec["containers"]]


def serving_pools(overlay: str) -> dict[str, dict[str, Any]]:
    return {name: w for name, w in workloads(overlay).items()
            if w["spec"]["template"]["metadata"]["labels"].get("modelport/role") == "serving"}


def compose_service(overlay: str, workload: str) -> str:
    return SERVING_COMPOSE[overlay] if workload in serving_pools(overlay) else COMPOSE_OF[workload]


def namespace(overlay: str) -> str:
    (name,) = objects(overlay, "Namespace")
    return name


def container_env(overlay: str, container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom ConfigMaps, then env (the
    Secret's keys get the placeholders)."""
    configmaps = objects(overlay, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        ref = source["configMapRef"]["name"]
        assert ref in configmaps, f"{container['name']}: ConfigMap {ref} is not in the render"
        env.update(configmaps[ref]["data"])
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == SECRET, item
            env[item["name"]] = SECRET_VALUES[ref["key"]]
    return env


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of command/args ($$ escapes; unknown names stay as written)."""
    def one(arg: str) -> str:
        return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                      lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), arg)
    return [one(a) for a in args]


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def all_containers(overlay: str) -> list[tuple[str, dict[str, Any]]]:
    return [(name, c) for name, w in workloads(overlay).items() for c in containers(w)]


# --------------------------------------------------------------------------------------------
# Probing the settings with the containers' environments


def probed_paths(overlay: str) -> set[str]:
    """Every URL path the cluster calls: the kubelet's HTTP probes and KEDA's trigger URLs."""
    paths = {c[kind]["httpGet"]["path"] for _, c in all_containers(overlay)
             for kind in ("startupProbe", "livenessProbe", "readinessProbe") if "httpGet" in c.get(kind, {})}
    for scaled in objects(overlay, "ScaledObject").values():
        paths |= {urlsplit(t["metadata"]["url"]).path for t in scaled["spec"]["triggers"] if "url" in t["metadata"]}
    return paths


@cache
def probe(overlay: str) -> dict[str, dict[str, Any]]:
    """Per distinct container environment: what settings, URL routing and the Celery app compute
    with it (tests/deploy/test_compose.py's probe). Keyed by workload/container."""
    ingress_hosts = [rule["host"] for ing in objects(overlay, "Ingress").values() for rule in ing["spec"]["rules"]]
    spec = {
        "hosts": ["localhost", f"web.{namespace(overlay)}.svc.cluster.local", *ingress_hosts],
        "paths": sorted({"/healthz", "/readyz", "/metrics", *probed_paths(overlay)}),
        "asgi": "modelport.config.asgi:application",
        "celery_module": "modelport.config",
    }
    envs: dict[str, dict[str, str]] = {}
    for name, container in all_containers(overlay):
        dockerfile = DOCKERFILE_GPU if "gpu" in container["image"] else DOCKERFILE
        envs[f"{name}/{container['name']}"] = process_env(container_env(overlay, container), dockerfile)
    distinct: dict[str, str] = {}
    for key, env in envs.items():
        distinct.setdefault(json.dumps(env, sort_keys=True), key)
    results = {}
    for env_json, key in distinct.items():
        proc = _run([sys.executable, "-c", _PROBE, json.dumps(spec)], json.loads(env_json))
        assert proc.returncode == 0, f"{key}: {proc.stderr}"
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert "error" not in result, f"{key}: the code refuses this environment:\n{result['error']}"
        results[env_json] = result
    return {key: results[json.dumps(env, sort_keys=True)] for key, env in envs.items()}


# --------------------------------------------------------------------------------------------
# Schemas


def _strict(schema: Any) -> Any:
    """KEDA's schema as `kubectl apply`'s strict field validation applies it: objects that name
    their properties accept no others."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def keda_validator(kind: str) -> jsonschema.Draft7Validator:
    schemas = yaml.safe_load(KEDA_SCHEMAS.read_text())
    schema = {**_strict(schemas[kind]), "definitions": _strict(schemas["definitions"])}
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def validate(obj: dict[str, Any]) -> None:
    """Raise if `obj` is not a valid object of its kind."""
    if obj["apiVersion"].startswith("keda.sh/"):
        keda_validator(obj["kind"]).validate(obj)
    else:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_against_the_kubernetes_and_keda_schemas(overlay: str) -> None:
    kinds = sorted({o["kind"] for o in render(overlay)})
    assert kinds == sorted({"Namespace", "ConfigMap", "PersistentVolumeClaim", "Deployment", "Job", "Service",
                            "HorizontalPodAutoscaler", "PodDisruptionBudget", "Ingress", "NetworkPolicy",
                            "ScaledObject", "TriggerAuthentication"}), kinds
    for obj in render(overlay):
        validate(obj)
        ns = obj["metadata"].get("namespace")
        assert (obj["kind"] == "Namespace") == (ns is None), obj["metadata"]
        assert ns in (None, namespace(overlay))


def test_the_validators_refuse_broken_objects() -> None:
    """The checks above can fail: a misspelt field, a wrong type, a missing required field."""
    deployment = copy.deepcopy(workloads("cpu")["web"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    deployment = copy.deepcopy(workloads("cpu")["web"])
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    (scaled,) = objects("cpu", "ScaledObject").values()
    for broken in ({"minReplicaCount": "zero"}, {"cooldown": 300}, {"triggers": [{"type": "metrics-api"}]}):
        with pytest.raises(jsonschema.ValidationError):
            validate({**scaled, "spec": {**scaled["spec"], **broken}})
    (auth,) = objects("cpu", "TriggerAuthentication").values()
    with pytest.raises(jsonschema.ValidationError):
        validate({**auth, "spec": {"secretTargetRef": [{"parameter": "token", "name": SECRET}]}})


# --------------------------------------------------------------------------------------------
# The same processes as compose: images, commands, environment, settings


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_workload_runs_the_compose_services_image_and_command(overlay: str) -> None:
    compose = services()
    for name, workload in workloads(overlay).items():
        service = compose[compose_service(overlay, name)]
        (main,) = containers(workload, init=False)
        assert main["image"] == service["image"], name
        assert "command" not in main, f"{name}: `command` would replace the image's entrypoint (umask 002)"
        argv = expand(main["args"], container_env(overlay, main))
        expected = argv_of(service)
        if name in serving_pools(overlay):
            # The one difference, on purpose: the pool consumes no routed queue (worker-control
            # takes the control queue), so it can scale to zero and reaches only the data stores.
            queue = option(argv, "-Q")
            assert queue == f"{container_env(overlay, main)['MODELPORT_REDIS_PREFIX']}.serving"
            routed = set(probe(overlay)[f"{name}/{main['name']}"]["task_queues"].values())
            assert queue not in routed, f"{queue} gets tasks: {routed}"
            argv[argv.index("-Q") + 1] = option(expected, "-Q")
            assert "--serve" in argv
        if name == "worker-control":  # compose's serving command without the serving loop
            expected = [a for a in expected if a != "--serve"]
            expected[expected.index("-n") + 1] = "control@%h"
        assert argv == expected, name
        for init in pod_spec(workload).get("initContainers") or []:
            assert init["image"] == main["image"] and "command" not in init, name
    assert {compose_service(overlay, n) for n in workloads(overlay)} == {
        "web", "worker-convert", SERVING_COMPOSE[overlay], "worker-cpu", "worker-webhooks", "beat", "migrate"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_environment_matches_compose_and_the_settings_accept_it(overlay: str) -> None:
    read, required = settings_env_reads()
    assert {"SECRET_KEY", "DATABASE_URL"} <= required
    compose = services()
    image_env = set(docker_env_names())
    for name, container in all_containers(overlay):
        env = container_env(overlay, container)
        unknown = set(env) - read - image_env
        assert not unknown, f"{name}: settings never read {unknown}"
        # Every required setting, and REDIS_URL (its default is loopback), is provided.
        assert required | {"REDIS_URL"} <= set(env), f"{name} lacks {(required | {'REDIS_URL'}) - set(env)}"
        assert env["MODELPORT_ENV"] == "production"
        if container["name"] == "wait-for-migrations":  # runs `migrate --check` only
            continue
        service_env = env_of(compose[compose_service(overlay, name)])
        if name == "worker-control":  # no serving loop, no serving metrics
            service_env = {k: v for k, v in service_env.items() if not k.startswith("MODELPORT_WORKER_METRICS")}
        missing = set(service_env) - set(env)
        assert not missing, f"{name} lacks what compose gives {compose_service(overlay, name)}: {missing}"
        for key in ("MODELPORT_ENV", "MODELPORT_REDIS_PREFIX", "MODELPORT_ARTIFACT_ROOT", "MODELPORT_LOG_LEVEL",
                    "MODELPORT_WORKER_METRICS_PORT", "MODELPORT_WORKER_METRICS_ADDR"):
            if key in service_env:
                assert env[key] == service_env[key], f"{name}: {key}={env[key]!r}, compose {service_env[key]!r}"
        result = probe(overlay)[f"{name}/{container['name']}"]
        assert result["settings"]["MODELPORT_REDIS_PREFIX"] == env["MODELPORT_REDIS_PREFIX"]
        assert result["settings"]["REDIS_URL"] == SECRET_VALUES["REDIS_URL"]
        assert result["db"]["HOST"] == "db.example.internal" and result["settings"]["DEBUG"] == "False"


def docker_env_names() -> list[str]:
    from tests.deploy.test_compose import docker_env

    return [*docker_env(DOCKERFILE), *docker_env(DOCKERFILE_GPU)]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_come_only_from_the_operators_secret(overlay: str) -> None:
    assert not objects(overlay, "Secret"), "no Secret (and so no secret value) in the manifests"
    referenced = set()
    for name, container in all_containers(overlay):
        for item in container.get("env") or []:
            if item["name"] in SECRET_VALUES:
                assert "value" not in item, f"{name}: {item['name']} is written into the manifest"
                ref = item["valueFrom"]["secretKeyRef"]
                assert ref == {"name": SECRET, "key": item["name"]}, item
                referenced.add(ref["key"])
    for auth in objects(overlay, "TriggerAuthentication").values():
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["name"] == SECRET
            referenced.add(ref["key"])
    for configmap in objects(overlay, "ConfigMap").values():
        assert not set(configmap["data"]) & set(SECRET_VALUES), "a secret setting in the ConfigMap"
    assert referenced == set(SECRET_VALUES)
    # The documented `kubectl create secret` names exactly these keys.
    text = OPERATIONS.read_text()
    command = re.search(rf"kubectl -n \S+ create secret generic {SECRET}((?:[^\n]*\\\n)*[^\n]*)", text)
    assert command, f"docs/OPERATIONS.md does not show how to create {SECRET}"
    assert set(re.findall(r"--from-literal=([A-Z_]+)=", command.group(1))) == referenced


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_routed_task_has_a_consumer_and_beat_is_single(overlay: str) -> None:
    consumed = set()
    for name, workload in workloads(overlay).items():
        (main,) = containers(workload, init=False)
        argv = expand(main["args"], container_env(overlay, main))
        if "worker" in argv:
            consumed.update(option(argv, "-Q").split(","))
    results = probe(overlay)
    task_queues = results["beat/beat"]["task_queues"]
    assert task_queues
    for task, queue in task_queues.items():
        assert queue in consumed, f"{task} goes to {queue}, which no workload consumes ({consumed})"
    beat = workloads(overlay)["beat"]
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"] == {"type": "Recreate"}
    assert "beat" not in {p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
                          for p in objects(overlay, "PodDisruptionBudget").values()}


# --------------------------------------------------------------------------------------------
# Probes, Services, Ingress, KEDA's URL


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_services_and_ingress_point_at_real_urls_and_allowed_hosts(overlay: str) -> None:
    web = workloads(overlay)["web"]
    (main,) = containers(web, init=False)
    result = probe(overlay)["web/web"]
    port = int(option(main["args"], "--port"))
    named = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert named == {"http": port}
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = main[kind]["httpGet"]
        assert named[get["port"]] == port
        assert result["paths"][get["path"]], f"{kind}: {get['path']} is not routed"
        host = {h["name"]: h["value"] for h in get["httpHeaders"]}["Host"]
        assert result["hosts"][host], f"{kind}: ALLOWED_HOSTS refuses Host {host}"
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    service = objects(overlay, "Service")["web"]
    assert service["spec"]["selector"].items() <= web["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"] == [{"name": "http", "port": port, "targetPort": "http"}]
    env = container_env(overlay, main)
    for ingress in objects(overlay, "Ingress").values():
        for rule in ingress["spec"]["rules"]:
            assert result["hosts"][rule["host"]], f"ALLOWED_HOSTS refuses the Ingress host {rule['host']}"
            assert f"https://{rule['host']}" in env["CSRF_TRUSTED_ORIGINS"].split(",")
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"] == {"name": "web", "port": {"name": "http"}}
        assert {h for tls in ingress["spec"]["tls"] for h in tls["hosts"]} == {r["host"] for r in ingress["spec"]["rules"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_scaledobject_per_serving_pool_reads_the_pending_calls_gauge(overlay: str) -> None:
    pools = serving_pools(overlay)
    assert len(pools) == 1
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in objects(overlay, "ScaledObject").values()}
    assert set(scaled) == set(pools), "one ScaledObject per serving pool, none for anything else"
    metrics_source = (REPO / "platform" / "modelport" / "ops" / "metrics.py").read_text()
    web_port = objects(overlay, "Service")["web"]["spec"]["ports"][0]["port"]
    for name, pool in pools.items():
        spec = scaled[name]["spec"]
        assert "replicas" not in pool["spec"], f"{name}: apply would reset the replicas KEDA set"
        assert spec["minReplicaCount"] == 0  # scale to zero: held calls wait for the first worker
        assert spec["maxReplicaCount"] >= 1
        # The app has no idle_unload_s: the documented 300 s, both back to zero and N -> N-1.
        assert spec["cooldownPeriod"] == 300
        assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"][
            "stabilizationWindowSeconds"] == 300
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "metrics-api" and trigger["metricType"] == "AverageValue"
        meta = trigger["metadata"]
        assert meta["format"] == "prometheus" and meta["authMode"] == "bearer"
        assert f'"{meta["valueLocation"]}"' in metrics_source, "the gauge KEDA reads is not exported"
        assert float(meta["activationTargetValue"]) == 0 and float(meta["targetValue"]) > 0
        url = urlsplit(meta["url"])
        assert url.hostname == f"web.{namespace(overlay)}.svc.cluster.local" and url.port == web_port
        assert probe(overlay)["web/web"]["paths"][url.path], url.path
        assert probe(overlay)["web/web"]["hosts"][url.hostname], "ALLOWED_HOSTS refuses KEDA's Host"
        auth = objects(overlay, "TriggerAuthentication")[trigger["authenticationRef"]["name"]]
        assert auth["spec"]["secretTargetRef"] == [{"parameter": "token", "name": SECRET,
                                                    "key": "MODELPORT_METRICS_TOKEN"}]
        (main,) = containers(pool, init=False)
        web_env = {i["name"] for i in containers(workloads(overlay)["web"], init=False)[0]["env"]}
        assert "MODELPORT_METRICS_TOKEN" in web_env, "the web tier must accept KEDA's token"
        assert "--serve" in main["args"]


# --------------------------------------------------------------------------------------------
# Security contexts, resources, GPU, storage, availability


def _restricted_violations(workload: dict[str, Any]) -> list[str]:
    """What breaks Pod Security "restricted" (and this project's read-only-root rule)."""
    spec = pod_spec(workload)
    pod = spec.get("securityContext") or {}
    found = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            found.append(key)
    for volume in spec.get("volumes") or []:
        if "hostPath" in volume:
            found.append(f"hostPath {volume['name']}")
    for container in containers(workload):
        sc = container.get("securityContext") or {}
        where = container["name"]
        if not sc.get("runAsNonRoot", pod.get("runAsNonRoot")):
            found.append(f"{where}: runAsNonRoot")
        if sc.get("runAsUser", pod.get("runAsUser")) in (0, None):
            found.append(f"{where}: runAsUser")
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{where}: allowPrivilegeEscalation")
        if (sc.get("capabilities") or {}).get("drop") != ["ALL"] or (sc.get("capabilities") or {}).get("add"):
            found.append(f"{where}: capabilities")
        if (sc.get("seccompProfile") or pod.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            found.append(f"{where}: seccompProfile")
        if sc.get("privileged") or sc.get("procMount", "Default") != "Default":
            found.append(f"{where}: privileged/procMount")
        if sc.get("readOnlyRootFilesystem") is not True:
            found.append(f"{where}: readOnlyRootFilesystem")
        elif "/tmp" not in {m["mountPath"] for m in container.get("volumeMounts") or []}:
            found.append(f"{where}: read-only root without a writable /tmp")
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_but_the_converter_is_restricted_and_the_converter_mirrors_compose(overlay: str) -> None:
    for name, workload in workloads(overlay).items():
        if name != "worker-convert":
            assert not _restricted_violations(workload), (name, _restricted_violations(workload))
            assert pod_spec(workload)["securityContext"]["runAsUser"] == 10001  # the images' user
    convert = workloads(overlay)["worker-convert"]
    compose = services()["worker-convert"]
    (main,) = containers(convert)
    sc = main["securityContext"]
    assert str(sc["runAsUser"]) == str(compose["user"]).split(":")[0] == "0"
    # Compose grants SYS_ADMIN, seccomp/AppArmor unconfined and an unmasked /proc. Kubernetes
    # accepts procMount: Unmasked only with hostUsers: false, whose pod user namespace cannot map
    # the sandbox's outside uids (workers/_sandbox_init.py UID_BASE): privileged is the one way
    # to all of compose's grant (docs/OPERATIONS.md says what it adds).
    assert compose["cap_add"] == ["SYS_ADMIN"] and not compose.get("privileged")
    assert set(compose["security_opt"]) == {"seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"}
    assert sc["privileged"] is True
    assert "procMount" not in sc and "hostUsers" not in pod_spec(convert)
    uid_base = re.search(r"^UID_BASE = ([\d_]+)", (REPO / "workers" / "_sandbox_init.py").read_text(), re.M)
    assert uid_base and int(uid_base.group(1)) >= 65536, "the sandbox's outside uids fit a pod user namespace now"
    assert pod_spec(convert)["automountServiceAccountToken"] is False
    assert main["resources"]["limits"]["memory"] == "8Gi" and compose["mem_limit"] == "8g"
    assert pod_spec(convert)["terminationGracePeriodSeconds"] == 120 and compose["stop_grace_period"] == "2m"
    labels = objects(overlay, "Namespace")[namespace(overlay)]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"  # the converter's rights
    assert labels["pod-security.kubernetes.io/audit"] == "restricted"


def _mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}
    number, unit = re.fullmatch(r"([\d.]+)([KMGT]i)", quantity).groups()
    return float(number) * units[unit]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resources_gpu_placement_and_storage(overlay: str) -> None:
    for name, container in all_containers(overlay):
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{name}: {kind}"
    for name, pool in serving_pools(overlay).items():
        (main,) = containers(pool, init=False)
        budget = int(container_env(overlay, main)["MODELPORT_HOST_MEMORY_BUDGET_MB"])
        assert budget < _mebibytes(main["resources"]["limits"]["memory"]), "the model cache must fit the limit"
        spec = pod_spec(pool)
        if overlay == "gpu":
            assert main["resources"]["limits"]["nvidia.com/gpu"] == 1
            assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
            assert main["image"] == services()["worker-gpu"]["image"]
        else:
            assert "nvidia.com/gpu" not in main["resources"]["limits"] and "nodeSelector" not in spec
    for name in workloads(overlay):
        if name != "worker-serving":
            for container in containers(workloads(overlay)[name]):
                assert "nvidia.com/gpu" not in container["resources"]["limits"], name
    # The artifact store: one ReadWriteMany claim, mounted where compose mounts the volume.
    (claim,) = objects(overlay, "PersistentVolumeClaim").values()
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    compose = services()
    for name, workload in workloads(overlay).items():
        (main,) = containers(workload, init=False)
        root = container_env(overlay, main)["MODELPORT_ARTIFACT_ROOT"]
        mounts = {m["mountPath"]: m["name"] for m in main.get("volumeMounts") or []}
        volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
        in_compose = root in named_volume_mounts(compose[compose_service(overlay, name)])
        if name == "worker-control":
            in_compose = False  # no artifact access: reapers, syncs and webhooks only
        assert (root in mounts) == in_compose, name
        if in_compose:
            assert volumes[mounts[root]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_availability_web_hpa_pdbs_and_the_migration_job(overlay: str) -> None:
    (hpa,) = objects(overlay, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] >= 2
    pdbs = {p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]: p["spec"]
            for p in objects(overlay, "PodDisruptionBudget").values()}
    assert set(pdbs) == {"web", "worker-convert", "worker-control", "worker-webhooks", "worker-serving"}
    for component in pdbs:
        labels = workloads(overlay)[component]["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == component
    assert pdbs["web"] == {"minAvailable": 1, "selector": pdbs["web"]["selector"]}
    assert "replicas" not in workloads(overlay)["web"]["spec"], "apply would reset the replicas the HPA set"
    job = workloads(overlay)["migrate"]
    assert pod_spec(job)["restartPolicy"] == "OnFailure"
    (init,) = pod_spec(workloads(overlay)["web"])["initContainers"]
    assert init["args"] == ["python", "manage.py", "migrate", "--check"]


# --------------------------------------------------------------------------------------------
# Network policies


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = policy["spec"]["podSelector"].get("matchLabels") or {}
    return wanted.items() <= labels.items()


def _allowed(overlay: str, labels: dict[str, str], direction: str) -> list[dict[str, Any]]:
    """The rules of every policy that selects pods with `labels` in `direction`."""
    rules = []
    for policy in objects(overlay, "NetworkPolicy").values():
        if _selects(policy, labels) and direction.capitalize() in policy["spec"]["policyTypes"]:
            rules.extend(policy["spec"].get(direction) or [])
    return rules


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serving_and_conversion_pods_reach_only_postgresql_redis_and_dns(overlay: str) -> None:
    policies = objects(overlay, "NetworkPolicy")
    assert policies["default-deny"]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    datastore_ports = {5432, 6379}  # DATABASE_URL's and REDIS_URL's ports
    assert {urlsplit(SECRET_VALUES[k]).port for k in ("DATABASE_URL", "REDIS_URL")} == datastore_ports
    for name in [*serving_pools(overlay), "worker-convert"]:
        labels = workloads(overlay)[name]["spec"]["template"]["metadata"]["labels"]
        for rule in _allowed(overlay, labels, "egress"):
            ports = {(p["protocol"], p["port"]) for p in rule["ports"]}
            peers = rule["to"]
            if ports <= {("UDP", 53), ("TCP", 53)}:
                assert all(p["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}} for p in peers), rule
            else:
                assert {port for _, port in ports} <= datastore_ports, f"{name} may reach {ports}"
                assert all("ipBlock" in p and "except" not in p["ipBlock"] for p in peers), rule
        ingress = _allowed(overlay, labels, "ingress")
        assert all({(p["protocol"], p["port"]) for p in r["ports"]} == {("TCP", 9100)} for r in ingress), ingress
    # Webhooks leave from their own worker only; the control worker reaches the data stores alone.
    hooks = workloads(overlay)["worker-webhooks"]["spec"]["template"]["metadata"]["labels"]
    assert any({p["port"] for p in r["ports"]} == {443, 80} for r in _allowed(overlay, hooks, "egress"))
    control = workloads(overlay)["worker-control"]["spec"]["template"]["metadata"]["labels"]
    assert not any({443, 80} & {p["port"] for p in r["ports"]} for r in _allowed(overlay, control, "egress"))
    web = workloads(overlay)["web"]["spec"]["template"]["metadata"]["labels"]
    assert [{p["port"] for p in r["ports"]} for r in _allowed(overlay, web, "ingress")] == [{8000}]


def test_the_documented_operator_overlay_renders_with_its_changes(tmp_path: Path) -> None:
    """docs/OPERATIONS.md's own overlay (images, host, data stores) builds on ours as written."""
    text = OPERATIONS.read_text()
    doc = re.search(r"cat > my-cluster/kustomization.yaml <<'YAML'\n(.*?)\nYAML\n", text, re.S)
    assert doc, "docs/OPERATIONS.md lost its example overlay"
    body = doc.group(1).replace("../deploy/k8s/", f"{os.path.relpath(K8S, tmp_path)}/")  # kustomize: no absolute
    (tmp_path / "kustomization.yaml").write_text(body)
    proc = subprocess.run([shutil.which("kubectl") or "kubectl", "kustomize", str(tmp_path)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    rendered = [d for d in yaml.safe_load_all(proc.stdout) if d]
    for obj in rendered:
        validate(obj)
    deployments = [o for o in rendered if o["kind"] == "Deployment"]
    assert {c["image"] for d in deployments for c in containers(d)} == {"registry.example.com/modelport:1.0"}
    (configmap,) = [o for o in rendered if o["kind"] == "ConfigMap"]
    assert configmap["data"]["ALLOWED_HOSTS"].endswith(",models.acme.com")
    assert configmap["data"]["MODELPORT_ENV"] == "production"  # merged, not replaced
    refs = {s["configMapRef"]["name"] for d in deployments for c in containers(d) for s in c.get("envFrom") or []}
    assert refs == {configmap["metadata"]["name"]}
    (ingress,) = [o for o in rendered if o["kind"] == "Ingress"]
    assert ingress["spec"]["rules"][0]["host"] == "models.acme.com"
    (policy,) = [o for o in rendered if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "datastores"]
    assert [p["ipBlock"]["cidr"] for p in policy["spec"]["egress"][0]["to"]] == ["10.20.0.5/32", "10.20.0.6/32"]
