"""Safety checks on an ONNX file before onnxruntime (or onnx.load with external data) touches it.

ONNX "external data" names other files by relative path; traversal through `..`, absolute paths
and symlinks has had several CVEs (CVE-2022-25882, CVE-2024-27318, CVE-2024-5187). Custom operator
domains would need code we don't load. Both are refused here, from the graph alone: the model must
be loaded with `onnx.load(path, load_external_data=False)` (which this module does itself when
given only a path), so no external file is opened before it is vetted.

Allowed operator domains: the standard ONNX ones only (`""`/`"ai.onnx"` and `"ai.onnx.ml"`), the
same set as `workers.onnx_validate`, plus domains of functions defined inside the model itself
(`model.functions`, built from standard operators). `com.microsoft` (onnxruntime's contrib ops) is
refused too: our exporters never emit it and serving only standard operators keeps the runtime
replaceable.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath

import onnx

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})


class ExternalDataError(ValueError):
    """The model references files or operators it may not. `str(exc)` is the user-facing reason."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def check_external_data(model_path: Path, model: onnx.ModelProto | None = None) -> None:
    """Raise `ExternalDataError` unless every external tensor of the model at `model_path` is a
    plain relative path to a regular, non-symlinked file inside the model's directory, with its
    offset/length inside that file, and every node uses an allowed operator domain.

    `model`, if given, must be `onnx.load(model_path, load_external_data=False)`; otherwise it is
    loaded that way here. Reads file metadata only, never the external data itself.
    """
    if model is None:
        model = onnx.load(str(model_path), load_external_data=False)
    base = Path(os.path.realpath(model_path.parent))
    for owner, tensor in external_tensors(model):
        _check_location(base, owner, tensor)
    check_operator_domains(model)


