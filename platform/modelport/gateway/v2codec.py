"""Open Inference Protocol (KServe V2) over HTTP, with Triton's binary tensor data extension.

A pure codec: bytes and header values in, numpy arrays and plain data out (and back). It imports
neither Django nor the serving runtime, so views call it and tests drive it directly.

Wire format, as ``tritonclient.http`` sends and parses it:

- The request body is a JSON object, optionally followed by raw tensor bytes. When raw bytes follow,
  the ``Inference-Header-Content-Length`` header gives the length in bytes of the JSON part; each
  input carrying raw bytes says so with ``parameters.binary_data_size``, and the raw parts follow
  the JSON in the order the inputs are listed.
- Raw tensor data is little-endian, row-major, unpadded. BOOL is one byte per element (0 or 1).
  BYTES is, per element, a 4-byte little-endian unsigned length followed by that many bytes.
- JSON ``data`` is row-major, flat or nested to the tensor's shape.
- Outputs are sent as raw bytes when the request asks: ``parameters.binary_data`` on a requested
  output, else the request's ``parameters.binary_data_output``, else JSON.
- A compressed request body (``Content-Encoding``) is decompressed first; the header length counts
  bytes of the decompressed body. Likewise a compressed response keeps the uncompressed length in
  ``Inference-Header-Content-Length``.

Failure semantics: every refusal of client input raises :class:`V2ProtocolError`, whose message is
meant for the client (HTTP 400, ``{"error": message}``). Parsing checks every size against the body
and the element limit before it allocates, so memory use stays proportional to the body. Encoding
functions take server-side values; a value they cannot encode is a server bug and raises
``ValueError``.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DATATYPE_TO_DTYPE",
    "HEADER_LENGTH_HEADER",
    "MAX_DIMS",
    "InferRequest",
    "RequestedOutput",
    "V2ProtocolError",
    "datatype_to_dtype",
    "decompress_body",
    "dtype_to_datatype",
    "encode_infer_response",
    "maybe_compress",
    "model_metadata",
    "parse_infer_request",
]

HEADER_LENGTH_HEADER = "Inference-Header-Content-Length"

# numpy's own limit is 64; no real model input comes close to this one.
MAX_DIMS = 32

# V2 datatype -> numpy dtype name. BYTES tensors are numpy object arrays holding ``bytes``.
# BF16 is left out on purpose: numpy has no bfloat16, so it is refused as an unknown datatype.
DATATYPE_TO_DTYPE: Mapping[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "object",
}
_DTYPE_TO_DATATYPE = {dtype: datatype for datatype, dtype in DATATYPE_TO_DTYPE.items()}
_BYTES_LENGTH_SIZE = 4
_HEADER_LENGTH_RE = re.compile(r"[0-9]{1,19}")
_DECOMPRESS_CHUNK = 64 * 1024


class V2ProtocolError(Exception):
    """The client sent something the protocol refuses. ``message`` is safe to show the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class RequestedOutput:
    """One entry of the request's ``outputs``; ``binary`` already resolves the request default."""

    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    """A parsed inference request.

    ``inputs`` keeps the order the request declared; every array is C-contiguous, writable, a copy
    (never a view of the body), in native byte order, and has the declared shape. BYTES inputs are object arrays of
    ``bytes``. ``outputs`` is None when the request names no outputs (meaning: all of them).
    ``parameters`` is the request's ``parameters`` object as sent (``binary_data_output`` included).
    """

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput] | None
    binary_output_default: bool
    parameters: dict[str, Any]

    def output_is_binary(self, name: str) -> bool:
        """Whether output ``name`` goes back as raw bytes."""
        for requested in self.outputs or ():
            if requested.name == name:
                return requested.binary
        return self.binary_output_default

    def select_outputs(
        self, produced: Sequence[tuple[str, np.ndarray]]
    ) -> tuple[list[tuple[str, np.ndarray]], dict[str, bool]]:
        """Pick the outputs to return and how, ready for :func:`encode_infer_response`.

        With no requested outputs every produced output is returned in produced order; otherwise
        the requested ones in requested order. Naming an output the model does not produce raises
        V2ProtocolError.
        """
        by_name = dict(produced)
        if self.outputs is None:
            chosen = list(produced)
        else:
            chosen = []
            for requested in self.outputs:
                if requested.name not in by_name:
                    raise V2ProtocolError(f"unknown output {_short(requested.name)}")
                chosen.append((requested.name, by_name[requested.name]))
        return chosen, {name: self.output_is_binary(name) for name, _ in chosen}


