#!/usr/bin/env bash
# GPU check (issue: serving on GPU). Run from the repository root on a machine with an NVIDIA GPU.
# That machine has no package registry: bring wheels in ./wheels (pip download on a connected
# machine: onnxruntime-gpu[cuda,cudnn], numpy, onnx, torch==2.13.0 CPU for the CNN export).
set -euo pipefail
python3 -m venv /tmp/mp-gpu-venv
/tmp/mp-gpu-venv/bin/pip install -q --no-index --find-links ./wheels numpy onnx "onnxruntime-gpu[cuda,cudnn]" torch
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
/tmp/mp-gpu-venv/bin/python bench/gpu_check.py
