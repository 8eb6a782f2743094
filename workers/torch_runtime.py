"""The torch runtime on a serving worker: a long-lived sandboxed model process per loaded version.

Django-free. A `TorchSession` owns one model process (`_torch_child.py` under
`workers.sandbox.start_in_sandbox`: user/mount/pid/net namespaces, an unprivileged uid, a root of
its own, no network, no unix sockets, a clean environment, rlimits, pids and memory cgroups) and
talks to it over a socketpair in `wire` frames (tensors as raw bytes, never pickle). It has the
interface of an onnxruntime session that `workers.runtime.LoadedModel` calls: `run(output_names,
feeds)`.

The process is untrusted: every reply is checked before use (frame size, output names, dtypes,
rank and static dims against the version's signature, element count).

Failure semantics (each raised as a `ModelCallError` whose `code`/`http_status` the serving loop
answers with, uncharged):
- the model raised in `forward`: `model_error`, 500; the process goes on serving;
- the process died (crash, memory limit, signal): `model_crashed`, 503; it is restarted for the
  next call, after a backoff that doubles per crash in a row;
- no reply by the call's deadline: the process is killed, `model_timeout`, 503; restarted later;
- `CRASH_LIMIT` crashes in a row: `model_crashing` (the caller marks the version failed).
Not thread-safe: the serving loop runs one call at a time per process.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import socket
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workers import wire
from workers.sandbox import GiB, SandboxLimits, SandboxProcess, start_in_sandbox

log = logging.getLogger(__name__)

_CHILD = Path(__file__).with_name("_torch_child.py")
_HELPERS = (Path(__file__).with_name("_convert_child.py"), Path(__file__).with_name("wire.py"))
_LEN = struct.Struct(">I")
CRASH_LIMIT = 5
BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 10.0
MAX_RANK = 8
_LIMIT_CODES = frozenset({"memory_limit", "process_limit", "file_size_limit"})
OUTPUT_DTYPES = frozenset(
    {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"}
)


class ModelCallError(Exception):
    """A call the model process could not answer; `code` and `http_status` are the caller's."""

    code = "model_error"
    http_status = 500


class ModelCrashed(ModelCallError):
    code = "model_crashed"
    http_status = 503


class ModelKeepsCrashing(ModelCrashed):
    code = "model_crashing"


class ModelTimeout(ModelCallError):
    code = "model_timeout"
    http_status = 503


class ModelOutputInvalid(ModelCallError):
    code = "invalid_model_output"


class ModelLoadError(RuntimeError):
    """The model process could not load the model (the upload's problem, with the reason)."""


@dataclass(frozen=True)
class TorchModelSpec:
    """What a model process needs: the upload (format, artifact, source, entrypoint, init
    kwargs) and the version's signature (inputs and outputs as in the API)."""

    fmt: str
    artifact: Path
    source: Path | None
    entrypoint: str
    init_kwargs: dict[str, Any]
    signature: dict[str, Any]
    artifact_suffix: str = ".pt"  # the uploaded file's (content-addressed storage keeps none)


@dataclass(frozen=True)
class TorchLimits:
    memory_bytes: int = 4 * GiB
    threads: int = 1
    load_timeout_s: float = 120.0
    max_reply_bytes: int = 256 * 1024 * 1024


