"""Issue 23: serving spans several hosts on one broker, and survives losing one.

The hosts are network namespaces (tests/netns.py): each runs one serving worker that reaches
Redis and PostgreSQL of the main namespace through its veth and a forwarder bound to that veth's
address, exactly as a worker on another machine reaches them over the network. The web process
(the `fleet` fixture's private data plane) stays in the main namespace. Nothing but each worker's
environment (REDIS_URL, DATABASE_URL) tells it where the platform is.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.test import override_settings

from tests import stack as stk
from tests.conftest import staff_key, wait_recorded
from tests.integration.test_serving import drift, ready_model, sum_model
from tests.netns import TestHost, TestHosts

pytestmark = pytest.mark.integration

DEADLINE_MS = 3000
REPORT = stk.REPO / "test-artifacts" / "multihost.json"


@pytest.fixture
def hosts() -> Any:
    """Test hosts whose namespaces, veths and processes go away after the test, failed or not."""
    made = TestHosts(forward=(6379, 5432))
    try:
        yield made
    finally:
        made.close()


def serve_on(host: TestHost, fleet: stk.Stack, name: str) -> stk.Proc:
    """A serving worker on `host`, configured only by its environment."""
    env = {**fleet.env, "REDIS_URL": host.url(settings.REDIS_URL), "DATABASE_URL": host.url(fleet.env["DATABASE_URL"])}
    return host.start(name, stk.celery_argv(name, [f"{fleet.prefix}.control"], serve=True), env)


def beats(fleet: stk.Stack) -> dict[int, dict]:
    """Every heartbeat in the data plane (stale ones too), by worker pid."""
    return {b["pid"]: b for b in (json.loads(v) for v in fleet.redis.hgetall(f"{fleet.prefix}:workers").values())}


def served(fleet: stk.Stack, proc: stk.Proc) -> int:
    return beats(fleet).get(proc.popen.pid, {}).get("served", 0)


def wait_until(predicate: Any, timeout: float, what: str) -> float:
    """Seconds until `predicate()` held (polled every 0.1 s); fails after `timeout`."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.1)
    return time.monotonic() - start


@dataclass
class Outcome:
    x: float
    status: int  # 0: the HTTP call itself failed (timeout, connection): a hung call
    seconds: float
    body: dict


class Load:
    """`threads` callers, each sending one call after the other until stopped (closed loop)."""

    def __init__(self, base_url: str, key: str, model: str, *, threads: int) -> None:
        self.url = f"{base_url}/api/v1/models/{model}/predictions"
        self.key = key
        self.stopping = threading.Event()
        self.outcomes: list[Outcome] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._caller, args=(i,), daemon=True) for i in range(threads)]

    def _caller(self, index: int) -> None:
        headers = {"Authorization": self.key, "Prefer": "wait", "Modelport-Deadline-Ms": str(DEADLINE_MS)}
        with httpx.Client(timeout=DEADLINE_MS / 1000 + 10) as http:
            n = 0
            while not self.stopping.is_set():
                n += 1
                x = float(index * 100_000 + n)
                t0 = time.monotonic()
                try:
                    resp = http.post(self.url, json={"input": {"x": [[x, 1.0]]}}, headers=headers)
                    outcome = Outcome(x, resp.status_code, time.monotonic() - t0, resp.json())
                except (httpx.HTTPError, ValueError) as exc:
                    outcome = Outcome(x, 0, time.monotonic() - t0, {"error": repr(exc)})
                with self.lock:
                    self.outcomes.append(outcome)

    def start(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def count(self, status: int) -> int:
        with self.lock:
            return sum(1 for o in self.outcomes if o.status == status)

    def stop(self) -> list[Outcome]:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=DEADLINE_MS / 1000 + 15)
        assert not any(t.is_alive() for t in self.threads), "a caller never returned"
        return self.outcomes


