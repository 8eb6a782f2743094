"""Structured logs and the request id (common/logging.py)."""

from __future__ import annotations

import json
import logging
import threading

from asgiref.sync import iscoroutinefunction
from django.core.handlers.asgi import ASGIHandler
from modelport.common import logging as mplog
from modelport.ops.middleware import MetricsMiddleware


def _record(msg: str = "hello %s", args: tuple = ("world",), **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("modelport.test", logging.WARNING, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_json_formatter_writes_one_object_with_request_id_and_extras():
    record = _record(status=503, route="api/v1/x")
    with mplog.request_id_bound("abc-123"):
        mplog.RequestIdFilter().filter(record)
    data = json.loads(mplog.JsonFormatter().format(record))
    assert data["message"] == "hello world"
    assert (data["level"], data["logger"], data["request_id"]) == ("WARNING", "modelport.test", "abc-123")
    assert (data["status"], data["route"]) == (503, "api/v1/x")
    assert data["ts"].endswith("+00:00")


def test_json_formatter_includes_the_traceback():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    data = json.loads(mplog.JsonFormatter().format(record))
    assert "ValueError: boom" in data["exc"]
    assert data["request_id"] is None


def test_request_id_binding_is_scoped_and_per_thread():
    assert mplog.current_request_id() == ""
    seen = []
    with mplog.request_id_bound("outer"):
        thread = threading.Thread(target=lambda: seen.append(mplog.current_request_id()))
        thread.start()
        thread.join()
        with mplog.request_id_bound("inner"):
            assert mplog.current_request_id() == "inner"
        assert mplog.current_request_id() == "outer"
    assert mplog.current_request_id() == ""
    assert seen == [""]  # a plain new thread does not inherit it


def test_unacceptable_request_ids_are_replaced():
    assert mplog.clean_request_id("a.B:c-1_2") == "a.B:c-1_2"
    for bad in ("", None, "x" * 65, "has space", "new\nline", "quote\""):
        assert mplog.clean_request_id(bad) is None
        with mplog.request_id_bound(bad) as bound:
            assert len(bound) == 32 and bound != bad


def test_filter_marks_records_outside_a_request():
    record = _record()
    mplog.RequestIdFilter().filter(record)
    assert record.request_id == "-"


def test_request_id_header_and_access_line(client, db, caplog):
    with caplog.at_level(logging.INFO, logger="modelport.request"):
        resp = client.get("/healthz", headers={"X-Request-Id": "trace-42"})
    assert resp["X-Request-Id"] == "trace-42"
    (line,) = [r for r in caplog.records if r.name == "modelport.request"]
    assert line.getMessage().startswith("GET /healthz 200 ")
    assert (line.request_id, line.status, line.route) == ("trace-42", 200, "healthz")


def test_middleware_chain_stays_async_under_asgi():
    """A sync-only middleware would make Django wrap the chain in sync_to_async adapters (one
    shared thread for every async request); ours must be called natively."""
    handler = ASGIHandler()
    layer = handler._middleware_chain
    for expected in (mplog.RequestLogMiddleware, MetricsMiddleware):
        assert iscoroutinefunction(layer)
        instance = layer.__wrapped__
        assert type(instance) is expected
        assert instance.is_async
        layer = instance.get_response
