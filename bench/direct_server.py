"""Baseline: the thinnest HTTP server around an in-process onnxruntime session (raw ASGI under
uvicorn, no framework, no auth, no metering). `python bench/direct_server.py MODEL.onnx PORT`."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime as ort
import uvicorn

MODEL, PORT = sys.argv[1], int(sys.argv[2])
options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(MODEL, options, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    x = np.asarray(json.loads(body)["input"][name], dtype=np.float32)
    out = session.run(None, {name: x})[0]
    payload = json.dumps({"output": out.tolist()}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning", access_log=False)