def test_calls_spread_over_hosts_survive_a_cut_link_and_a_host_joins_under_load(user_api, fleet, hosts, tmp_path):
    from modelport.gateway.models import Prediction
    from modelport.gateway.services import predictions_reap
    from modelport.registry.models import ModelVersion

    api = user_api("multihost")
    vid = ready_model(api, "summer", sum_model(tmp_path / "sum.onnx"))
    # Three replicas wanted: each host that joins loads the version at its first placement.
    ModelVersion.objects.filter(pk=vid).update(min_replicas=3, max_queue_delay_ms=0)
    key = api.http.headers["Authorization"]
    first = [serve_on(hosts.add(), fleet, f"host{i}") for i in range(2)]
    wait_until(lambda: all(vid in beats(fleet).get(w.popen.pid, {}).get("loaded", []) for w in first), 60,
               "both hosts load the version")
    before = api.balance_micro()
    assert not Prediction.objects.filter(user__username="multihost").exists()

    load = Load(fleet.base_url, key, "multihost/summer", threads=6).start()
    timeline: dict[str, Any] = {}
    try:
        # 1. Calls spread over the hosts.
        wait_until(lambda: all(served(fleet, w) >= 10 for w in first), 30, "both hosts serve")

        # 2. A host added under load takes work within a few heartbeats.
        third_host = hosts.add()
        third = serve_on(third_host, fleet, "host2")
        wait_until(lambda: third.popen.pid in beats(fleet), 60, "the new host's first heartbeat")
        # Within a few heartbeats: it places the version at its first one and pops its list next.
        joined = wait_until(lambda: served(fleet, third) > 0, 10 * settings.MODELPORT_HEARTBEAT_S,
                            "the new host takes calls within 10 heartbeats")
        timeline["joined_heartbeats"] = round(joined / settings.MODELPORT_HEARTBEAT_S, 1)

        # 3. Host 0's link cut mid-load: the others take the load.
        cut_host, cut_worker = hosts.hosts[0], first[0]
        others = [first[1], third]
        at_cut = {w.popen.pid: served(fleet, w) for w in [cut_worker, *others]}
        ok_at_cut = load.count(200)
        cut_host.cut()
        window = [time.time()]
        time.sleep(8)
        during = {w.popen.pid: served(fleet, w) - at_cut[w.popen.pid] for w in others}
        timeline["served_by_others_during_cut"] = during
        timeline["ok_during_cut"] = load.count(200) - ok_at_cut
        assert all(n >= 10 for n in during.values()), during
        stalled = served(fleet, cut_worker)

        # 4. Link restored: the host rejoins and takes load again.
        window.append(time.time())
        cut_host.restore()
        rejoined = wait_until(lambda: served(fleet, cut_worker) > stalled, 40, "the cut host serves again")
        timeline["rejoined_s"] = round(rejoined, 1)
        time.sleep(1)
    finally:
        outcomes = load.stop()

    # Every call ended: 200, or a clean 503 within its deadline; none hung.
    codes = [o.status for o in outcomes]
    hung = [o for o in outcomes if o.status == 0]
    assert not hung, hung[:3]
    assert set(codes) <= {200, 503}, {c: codes.count(c) for c in set(codes)}
    late = [o for o in outcomes if o.seconds > DEADLINE_MS / 1000 + 2.5]
    assert not late, [(o.status, round(o.seconds, 2)) for o in late[:5]]
    for o in outcomes:
        if o.status == 200:
            assert o.body["output"]["y"] == [2 * (o.x + 1.0)], o  # each caller got its own result
        else:
            assert o.body["status"] == 503 and o.body.get("code") == "deadline", o.body

    # After the reaper: nothing stuck, failures uncharged, the ledger adds up.
    time.sleep(DEADLINE_MS / 1000 + 1)
    with override_settings(MODELPORT_REDIS_PREFIX=fleet.prefix):  # this data plane's journals
        predictions_reap(grace_s=0)
    wait_recorded(o.body["id"] for o in outcomes if o.status == 200)
    rows = Prediction.objects.filter(user__username="multihost")
    assert rows.count() == len(outcomes)
    hung_rows = rows.exclude(status__in=["succeeded", "failed"]).count()
    assert hung_rows == 0
    succeeded = rows.filter(status="succeeded")
    assert succeeded.count() == codes.count(200)
    charged_failures = rows.filter(status="failed").exclude(charged=0).count()
    assert charged_failures == 0
    assert api.balance_micro() == before - sum(p.charged for p in succeeded)
    assert drift("multihost") == 0
    # The cut was real: host 0 completed nothing between a second after the cut and the restore.
    cut_from, cut_to = (datetime.fromtimestamp(t, UTC) for t in (window[0] + 1, window[1]))
    assert not succeeded.filter(worker__startswith="host0", completed_at__range=(cut_from, cut_to)).exists()
    by_worker = {w: rows.filter(status="succeeded", worker__startswith=w).count() for w in ("host0", "host1", "host2")}
    assert all(by_worker.values()), by_worker  # every host served calls that were recorded

    report = {"calls_sent": len(outcomes), "2xx": codes.count(200), "503": codes.count(503),
              "charged": succeeded.exclude(charged=0).count(), "charged_failures": charged_failures,
              "hung": len(hung) + hung_rows, "succeeded_by_host": by_worker, **timeline}
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=2))
    print("multihost:", json.dumps(report), file=sys.stderr)