@dataclass(frozen=True)
class _InputSpec:
    name: str
    datatype: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    count: int
    data: Any  # the JSON ``data`` value, or None when the tensor comes as raw bytes
    binary_size: int | None


# ---------------------------------------------------------------------------------------------
# datatypes


def datatype_to_dtype(datatype: object) -> np.dtype[Any]:
    """The numpy dtype for a V2 datatype string; anything else raises V2ProtocolError."""
    if not isinstance(datatype, str) or datatype not in DATATYPE_TO_DTYPE:
        raise V2ProtocolError(f"unknown datatype {_short(datatype)}")
    return np.dtype(DATATYPE_TO_DTYPE[datatype])


def dtype_to_datatype(dtype: np.dtype[Any] | str | type) -> str:
    """The V2 datatype for a numpy dtype (or dtype name). Strings and objects map to BYTES.

    Raises ValueError for a dtype V2 cannot carry (complex, datetime, ...): a server-side bug.
    """
    if isinstance(dtype, str) and dtype in ("bytes", "str", "string"):
        return "BYTES"
    resolved = np.dtype(dtype)
    if resolved.kind in "OSU":
        return "BYTES"
    datatype = _DTYPE_TO_DATATYPE.get(resolved.newbyteorder("=").name)
    if datatype is None:
        raise ValueError(f"numpy dtype {resolved} has no V2 datatype")
    return datatype


# ---------------------------------------------------------------------------------------------
# request


def parse_infer_request(
    body: bytes,
    *,
    header_length: int | str | None,
    max_elements: int,
    max_body_bytes: int,
) -> InferRequest:
    """Parse an already decompressed ``POST .../infer`` body.

    ``header_length`` is the ``Inference-Header-Content-Length`` request header (int or the raw
    header string), None when absent: then the whole body is the JSON object. ``max_elements``
    bounds the elements of all inputs together; ``max_body_bytes`` bounds ``len(body)``.

    Raises V2ProtocolError, and nothing else, for any body and header value.
    """
    body = bytes(body)
    if len(body) > max_body_bytes:
        raise V2ProtocolError(f"request body exceeds {max_body_bytes} bytes")
    json_length = _check_header_length(header_length, len(body))
    header = _load_json_object(body[:json_length])

    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise V2ProtocolError("request 'id' must be a string")

    parameters = header.get("parameters", {})
    if not isinstance(parameters, dict):
        raise V2ProtocolError("request 'parameters' must be a JSON object")
    binary_output_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_output_default, bool):
        raise V2ProtocolError("parameter 'binary_data_output' must be true or false")

    specs = _input_specs(header, body_length=len(body), max_elements=max_elements)
    outputs = _requested_outputs(header.get("outputs"), binary_output_default)

    # Every size is checked against the body before any tensor is decoded.
    binary_total = sum(spec.binary_size or 0 for spec in specs)
    remaining = len(body) - json_length
    if binary_total and header_length is None:
        raise V2ProtocolError(f"binary tensor data needs the {HEADER_LENGTH_HEADER} header")
    if binary_total > remaining:
        raise V2ProtocolError(
            f"binary tensor data is {binary_total} bytes but the body holds {remaining} bytes after the JSON header"
        )
    if binary_total < remaining:
        raise V2ProtocolError(f"request body has {remaining - binary_total} unexpected bytes after the tensor data")

    inputs: dict[str, np.ndarray] = {}
    view = memoryview(body)
    offset = json_length
    for spec in specs:
        if spec.binary_size is None:
            inputs[spec.name] = _decode_json_tensor(spec)
        else:
            chunk = view[offset : offset + spec.binary_size]
            offset += spec.binary_size
            inputs[spec.name] = _decode_binary_tensor(spec, chunk)

    return InferRequest(
        id=request_id,
        inputs=inputs,
        outputs=outputs,
        binary_output_default=binary_output_default,
        parameters=parameters,
    )


