"""Build the example models, one per upload format, with a fixed seed.

    python examples/build_examples.py OUTDIR

writes into OUTDIR:

- `mlp.onnx`: MLP 784-256-10 (ONNX upload; input `input` float32 [null, 784]);
- `cnn.pt`: small CNN with BatchNorm as TorchScript (input `image` float32 [null, 3, 32, 32]);
- `lstm.safetensors` + `lstm_model.py`: Embedding+LSTM sentiment classifier as state_dict + source
  (entrypoint `SentimentLSTM`, input `tokens` int64 [null, null]);
- `two_io.safetensors` + `two_io_model.py`: two inputs, two outputs (entrypoint `build_two_tower`);
- `manifest.json`: per example the upload fields (format, artifact, source, entrypoint,
  init_kwargs, inputs, outputs) that README.md's curl commands send.

The weights are random (seeded), not trained: the examples exist to exercise the upload paths.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

HERE = Path(__file__).resolve().parent
SEED = 1234

MANIFEST: dict[str, dict[str, Any]] = {
    "mlp": {"format": "onnx", "artifact": "mlp.onnx", "outputs": ["logits"]},
    "cnn": {
        "format": "torchscript",
        "artifact": "cnn.pt",
        "inputs": [{"name": "image", "dtype": "float32", "shape": [None, 3, 32, 32]}],
        "outputs": ["logits"],
    },
    "lstm": {
        "format": "state_dict",
        "artifact": "lstm.safetensors",
        "source": "lstm_model.py",
        "entrypoint": "SentimentLSTM",
        "init_kwargs": {"vocab_size": 1000, "embed_dim": 32, "hidden_dim": 64, "num_classes": 2},
        "inputs": [{"name": "tokens", "dtype": "int64", "shape": [None, None]}],
        "outputs": ["logits"],
    },
    "two_io": {
        "format": "state_dict",
        "artifact": "two_io.safetensors",
        "source": "two_io_model.py",
        "entrypoint": "build_two_tower",
        "init_kwargs": {"feature_dim": 8, "context_dim": 4, "hidden_dim": 16},
        "inputs": [
            {"name": "features", "dtype": "float32", "shape": [None, 8]},
            {"name": "context", "dtype": "float32", "shape": [None, 4]},
        ],
        "outputs": ["score", "embedding"],
    },
}


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(image), 1))


def load_source(name: str) -> ModuleType:
    """Import an example source file (they are plain files, not a package)."""
    spec = importlib.util.spec_from_file_location(f"modelport_example_{name}", HERE / f"{name}.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_lstm() -> nn.Module:
    torch.manual_seed(SEED)
    return load_source("lstm_model").SentimentLSTM(**MANIFEST["lstm"]["init_kwargs"]).eval()  # type: ignore[no-any-return]


def build_two_io() -> nn.Module:
    torch.manual_seed(SEED)
    return load_source("two_io_model").build_two_tower(**MANIFEST["two_io"]["init_kwargs"]).eval()  # type: ignore[no-any-return]


def build_cnn() -> nn.Module:
    torch.manual_seed(SEED)
    model = SmallCNN()
    # A few forward passes in training mode give BatchNorm non-trivial running statistics.
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, 3, 32, 32) * 2 + 0.5)
    return model.eval()


def build_mlp() -> nn.Module:
    torch.manual_seed(SEED)
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10)).eval()


def build(outdir: Path) -> dict[str, dict[str, Any]]:
    """Write every example into `outdir`; returns the manifest (also written as manifest.json)."""
    outdir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The legacy exporter warns that it is deprecated; it needs no extra package (onnxscript).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            build_mlp(),
            (torch.randn(2, 784),),
            str(outdir / "mlp.onnx"),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=18,
            dynamo=False,
        )
    torch.jit.save(torch.jit.script(build_cnn()), str(outdir / "cnn.pt"))
    save_file(build_lstm().state_dict(), str(outdir / "lstm.safetensors"))
    save_file(build_two_io().state_dict(), str(outdir / "two_io.safetensors"))
    for name in ("lstm_model.py", "two_io_model.py"):
        shutil.copyfile(HERE / name, outdir / name)
    (outdir / "manifest.json").write_text(json.dumps(MANIFEST, indent=2) + "\n")
    return MANIFEST


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    outdir = Path(argv[1])
    build(outdir)
    for path in sorted(outdir.iterdir()):
        print(f"{path.stat().st_size:>10}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
