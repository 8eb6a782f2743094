"""Fixtures for the Django-free `workers` package: example models and sandbox helpers."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from workers.sandbox import isolation_level

REPO = Path(__file__).resolve().parents[2]


def load_build_examples() -> ModuleType:
    spec = importlib.util.spec_from_file_location("modelport_build_examples", REPO / "examples" / "build_examples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def build_examples() -> ModuleType:
    return load_build_examples()


@pytest.fixture(scope="session")
def examples_dir(build_examples: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    outdir = tmp_path_factory.mktemp("examples")
    build_examples.build(outdir)
    return outdir


@pytest.fixture(scope="session")
def manifest(examples_dir: Path) -> dict[str, Any]:
    return json.loads((examples_dir / "manifest.json").read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def isolated() -> None:
    """Tests of confinement need the real thing; a host without it can't show anything."""
    if isolation_level() != "namespaces":
        pytest.skip("this host cannot run namespaced sandboxes")


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains `text` (to prove a job left nothing running)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(entry))
    return found