class TorchSession:
    def __init__(self, spec: TorchModelSpec, limits: TorchLimits, *, allow_unsandboxed: bool = False) -> None:
        self.spec = spec
        self.limits = limits
        self.allow_unsandboxed = allow_unsandboxed
        self.output_specs = list(spec.signature.get("outputs", []))
        self.crashes = 0  # in a row
        self.restarts = 0
        self._last_crash = 0.0
        self._proc: SandboxProcess | None = None
        self._sock: socket.socket | None = None
        self._scratch: Path | None = None
        self.start()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the model process and wait until it has loaded the model (ModelLoadError if it
        can't, with the reason; SandboxError if the sandbox can't start)."""
        self.close()
        self._scratch = Path(tempfile.mkdtemp(prefix="modelport-torch-"))
        self._scratch.chmod(0o700)
        job = self._stage(self._scratch)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            theirs.set_inheritable(True)
            self._proc = start_in_sandbox(
                argv=[sys.executable, "-I", str(_CHILD), str(self._scratch / "job.json"), str(theirs.fileno())],
                scratch=self._scratch,
                limits=SandboxLimits(
                    wall_seconds=math.inf, cpu_seconds=10**9, memory_bytes=self.limits.memory_bytes,
                    address_space_bytes=max(self.limits.memory_bytes * 4, 16 * GiB),
                    file_size_bytes=64 * 1024 * 1024, threads=self.limits.threads,
                ),
                allow_unsandboxed=self.allow_unsandboxed,
                readable=[_CHILD, *_HELPERS],
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        self._sock = ours
        del job
        header, _ = self._receive(time.monotonic() + self.limits.load_timeout_s, max_bytes=1 << 20)
        if header.get("ready") is not True:
            message = str(header.get("message") or "the model process did not start")[:4000]
            self.close()
            raise ModelLoadError(message)

    def _stage(self, scratch: Path) -> dict[str, Any]:
        inbox = scratch / "in"
        inbox.mkdir()
        if self.spec.fmt == "state_dict":
            artifact_name = "weights" + (self.spec.artifact_suffix.lower() or ".pt")
        elif self.spec.fmt == "exported_program":
            artifact_name = "model.pt2"
        else:
            artifact_name = "model.pt"
        shutil.copyfile(self.spec.artifact, inbox / artifact_name)
        job = {
            "fmt": self.spec.fmt,
            "artifact": f"in/{artifact_name}",
            "source": None,
            "entrypoint": self.spec.entrypoint,
            "init_kwargs": self.spec.init_kwargs,
            "output_names": [o["name"] for o in self.output_specs],
        }
        if self.spec.source is not None:
            shutil.copyfile(self.spec.source, inbox / "model_source.py")
            job["source"] = "in/model_source.py"
        (scratch / "job.json").write_text(json.dumps(job))
        return job

    def alive(self) -> bool:
        return self._proc is not None and self._proc.alive()

    def memory_bytes(self) -> int:
        used = self._proc.memory_bytes() if self._proc is not None else None
        return used or 0

    def job_pids(self) -> set[int]:
        return self._proc.job_pids() if self._proc is not None else set()

    def close(self) -> None:
        """End the process (every process of the job) and free its memory and files."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            self._proc.close()
            self._proc = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    # -- calls ------------------------------------------------------------------------------

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray],
            deadline: float | None = None) -> list[np.ndarray]:
        """Outputs in signature order. `deadline` (time.monotonic()) bounds the wait for the
        reply, including a restart; None: the load timeout."""
        deadline = deadline if deadline is not None else time.monotonic() + self.limits.load_timeout_s
        if not self.alive():
            self._restart(deadline)
        inputs = [(spec["name"], feeds[spec["name"]]) for spec in self.spec.signature["inputs"]]
        frame = wire.pack({"op": "run"}, inputs)
        assert self._sock is not None
        try:
            self._sock.settimeout(max(0.001, deadline - time.monotonic()))
            self._sock.sendall(_LEN.pack(len(frame)) + frame)
        except TimeoutError:
            raise self._hung() from None
        except OSError:
            raise self._crashed() from None
        header, tensors = self._receive(deadline, max_bytes=self.limits.max_reply_bytes)
        if header.get("ok") is not True:
            code = header.get("code")
            message = str(header.get("message") or "the model failed")[:2000]
            if code in _LIMIT_CODES:
                # Whatever it left behind (a fork bomb's children, a fragmented heap) goes with it.
                self.close()
                self._note_crash()
                raise ModelCrashed(f"the model hit a limit of its process ({message}); the process was restarted")
            raise ModelCallError(message)
        self.crashes = 0
        return self._checked_outputs(tensors)

    def _receive(self, deadline: float, *, max_bytes: int) -> tuple[dict[str, Any], list[tuple[str, np.ndarray]]]:
        assert self._sock is not None
        try:
            head = self._recv_exact(_LEN.size, deadline)
            (length,) = _LEN.unpack(head)
            if length > max_bytes:
                self.close()
                raise ModelOutputInvalid(f"the model process sent {length} bytes, more than the limit of {max_bytes}")
            frame = self._recv_exact(length, deadline)
        except TimeoutError:
            raise self._hung() from None
        except (OSError, EOFError):
            raise self._crashed() from None
        try:
            header, tensors = wire.unpack(frame)
        except (wire.FrameError, ValueError, TypeError, KeyError) as exc:
            self.close()
            raise ModelOutputInvalid(f"the model process sent a malformed reply: {exc}") from None
        if not isinstance(header, dict):
            self.close()
            raise ModelOutputInvalid("the model process sent a malformed reply")
        return header, tensors

    def _recv_exact(self, n: int, deadline: float) -> bytes:
        assert self._sock is not None
        chunks = []
        while n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self._sock.settimeout(remaining)
            chunk = self._sock.recv(min(n, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def _checked_outputs(self, tensors: list[tuple[str, np.ndarray]]) -> list[np.ndarray]:
        names = [name for name, _ in tensors]
        expected = [o["name"] for o in self.output_specs]
        if names != expected:
            raise ModelOutputInvalid(f"the model returned outputs {names[:8]}, expected {expected}")
        out = []
        for (name, arr), spec in zip(tensors, self.output_specs, strict=True):
            dtype = arr.dtype.name
            if dtype not in OUTPUT_DTYPES or dtype != spec["dtype"]:
                raise ModelOutputInvalid(f"output {name!r} is {dtype}, the signature says {spec['dtype']}")
            if arr.ndim > MAX_RANK or arr.ndim != len(spec["shape"]):
                raise ModelOutputInvalid(
                    f"output {name!r} has rank {arr.ndim}, the signature says {len(spec['shape'])}")
            for axis, (got, want) in enumerate(zip(arr.shape, spec["shape"], strict=True)):
                if want is not None and got != want:
                    raise ModelOutputInvalid(
                        f"output {name!r} has size {got} on axis {axis}, the signature says {want}")
            out.append(arr)
        return out

    # -- faults -----------------------------------------------------------------------------

    def _crashed(self) -> ModelCallError:
        reason = "the model process ended"
        if self._proc is not None:
            # The launcher may take a moment to reap the job after the channel closes.
            for _ in range(50):
                if not self._proc.alive():
                    break
                time.sleep(0.01)
            reason = f"the model process ended ({self._proc.death_reason()})"
            tail = self._proc.log_tail(600).strip()
            if tail:
                log.info("torch model process died: %s; log: %s", reason, tail)
        self.close()
        self._note_crash()
        if self.crashes >= CRASH_LIMIT:
            return ModelKeepsCrashing(f"{reason}; it crashed {self.crashes} times in a row")
        return ModelCrashed(reason)

    def _hung(self) -> ModelCallError:
        self.close()
        self._note_crash()
        return ModelTimeout("the model did not answer before the call's deadline; its process was restarted")

    def _note_crash(self) -> None:
        self.crashes += 1
        self._last_crash = time.monotonic()

    def _restart(self, deadline: float) -> None:
        if self.crashes >= CRASH_LIMIT:
            raise ModelKeepsCrashing(f"the model process crashed {self.crashes} times in a row")
        backoff = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** max(0, self.crashes - 1)) if self.crashes else 0.0
        wait = self._last_crash + backoff - time.monotonic()
        if wait > 0:
            if time.monotonic() + wait >= deadline:
                raise ModelCrashed("the model process is restarting after a crash")
            time.sleep(wait)
        self.restarts += 1
        try:
            self.start()
        except ModelLoadError as exc:
            self._note_crash()
            raise ModelCrashed(f"the model process could not restart: {exc}") from None