def external_tensors(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    """(where, tensor) for every tensor of the model that keeps its data in an external file:
    initializers, sparse initializers and node attributes (Constant), in the main graph, every
    subgraph (If/Loop/Scan bodies) and local functions."""
    for owner, tensor in _tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            yield owner, tensor


def check_operator_domains(model: onnx.ModelProto) -> None:
    """Raise `ExternalDataError` for a node whose domain is neither standard nor a function
    defined in the model."""
    local = {(f.domain, f.name) for f in model.functions}
    for node in _nodes(model):
        if node.domain in STANDARD_DOMAINS or (node.domain, node.op_type) in local:
            continue
        raise ExternalDataError(
            f"custom operator {node.domain}::{node.op_type} is not supported; only the standard ONNX "
            "operator domains (ai.onnx, ai.onnx.ml) can be served"
        )


def _check_location(base: Path, owner: str, tensor: onnx.TensorProto) -> None:
    entries = {e.key: e.value for e in tensor.external_data}
    location = entries.get("location", "")
    what = f"tensor {tensor.name!r} ({owner}) stores its data in external file {location!r}"
    if not location or "\x00" in location:
        raise ExternalDataError(f"tensor {tensor.name!r} ({owner}) has external data without a valid location")
    if (
        PurePosixPath(location).is_absolute()
        or PureWindowsPath(location).is_absolute()
        or PureWindowsPath(location).drive
        or location.startswith(("/", "\\"))
    ):
        raise ExternalDataError(f"{what}: absolute paths are not allowed")
    parts = location.replace("\\", "/").split("/")
    if ".." in parts:
        raise ExternalDataError(f"{what}: '..' is not allowed in external data paths")
    # Walk component by component so that no symlink anywhere on the way is followed.
    current = base
    st: os.stat_result | None = None
    for part in parts:
        if part in ("", "."):
            continue
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            raise ExternalDataError(f"{what}: the file was not uploaded") from None
        if stat.S_ISLNK(st.st_mode):
            raise ExternalDataError(f"{what}: symbolic links are not allowed")
    if st is None or not stat.S_ISREG(st.st_mode):
        raise ExternalDataError(f"{what}: not a regular file")
    # Belt and braces: the resolved path must still be inside the model's directory.
    resolved = Path(os.path.realpath(current))
    if resolved != base and base not in resolved.parents:
        raise ExternalDataError(f"{what}: the file is outside the model's directory")
    try:
        offset = int(entries.get("offset", "0") or 0)
        length = int(entries["length"]) if entries.get("length") else None
    except ValueError:
        raise ExternalDataError(f"{what}: offset/length are not integers") from None
    if offset < 0 or (length is not None and (length < 0 or offset + length > st.st_size)) or offset > st.st_size:
        raise ExternalDataError(f"{what}: offset/length point past the end of the file")


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        yield from _subgraphs(node)


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.HasField("g"):
            yield from _graphs(attr.g)
        for sub in attr.graphs:
            yield from _graphs(sub)


def _model_graphs(model: onnx.ModelProto) -> Iterator[onnx.GraphProto]:
    """The main graph and every subgraph (If/Loop/Scan bodies), also those inside local functions."""
    yield from _graphs(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _subgraphs(node)


def _nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    for graph in _model_graphs(model):
        yield from graph.node
    for function in model.functions:
        yield from function.node


def _tensors(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    """Every TensorProto that may carry data: initializers, sparse initializers and tensors in
    node attributes (e.g. Constant), in the main graph, subgraphs and local functions."""
    for graph in _model_graphs(model):
        where = "initializer" if graph is model.graph else f"initializer of subgraph {graph.name!r}"
        for tensor in graph.initializer:
            yield where, tensor
        for sparse in graph.sparse_initializer:
            yield f"sparse {where}", sparse.values
            yield f"sparse {where}", sparse.indices
    nodes: list[onnx.NodeProto] = list(_nodes(model))
    for node in nodes:
        for attr in node.attribute:
            where = f"attribute {attr.name!r} of node {node.name or node.op_type!r}"
            if attr.HasField("t"):
                yield where, attr.t
            for tensor in attr.tensors:
                yield where, tensor
            if attr.HasField("sparse_tensor"):
                yield where, attr.sparse_tensor.values
                yield where, attr.sparse_tensor.indices
            for sparse in attr.sparse_tensors:
                yield where, sparse.values
                yield where, sparse.indices


DATA_SUFFIX = ".onnxdata"


def content_address_external_data(model_path: Path) -> list[Path]:
    """Rename every external data file of the (vetted) model at `model_path` to
    `<sha256 of its bytes>.onnxdata` in the same folder and point the model's references at the
    new names, so the model and its data can sit side by side in a content-addressed store
    without clashing with another model's. Returns the data files (none for a self-contained
    model, which is left untouched). Call `check_external_data` first."""
    import hashlib

    model = onnx.load(str(model_path), load_external_data=False)
    renamed: dict[str, Path] = {}
    for _, tensor in external_tensors(model):
        for entry in tensor.external_data:
            if entry.key != "location":
                continue
            if entry.value not in renamed:
                source = model_path.parent / entry.value
                digest = hashlib.sha256()
                with open(source, "rb") as data:
                    while chunk := data.read(1024 * 1024):
                        digest.update(chunk)
                target = model_path.parent / f"{digest.hexdigest()}{DATA_SUFFIX}"
                os.replace(source, target)
                renamed[entry.value] = target
            entry.value = renamed[entry.value].name
    if renamed:
        # The proto alone (its tensors' bytes stay in the data files): no onnx.save, which
        # would try to write external data itself.
        model_path.write_bytes(model.SerializeToString())
    return sorted(set(renamed.values()))


def external_data_bytes(model_path: Path) -> int:
    """Total size of the distinct external data files the model at `model_path` references."""
    model = onnx.load(str(model_path), load_external_data=False)
    names = {e.value for _, t in external_tensors(model) for e in t.external_data if e.key == "location"}
    return sum((model_path.parent / name).stat().st_size for name in names)
