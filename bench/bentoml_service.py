"""Optional BentoML peer for bench/run.py: the same ONNX model behind BentoML 1.4, one worker,
access log off (as FINDINGS measured it). Not part of the platform; run by the bench with the
Python named in BENCH_BENTOML_PYTHON (a separate virtualenv with `bentoml onnxruntime numpy`):

    BENCH_MODEL=/path/mlp.onnx python -m bentoml serve bentoml_service:MLP --working-dir bench
"""

from __future__ import annotations

import os

import bentoml
import numpy as np
import onnxruntime as ort


@bentoml.service(workers=1, logging={"access": {"enabled": False}})
class MLP:
    def __init__(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(os.environ["BENCH_MODEL"], options, providers=["CPUExecutionProvider"])

    @bentoml.api
    def predict(self, x: list[list[float]]) -> list[list[float]]:
        return self.session.run(None, {"x": np.asarray(x, dtype=np.float32)})[0].tolist()
