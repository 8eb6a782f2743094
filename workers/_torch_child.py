"""Torch-runtime model process, run inside the sandbox by `workers.torch_runtime`:
`python -I _torch_child.py JOB CHANNEL_FD`.

It loads the uploaded model once (state_dict + source, TorchScript or an exported program: user
code, which is why it only ever runs confined), then answers calls on CHANNEL_FD (an inherited
socketpair end) until the channel closes. It is a standalone script: it loads `_convert_child.py` (the same loaders as
conversion) and `wire.py` (the data-plane frame format) by path, as the sandbox shows it only
those files.

Channel messages are `wire` frames (a JSON header, then raw tensor bytes; never pickle), each
preceded by its 4-byte big-endian length:
- from the process, once loaded: `{"ready": true}` or `{"ready": false, "code", "message"}`;
- to the process: `{"op": "run"}` with the input tensors in signature order;
- from the process: `{"ok": true}` with the output tensors (named as in the job), or
  `{"ok": false, "code": "model_error", "message"}` when the model raised.
Everything this process sends is untrusted by the receiver, which validates it.
"""

import importlib.util
import json
import os
import socket
import struct
import sys
import traceback
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
_LEN = struct.Struct(">I")
MAX_REQUEST_BYTES = 1 << 30


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"modelport_{name}", _HERE / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


conv = _load("_convert_child")  # imports torch and numpy, sets the thread count from the env
wire = _load("wire")
torch = conv.torch
np = conv.np


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _send(sock: socket.socket, header: dict[str, Any], tensors: list[tuple[str, Any]] | None = None) -> None:
    frame = wire.pack(header, tensors)
    sock.sendall(_LEN.pack(len(frame)) + frame)


def load_model(job: dict[str, Any], scratch: Path) -> Any:
    torch.manual_seed(0)
    torch.set_num_threads(conv.THREADS)
    artifact = scratch / job["artifact"]
    if job["fmt"] == "state_dict":
        state_dict = conv.load_state_dict_file(artifact)
        model = conv.build_module(scratch / job["source"], job["entrypoint"], job.get("init_kwargs") or {})
        state_dict, _ = conv.strip_data_parallel_prefix(model, state_dict)
        conv.check_state_dict(model, state_dict)
        del state_dict
    elif job["fmt"] == "torchscript":
        model = conv.load_torchscript(artifact)
    elif job["fmt"] == "exported_program":
        return conv.load_exported_program(artifact).module()  # already in inference form
    else:
        raise conv.JobError("invalid_format", f"unknown format {job['fmt']!r}")
    model.eval()
    return model


def run(model: Any, tensors: list[tuple[str, Any]], output_names: list[str]) -> list[tuple[str, Any]]:
    inputs = [torch.from_numpy(np.array(arr)) for _, arr in tensors]  # a writable copy
    with torch.inference_mode():
        out = model(*inputs)
    flat = conv.flatten_outputs(out)
    if len(flat) != len(output_names):
        raise conv.JobError("model_error", f"the model returned {len(flat)} tensors, expected {len(output_names)}")
    return [(name, conv._np(t.detach().cpu().contiguous())) for name, t in zip(output_names, flat, strict=True)]


def serve(sock: socket.socket, model: Any, output_names: list[str]) -> None:
    while True:
        head = _recv_exact(sock, _LEN.size)
        if head is None:
            return
        (length,) = _LEN.unpack(head)
        if length > MAX_REQUEST_BYTES:
            return
        frame = _recv_exact(sock, length)
        if frame is None:
            return
        _, tensors = wire.unpack(frame)
        try:
            outputs = run(model, tensors, output_names)
        except conv.JobError as exc:
            _send(sock, {"ok": False, "code": exc.code, "message": exc.message[:2000]})
            continue
        except Exception as exc:  # the model's own bug: reported, and the process goes on
            mapped = conv._resource_error(exc)
            if mapped is not None:
                _send(sock, {"ok": False, "code": mapped.code, "message": mapped.message[:2000]})
                continue
            where = conv._user_frame(exc, str(Path.cwd() / "in" / "model_source.py"))
            _send(sock, {"ok": False, "code": "model_error", "message": f"{conv._describe(exc)[:2000]}{where}"})
            continue
        _send(sock, {"ok": True}, outputs)


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    sock = socket.socket(fileno=int(sys.argv[2]))
    try:
        model = load_model(job, Path.cwd())
    except conv.JobError as exc:
        _send(sock, {"ready": False, "code": exc.code, "message": exc.message[:4000]})
        os._exit(1)
    except BaseException as exc:
        traceback.print_exc()
        _send(sock, {"ready": False, "code": "load_failed", "message": conv._describe(exc)[:4000]})
        os._exit(1)
    _send(sock, {"ready": True})
    serve(sock, model, job["output_names"])
    sys.stdout.flush()
    os._exit(0)  # skip teardown: user code may have left threads or atexit hooks behind


if __name__ == "__main__":
    main()