def _refuse_constant(name: str) -> None:
    raise V2ProtocolError(f"inference request header holds {name}, which is not JSON (a binary tensor can carry it)")


def _check_header_length(header_length: int | str | None, body_length: int) -> int:
    if header_length is None:
        return body_length
    if isinstance(header_length, str):
        text = header_length.strip(" \t")
        if not _HEADER_LENGTH_RE.fullmatch(text):
            raise V2ProtocolError(f"{HEADER_LENGTH_HEADER} must be a non-negative integer")
        value = int(text)
    elif isinstance(header_length, int) and not isinstance(header_length, bool):
        value = header_length
    else:
        raise V2ProtocolError(f"{HEADER_LENGTH_HEADER} must be a non-negative integer")
    if value < 0:
        raise V2ProtocolError(f"{HEADER_LENGTH_HEADER} must be a non-negative integer")
    if value > body_length:
        raise V2ProtocolError(f"{HEADER_LENGTH_HEADER} {value} is beyond the request body of {body_length} bytes")
    return value


def _load_json_object(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise V2ProtocolError("inference request header is not valid UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    # ValueError covers malformed JSON and integers past the str-to-int digit limit;
    # RecursionError deeply nested arrays. NaN and Infinity are not JSON: refused
    # (_refuse_constant), as the native API refuses them.
    except (ValueError, RecursionError):
        raise V2ProtocolError("inference request header is not valid JSON") from None
    if not isinstance(value, dict):
        raise V2ProtocolError("inference request header must be a JSON object")
    return value


def _input_specs(header: dict[str, Any], *, body_length: int, max_elements: int) -> list[_InputSpec]:
    if "inputs" not in header:
        raise V2ProtocolError("request has no 'inputs'")
    raw_inputs = header["inputs"]
    if not isinstance(raw_inputs, list):
        raise V2ProtocolError("request 'inputs' must be a list")
    if not raw_inputs:
        raise V2ProtocolError("request 'inputs' must not be empty")

    specs: list[_InputSpec] = []
    seen: set[str] = set()
    total = 0
    for index, raw in enumerate(raw_inputs):
        spec = _input_spec(index, raw, body_length=body_length, max_elements=max_elements)
        if spec.name in seen:
            raise V2ProtocolError(f"duplicate input {_short(spec.name)}")
        seen.add(spec.name)
        total += spec.count
        if total > max_elements:
            raise V2ProtocolError(f"request inputs hold more than the limit of {max_elements} elements")
        specs.append(spec)
    return specs


def _input_spec(index: int, raw: object, *, body_length: int, max_elements: int) -> _InputSpec:
    if not isinstance(raw, dict):
        raise V2ProtocolError(f"input #{index} must be a JSON object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise V2ProtocolError(f"input #{index} needs a non-empty string 'name'")
    label = _short(name)
    if "datatype" not in raw:
        raise V2ProtocolError(f"input {label} has no 'datatype'")
    datatype = raw["datatype"]
    if not isinstance(datatype, str) or datatype not in DATATYPE_TO_DTYPE:
        raise V2ProtocolError(f"input {label} has unknown datatype {_short(datatype)}")
    dtype = np.dtype(DATATYPE_TO_DTYPE[datatype])
    if "shape" not in raw:
        raise V2ProtocolError(f"input {label} has no 'shape'")
    shape = _check_shape(label, raw["shape"], max_elements)
    count = _product(shape)

    parameters = raw.get("parameters", {})
    if not isinstance(parameters, dict):
        raise V2ProtocolError(f"input {label} 'parameters' must be a JSON object")
    if "shared_memory_region" in parameters:
        raise V2ProtocolError(f"input {label}: shared memory is not supported")

    binary_size = parameters.get("binary_data_size")
    has_data = "data" in raw
    if binary_size is not None and has_data:
        raise V2ProtocolError(f"input {label} has both 'data' and 'binary_data_size'")
    if binary_size is None and not has_data:
        raise V2ProtocolError(f"input {label} has neither 'data' nor 'binary_data_size'")
    if binary_size is not None:
        _check_binary_size(label, datatype, dtype, shape, count, binary_size, body_length)
    return _InputSpec(
        name=name,
        datatype=datatype,
        dtype=dtype,
        shape=shape,
        count=count,
        data=raw.get("data"),
        binary_size=binary_size,
    )


def _check_shape(label: str, raw_shape: object, max_elements: int) -> tuple[int, ...]:
    if not isinstance(raw_shape, list) or not all(type(dim) is int and dim >= 0 for dim in raw_shape):
        raise V2ProtocolError(f"input {label} 'shape' must be a list of non-negative integers")
    if len(raw_shape) > MAX_DIMS:
        raise V2ProtocolError(f"input {label} 'shape' has more than {MAX_DIMS} dimensions")
    # The product of the non-zero dimensions bounds what numpy must index, so a zero dimension
    # cannot smuggle in a huge one. Python ints cannot overflow.
    span = _product(tuple(max(dim, 1) for dim in raw_shape))
    if span > max_elements:
        raise V2ProtocolError(f"input {label} shape {raw_shape} exceeds the limit of {max_elements} elements")
    return tuple(raw_shape)


def _check_binary_size(
    label: str,
    datatype: str,
    dtype: np.dtype[Any],
    shape: tuple[int, ...],
    count: int,
    size: object,
    body_length: int,
) -> None:
    if type(size) is not int or size < 0:
        raise V2ProtocolError(f"input {label} 'binary_data_size' must be a non-negative integer")
    if size > body_length:
        raise V2ProtocolError(f"input {label} binary_data_size {size} is larger than the request body")
    if datatype == "BYTES":
        if size < count * _BYTES_LENGTH_SIZE:
            raise V2ProtocolError(f"input {label} binary_data_size {size} is too small for {count} BYTES elements")
    elif size != count * dtype.itemsize:
        raise V2ProtocolError(
            f"input {label} binary_data_size {size} does not match shape {list(shape)} of "
            f"{datatype} ({count * dtype.itemsize} bytes)"
        )


def _requested_outputs(raw_outputs: object, default: bool) -> list[RequestedOutput] | None:
    if raw_outputs is None:
        return None
    if not isinstance(raw_outputs, list):
        raise V2ProtocolError("request 'outputs' must be a list")
    outputs: list[RequestedOutput] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_outputs):
        if not isinstance(raw, dict):
            raise V2ProtocolError(f"output #{index} must be a JSON object")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise V2ProtocolError(f"output #{index} needs a non-empty string 'name'")
        label = _short(name)
        if name in seen:
            raise V2ProtocolError(f"duplicate output {label}")
        seen.add(name)
        parameters = raw.get("parameters", {})
        if not isinstance(parameters, dict):
            raise V2ProtocolError(f"output {label} 'parameters' must be a JSON object")
        if parameters.get("classification", 0) not in (0, None):
            raise V2ProtocolError(f"output {label}: classification is not supported")
        if "shared_memory_region" in parameters:
            raise V2ProtocolError(f"output {label}: shared memory is not supported")
        binary = parameters.get("binary_data", default)
        if not isinstance(binary, bool):
            raise V2ProtocolError(f"output {label} 'binary_data' must be true or false")
        outputs.append(RequestedOutput(name=name, binary=binary))
    return outputs


def _decode_binary_tensor(spec: _InputSpec, chunk: memoryview) -> np.ndarray:
    label = _short(spec.name)
    if spec.datatype == "BYTES":
        return _decode_binary_bytes(label, spec, chunk)
    if spec.datatype == "BOOL":
        raw = np.frombuffer(chunk, dtype=np.uint8)
        if raw.size and int(raw.max()) > 1:
            raise V2ProtocolError(f"BOOL input {label} has a byte other than 0 or 1")
        array = raw.astype(np.bool_)
    else:
        # astype copies: the result owns writable memory in native byte order.
        array = np.frombuffer(chunk, dtype=spec.dtype.newbyteorder("<")).astype(spec.dtype)
    return array.reshape(spec.shape)


def _decode_binary_bytes(label: str, spec: _InputSpec, chunk: memoryview) -> np.ndarray:
    elements: list[bytes] = []
    offset = 0
    end = len(chunk)
    for index in range(spec.count):
        if offset + _BYTES_LENGTH_SIZE > end:
            raise V2ProtocolError(f"BYTES element {index} of input {label} overruns its tensor")
        length = int.from_bytes(chunk[offset : offset + _BYTES_LENGTH_SIZE], "little")
        offset += _BYTES_LENGTH_SIZE
        if offset + length > end:
            raise V2ProtocolError(f"BYTES element {index} of input {label} overruns its tensor")
        elements.append(bytes(chunk[offset : offset + length]))
        offset += length
    if offset != end:
        raise V2ProtocolError(f"input {label} has {end - offset} bytes after its last BYTES element")
    return _object_array(elements, spec.shape)


def _decode_json_tensor(spec: _InputSpec) -> np.ndarray:
    label = _short(spec.name)
    data = spec.data
    if not isinstance(data, list):
        raise V2ProtocolError(f"input {label} 'data' must be a JSON array")
    flat = _flatten(label, data, spec.shape, spec.count)
    datatype = spec.datatype

    if datatype == "BYTES":
        if not all(type(value) is str for value in flat):
            raise V2ProtocolError(f"input {label} (BYTES) 'data' must hold only strings")
        try:
            encoded = [value.encode("utf-8") for value in flat]
        except UnicodeEncodeError:
            raise V2ProtocolError(f"input {label} (BYTES) 'data' is not valid Unicode") from None
        return _object_array(encoded, spec.shape)

    if datatype == "BOOL":
        if not all(type(value) is bool for value in flat):
            raise V2ProtocolError(f"input {label} (BOOL) 'data' must hold only true or false")
        return np.array(flat, dtype=np.bool_).reshape(spec.shape)

    if spec.dtype.kind in "iu":
        if not all(type(value) is int for value in flat):
            raise V2ProtocolError(f"input {label} ({datatype}) 'data' must hold only integers")
        info = np.iinfo(spec.dtype)
        if flat and (min(flat) < info.min or max(flat) > info.max):
            raise V2ProtocolError(f"input {label} ({datatype}) 'data' has a value out of range")
        return np.array(flat, dtype=spec.dtype).reshape(spec.shape)

    # Floating point: JSON integers are accepted as numbers; bools are not numbers here.
    if not all(type(value) is float or type(value) is int for value in flat):
        raise V2ProtocolError(f"input {label} ({datatype}) 'data' must hold only numbers")
    largest = float(np.finfo(spec.dtype).max)
    # JSON has no NaN or infinity: the literals are refused by the parser, and a number too
    # large for a double (1e999, which Python reads as inf) or for the dtype is out of range,
    # as in the native API. Binary tensors carry any IEEE value.
    if any(not abs(value) <= largest for value in flat):
        raise V2ProtocolError(f"input {label} ({datatype}) 'data' has a value out of range (or not finite)")
    return np.array([float(value) for value in flat], dtype=spec.dtype).reshape(spec.shape)


def _flatten(label: str, data: list[Any], shape: tuple[int, ...], count: int) -> list[Any]:
    """Row-major values of ``data``, given flat or nested exactly to ``shape``."""
    if not any(isinstance(value, list) for value in data):
        if len(data) != count:
            raise V2ProtocolError(
                f"input {label} has {len(data)} values in 'data' but shape {list(shape)} needs {count}"
            )
        return data
    flat: list[Any] = []
    if not _flatten_nested(data, shape, flat):
        raise V2ProtocolError(f"input {label} 'data' is not nested to shape {list(shape)}")
    return flat


def _flatten_nested(data: object, shape: tuple[int, ...], out: list[Any]) -> bool:
    # Recursion depth is bounded by MAX_DIMS.
    if not shape:
        if isinstance(data, list):
            return False
        out.append(data)
        return True
    if not isinstance(data, list) or len(data) != shape[0]:
        return False
    return all(_flatten_nested(item, shape[1:], out) for item in data)


def _object_array(elements: list[Any], shape: tuple[int, ...]) -> np.ndarray:
    # Filled element by element so numpy never reads a bytes value as a sequence.
    array = np.empty(len(elements), dtype=object)
    for index, element in enumerate(elements):
        array[index] = element
    return array.reshape(shape)


def _product(dims: tuple[int, ...]) -> int:
    result = 1
    for dim in dims:
        result *= dim
    return result


def _short(value: object, limit: int = 64) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# response


def encode_infer_response(
    *,
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Sequence[tuple[str, np.ndarray]],
    binary: Mapping[str, bool] | bool = False,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """Encode an inference response; returns ``(body, header_length)``.

    ``binary`` says per output name (or for all) whether it goes as raw bytes; missing names go as
    JSON. When the result holds raw bytes, ``header_length`` is the JSON part's length and must be
    sent as ``Inference-Header-Content-Length`` (tritonclient reads raw outputs only then); else
    it is None and the body is plain JSON. A BYTES output holding non-UTF-8 bytes cannot be JSON,
    so it is sent raw whatever ``binary`` says; tritonclient decodes either per output. Floats that
    are NaN or infinite go into JSON as ``NaN``/``Infinity``, which tritonclient's parser accepts.
    """
    header: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        header["id"] = request_id
    if parameters is not None:
        header["parameters"] = dict(parameters)

    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    seen: set[str] = set()
    for name, value in outputs:
        if name in seen:
            raise ValueError(f"output {name!r} is given twice")
        seen.add(name)
        array = np.asarray(value)
        datatype = dtype_to_datatype(array.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        as_binary = binary if isinstance(binary, bool) else binary.get(name, False)
        values: list[Any] | None = None
        if not as_binary:
            values = _json_values(array, datatype)
        if values is None:
            raw = _raw_bytes(array, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = values
        entries.append(entry)
    header["outputs"] = entries

    # ensure_ascii keeps the JSON ASCII, so its length in characters is its length in bytes.
    encoded = json.dumps(header, separators=(",", ":")).encode("ascii")
    if not chunks:
        return encoded, None
    return b"".join([encoded, *chunks]), len(encoded)


def _json_values(array: np.ndarray, datatype: str) -> list[Any] | None:
    """Row-major JSON values, or None where the tensor cannot be JSON (non-UTF-8 BYTES)."""
    if datatype != "BYTES":
        values: list[Any] = array.reshape(-1).tolist()
        return values
    texts: list[Any] = []
    for element in _bytes_elements(array):
        try:
            texts.append(element.decode("utf-8"))
        except UnicodeDecodeError:
            return None
    return texts


def _raw_bytes(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts: list[bytes] = []
        for element in _bytes_elements(array):
            if len(element) > 0xFFFFFFFF:
                raise ValueError("a BYTES element is longer than 4 GiB")
            parts.append(len(element).to_bytes(_BYTES_LENGTH_SIZE, "little"))
            parts.append(element)
        return b"".join(parts)
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return np.ascontiguousarray(little).tobytes()


def _bytes_elements(array: np.ndarray) -> list[bytes]:
    elements: list[bytes] = []
    for element in array.reshape(-1).tolist():
        if isinstance(element, bytes):
            elements.append(element)
        elif isinstance(element, str):
            elements.append(element.encode("utf-8"))
        else:
            raise ValueError(f"a BYTES output holds a {type(element).__name__}, not bytes or str")
    return elements


# ---------------------------------------------------------------------------------------------
# compression


def decompress_body(body: bytes, content_encoding: str | None, *, max_bytes: int) -> bytes:
    """Undo the request's ``Content-Encoding`` (none, identity, gzip/x-gzip or deflate).

    Output is produced in bounded chunks and refused once it passes ``max_bytes``, so a small
    compressed bomb never expands in memory. ``deflate`` accepts the zlib wrapping (what HTTP
    means and tritonclient sends) and raw deflate. The uncompressed size is capped too.
    """
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        if len(body) > max_bytes:
            raise V2ProtocolError(f"request body exceeds {max_bytes} bytes")
        return bytes(body)
    if encoding in ("gzip", "x-gzip"):
        return _inflate(body, zlib.MAX_WBITS | 16, max_bytes, multi_member=True)
    if encoding == "deflate":
        return _inflate(body, _deflate_wbits(body), max_bytes, multi_member=False)
    raise V2ProtocolError(f"unsupported Content-Encoding {_short(content_encoding)}")


def _deflate_wbits(body: bytes) -> int:
    # A zlib stream starts with a CMF/FLG pair: method 8 and a checksum that makes it divisible by 31.
    if len(body) >= 2 and body[0] & 0x0F == 8 and (body[0] << 8 | body[1]) % 31 == 0:
        return zlib.MAX_WBITS
    return -zlib.MAX_WBITS


def _inflate(body: bytes, wbits: int, max_bytes: int, *, multi_member: bool) -> bytes:
    output = bytearray()
    pending = bytes(body)
    try:
        while True:
            decompressor = zlib.decompressobj(wbits)
            while not decompressor.eof:
                # max_length is always >= 1: 0 would mean "no limit".
                chunk = decompressor.decompress(pending, min(_DECOMPRESS_CHUNK, max_bytes + 1 - len(output)))
                output += chunk
                if len(output) > max_bytes:
                    raise V2ProtocolError(f"decompressed body exceeds {max_bytes} bytes")
                progressed = bool(chunk) or len(decompressor.unconsumed_tail) != len(pending)
                pending = decompressor.unconsumed_tail
                if not progressed:
                    raise V2ProtocolError("compressed request body is truncated")
            pending = decompressor.unused_data
            if not pending:
                return bytes(output)
            if not multi_member:
                raise V2ProtocolError("compressed request body has trailing bytes")
    except zlib.error:
        raise V2ProtocolError("compressed request body is invalid") from None


def maybe_compress(body: bytes, accept_encoding: str | None) -> tuple[bytes, str | None]:
    """Compress a response body as the client's ``Accept-Encoding`` allows.

    Returns ``(body, content_encoding)``; content_encoding is None when the body is unchanged.
    gzip wins ties over deflate (sent zlib-wrapped, as tritonclient expects). The
    ``Inference-Header-Content-Length`` of a compressed response still counts uncompressed bytes.
    """
    if not accept_encoding:
        return body, None
    weights: dict[str, float] = {}
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        coding = coding.strip().lower()
        weight = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(value.strip())
                except ValueError:
                    weight = 0.0
        if coding == "x-gzip":
            coding = "gzip"
        if coding:
            weights[coding] = weight
    star = weights.get("*", 0.0)
    gzip_weight = weights.get("gzip", star)
    deflate_weight = weights.get("deflate", star)
    if gzip_weight > 0 and gzip_weight >= deflate_weight:
        compressor = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS | 16)
        return compressor.compress(body) + compressor.flush(), "gzip"
    if deflate_weight > 0:
        return zlib.compress(body, 6), "deflate"
    return body, None


# ---------------------------------------------------------------------------------------------
# metadata


def model_metadata(
    name: str,
    versions: Sequence[str],
    platform: str,
    inputs: Sequence[Mapping[str, Any]],
    outputs: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The V2 model metadata object.

    Each tensor is ``{"name", "dtype" (numpy name), "shape"}``; a None (or -1) dimension is
    dynamic and becomes -1, and a None shape (rank unknown) becomes ``[-1]``.
    """
    return {
        "name": name,
        "versions": [str(version) for version in versions],
        "platform": platform,
        "inputs": [_tensor_metadata(tensor) for tensor in inputs],
        "outputs": [_tensor_metadata(tensor) for tensor in outputs],
    }


def _tensor_metadata(tensor: Mapping[str, Any]) -> dict[str, Any]:
    shape = tensor.get("shape")
    dims = [-1] if shape is None else [-1 if dim is None else int(dim) for dim in shape]
    return {
        "name": tensor["name"],
        "datatype": dtype_to_datatype(tensor["dtype"]),
        "shape": dims,
    }
