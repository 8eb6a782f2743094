"""`Client`: the native Modelport API over httpx, with numpy arrays in and out."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL_VERSION = ("ready", "failed")
TERMINAL_PREDICTION = ("succeeded", "failed", "canceled")

ProgressCallback = Callable[[int, int], None]
VersionCallback = Callable[[dict[str, Any]], None]


class ModelportError(Exception):
    """An error answered by the server (its problem+json fields), or one found by the client.

    `status` is the HTTP status (None for client-side errors); `code` is the machine-readable
    cause where there is one (a failed version's or prediction's `error.code`).
    """

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        title: str = "",
        type: str = "",
        errors: Any = None,
        code: str | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.title = title
        self.type = type
        self.errors = errors
        self.code = code
        self.body: dict[str, Any] = dict(body or {})

    def __str__(self) -> str:
        head = " ".join(str(part) for part in (self.status, self.title) if part)
        code = f" [{self.code}]" if self.code else ""
        return f"{head}{code}: {self.detail}" if head else f"{self.detail}{code}"

    @classmethod
    def from_response(cls, response: httpx.Response) -> ModelportError:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            text = response.text.strip()[:500] or response.reason_phrase
            return cls(text, status=response.status_code, title=response.reason_phrase)
        return cls(
            str(body.get("detail") or body.get("error") or response.reason_phrase),
            status=int(body.get("status") or response.status_code),
            title=str(body.get("title") or response.reason_phrase),
            type=str(body.get("type") or ""),
            errors=body.get("errors"),
            code=body.get("code"),
            body=body,
        )


class Prediction(dict[str, np.ndarray]):
    """A finished prediction: maps output names to arrays; the rest of the API's prediction
    object is in `raw` (and `id`, `version`, `credits`, `metrics`)."""

    def __init__(self, outputs: Mapping[str, np.ndarray], raw: Mapping[str, Any]) -> None:
        super().__init__(outputs)
        self.raw = dict(raw)
        self.id: str = raw["id"]
        self.version: int = raw["version"]
        self.credits: dict[str, Any] = dict(raw.get("credits") or {})
        self.metrics: dict[str, Any] = dict(raw.get("metrics") or {})


class _ProgressFile:
    """A read-only file wrapper that reports bytes read, so a multipart upload shows progress.
    `fileno` is kept so httpx can size the body (Content-Length) without reading it."""

    def __init__(self, handle: IO[bytes], total: int, callback: Callable[[int], None]) -> None:
        self._handle = handle
        self._total = total
        self._callback = callback

    def read(self, size: int = -1) -> bytes:
        chunk = self._handle.read(size)
        if chunk:
            self._callback(len(chunk))
        return chunk

    def fileno(self) -> int:
        return self._handle.fileno()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()


def _split_model(model: str) -> tuple[str, str]:
    owner, sep, name = model.partition("/")
    if not sep or not owner or not name or "/" in name:
        raise ModelportError(f"model must be 'owner/name', got {model!r}")
    return owner, name


def _json_field(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class Client:
    """The Modelport native API. `url` and `api_key` default to MODELPORT_URL (else
    http://127.0.0.1:8000) and MODELPORT_API_KEY. Every method raises `ModelportError` for an
    error answer; network failures surface as httpx exceptions."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = (url or os.environ.get("MODELPORT_URL") or DEFAULT_URL).rstrip("/")
        key = api_key or os.environ.get("MODELPORT_API_KEY")
        if not key:
            raise ModelportError("no API key: pass api_key= or set MODELPORT_API_KEY")
        self._http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout, transport=transport
        )
        self._signatures: dict[tuple[str, int], dict[str, Any]] = {}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ---------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise ModelportError.from_response(response)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    # --- account ----------------------------------------------------------------------------
    def account(self) -> dict[str, Any]:
        """`{"username", "credits", "credits_micro", "is_staff"}`."""
        return self._request("GET", "/api/v1/account")  # type: ignore[no-any-return]

    def status(self) -> dict[str, Any]:
        """The server URL and the caller's account (username, balance)."""
        return {"url": self.url, **self.account()}

    # --- models and versions ----------------------------------------------------------------
    def models(self) -> list[dict[str, Any]]:
        """The caller's models and public ones."""
        return self._request("GET", "/api/v1/models")["results"]  # type: ignore[no-any-return]

    def model(self, model: str) -> dict[str, Any]:
        owner, name = _split_model(model)
        return self._request("GET", f"/api/v1/models/{owner}/{name}")  # type: ignore[no-any-return]

    def create_model(self, name: str, visibility: str = "private", description: str = "") -> dict[str, Any]:
        return self._request(  # type: ignore[no-any-return]
            "POST", "/api/v1/models", json={"name": name, "visibility": visibility, "description": description}
        )

    def version(self, model: str, number: int) -> dict[str, Any]:
        owner, name = _split_model(model)
        return self._request("GET", f"/api/v1/models/{owner}/{name}/versions/{number}")  # type: ignore[no-any-return]

    def upload(
        self,
        model: str,
        format: str,
        artifact: str | os.PathLike[str],
        *,
        source: str | os.PathLike[str] | None = None,
        entrypoint: str | None = None,
        init_kwargs: Mapping[str, Any] | str | None = None,
        inputs: Sequence[Any] | str | None = None,
        outputs: Sequence[str] | str | None = None,
        on_upload: ProgressCallback | None = None,
    ) -> dict[str, Any]:
        """Upload a version (multipart); returns it as queued (202). `on_upload(sent, total)`
        is called as the files' bytes go out."""
        owner, name = _split_model(model)
        paths = {"artifact": Path(artifact), **({"source": Path(source)} if source is not None else {})}
        total = sum(p.stat().st_size for p in paths.values())
        sent = 0

        def advance(n: int) -> None:
            nonlocal sent
            sent += n
            if on_upload is not None:
                on_upload(min(sent, total), total)

        data: dict[str, str] = {"format": format}
        if entrypoint:
            data["entrypoint"] = entrypoint
        for field, value in (("init_kwargs", init_kwargs), ("inputs", inputs), ("outputs", outputs)):
            if value is not None:
                data[field] = _json_field(value)
        handles = {field: path.open("rb") for field, path in paths.items()}
        try:
            files = {
                field: (paths[field].name, _ProgressFile(handle, total, advance), "application/octet-stream")
                for field, handle in handles.items()
            }
            if on_upload is not None:
                on_upload(0, total)
            return self._request(  # type: ignore[no-any-return]
                "POST", f"/api/v1/models/{owner}/{name}/versions", data=data, files=files
            )
        finally:
            for handle in handles.values():
                handle.close()

    def wait_version(
        self,
        model: str,
        number: int,
        *,
        timeout: float = 900.0,
        poll: float = 0.5,
        on_progress: VersionCallback | None = None,
    ) -> dict[str, Any]:
        """Poll a version until it is ready or failed and return it (a failed version is
        returned, not raised: its `error` says why). `on_progress(version)` is called on each
        status change. Raises ModelportError when `timeout` seconds pass first."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            version = self.version(model, number)
            if version["status"] != last:
                last = version["status"]
                if on_progress is not None:
                    on_progress(version)
            if version["status"] in TERMINAL_VERSION:
                return version
            if time.monotonic() >= deadline:
                raise ModelportError(f"version {number} of {model} is still {last} after {timeout:g}s", code="timeout")
            time.sleep(poll)

    def push(
        self,
        model: str,
        format: str,
        artifact: str | os.PathLike[str],
        *,
        source: str | os.PathLike[str] | None = None,
        entrypoint: str | None = None,
        init_kwargs: Mapping[str, Any] | str | None = None,
        inputs: Sequence[Any] | str | None = None,
        outputs: Sequence[str] | str | None = None,
        wait: bool = True,
        timeout: float = 900.0,
        on_upload: ProgressCallback | None = None,
        on_progress: VersionCallback | None = None,
    ) -> dict[str, Any]:
        """Upload a version and (with `wait`) follow it until ready or failed; returns the
        version dict (`status`, `error`, `signature`, `report`, …)."""
        version = self.upload(
            model,
            format,
            artifact,
            source=source,
            entrypoint=entrypoint,
            init_kwargs=init_kwargs,
            inputs=inputs,
            outputs=outputs,
            on_upload=on_upload,
        )
        if not wait:
            return version
        return self.wait_version(model, version["version"], timeout=timeout, on_progress=on_progress)

    # --- predictions ------------------------------------------------------------------------
    def _signature(self, model: str, number: int) -> dict[str, Any]:
        key = (model, number)
        if key not in self._signatures:
            self._signatures[key] = self.version(model, number).get("signature") or {}
        return self._signatures[key]

    def prediction(self, prediction_id: str) -> dict[str, Any]:
        return self._request("GET", f"/api/v1/predictions/{prediction_id}")  # type: ignore[no-any-return]

    def predict(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        version: int | None = None,
        wait: bool = True,
        timeout: float = 120.0,
        idempotency_key: str | None = None,
    ) -> Prediction | dict[str, Any]:
        """Run `model` (`owner/name`; its default version unless `version`) on `inputs`
        (name → array-like). With `wait` returns a `Prediction` (output name → numpy array,
        in the signature's dtype) once it has finished, and raises ModelportError (with the
        error `code`) if it failed; without, returns the API's prediction object at once."""
        owner, name = _split_model(model)
        path = f"/api/v1/models/{owner}/{name}" + (f"/versions/{version}" if version is not None else "")
        body = {"input": {key: np.asarray(value).tolist() for key, value in inputs.items()}}
        headers = {"Prefer": f"wait={max(1, int(timeout))}"} if wait else {}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        data = self._request("POST", f"{path}/predictions", json=body, headers=headers)
        if not wait:
            return data  # type: ignore[no-any-return]
        deadline = time.monotonic() + timeout
        while data["status"] not in TERMINAL_PREDICTION:
            if time.monotonic() >= deadline:
                raise ModelportError(
                    f"prediction {data['id']} is still {data['status']} after {timeout:g}s", code="timeout", body=data
                )
            time.sleep(0.2)
            data = self.prediction(data["id"])
        if data["status"] != "succeeded":
            error = data.get("error") or {}
            raise ModelportError(
                error.get("message") or f"prediction {data['status']}",
                code=error.get("code") or data["status"],
                body=data,
            )
        return Prediction(self._outputs(model, data), data)

    def _outputs(self, model: str, data: Mapping[str, Any]) -> dict[str, np.ndarray]:
        specs = {spec["name"]: spec for spec in self._signature(model, data["version"]).get("outputs", [])}
        outputs = {}
        for key, value in (data.get("output") or {}).items():
            dtype = specs.get(key, {}).get("dtype")
            outputs[key] = np.asarray(value, dtype=dtype) if dtype else np.asarray(value)
        return outputs