def pending_calls(base_url: str, key: str) -> float:
    """What KEDA's metrics-api trigger reads (deploy/k8s/): modelport_serving_pending_calls."""
    text = httpx.get(f"{base_url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=30).text
    match = re.search(r"^modelport_serving_pending_calls ([\d.e+]+)$", text, re.M)
    assert match, "modelport_serving_pending_calls is not exposed"
    return float(match.group(1))


def test_a_call_to_a_pool_at_zero_waits_for_the_first_worker_within_its_deadline(user_api, fleet, hosts, tmp_path):
    """Scale from zero: with no serving worker at all, calls wait in the data plane (the queue
    depth KEDA scales on shows them); a worker that starts on a host within their deadline serves them."""
    api = user_api("fromzero")
    ready_model(api, "summer", sum_model(tmp_path / "sum.onnx"))
    key = api.http.headers["Authorization"]
    metrics_key = staff_key()
    assert not beats(fleet), "the fleet starts with no serving worker"
    assert pending_calls(fleet.base_url, metrics_key) == 0

    results: list[httpx.Response] = []
    lock = threading.Lock()

    def one(x: float) -> None:
        resp = httpx.post(f"{fleet.base_url}/api/v1/models/fromzero/summer/predictions",
                          json={"input": {"x": [[x, 1.0]]}},
                          headers={"Authorization": key, "Prefer": "wait", "Modelport-Deadline-Ms": "25000"},
                          timeout=40)
        with lock:
            results.append(resp)

    callers = [threading.Thread(target=one, args=(float(i),)) for i in range(4)]
    for thread in callers:
        thread.start()
    wait_until(lambda: pending_calls(fleet.base_url, metrics_key) == 4, 15, "the four calls are pending")
    time.sleep(1)  # still waiting: nothing failed them for want of a worker
    assert not results
    started = time.monotonic()
    serve_on(hosts.add(), fleet, "first")
    for thread in callers:
        thread.join(timeout=40)
    waited = time.monotonic() - started
    assert sorted(r.status_code for r in results) == [200] * 4, [r.text for r in results]
    assert sorted(r.json()["output"]["y"][0] for r in results) == [2.0, 4.0, 6.0, 8.0]
    assert pending_calls(fleet.base_url, metrics_key) == 0
    print(f"fromzero: 4 calls held {waited:.1f} s until the first worker served them", file=sys.stderr)
