"""The V2 (KServe / Triton) HTTP codec: wire format, refusals, and fuzzing.

Plain functions, no Django. Where tritonclient is installed, requests are built and responses read by
``tritonclient.http`` itself, so the format is checked against the real client without a server.
"""

import gzip
import json
import struct
import tracemalloc
import zlib
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from modelport.gateway.v2codec import (
    InferRequest,
    RequestedOutput,
    V2ProtocolError,
    datatype_to_dtype,
    decompress_body,
    dtype_to_datatype,
    encode_infer_response,
    maybe_compress,
    model_metadata,
    parse_infer_request,
)

MAX_ELEMENTS = 1000
MAX_BODY = 1 << 20
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

SAMPLES: dict[str, np.ndarray] = {
    "FP32": np.array([[1.5, -2.25, 1e38], [0.0, 3.4028235e38, -1e-30]], dtype=np.float32),
    "FP16": np.array([[1.5, -65504.0, 6.1035e-05]], dtype=np.float16),
    "FP64": np.array([0.1, -1e300], dtype=np.float64),
    "INT64": np.array([[-(2**63), 2**63 - 1, 0]], dtype=np.int64),
    "INT32": np.array([[-(2**31)], [2**31 - 1], [7]], dtype=np.int32),
    "INT8": np.array([-128, 127], dtype=np.int8),
    "UINT64": np.array([2**64 - 1, 0], dtype=np.uint64),
    "BOOL": np.array([[True, False, True]], dtype=np.bool_),
    "UINT8": np.array([[0, 255, 17]], dtype=np.uint8),
    "BYTES": np.array([[b"", b"abc", "\u00e9\u20ac".encode()]], dtype=object),
}
INTEROP_DATATYPES = ["FP32", "FP16", "INT64", "INT32", "BOOL", "UINT8", "BYTES"]


def parse(body: bytes, header_length: Any = None, **limits: int) -> InferRequest:
    return parse_infer_request(
        body,
        header_length=header_length,
        max_elements=limits.get("max_elements", MAX_ELEMENTS),
        max_body_bytes=limits.get("max_body_bytes", MAX_BODY),
    )


def request(header: Any, tail: bytes = b"") -> tuple[bytes, int | None]:
    """A body and header length as a V2 client sends them: JSON, then the raw tensor bytes."""
    encoded = json.dumps(header).encode()
    return encoded + tail, (len(encoded) if tail else None)


def one_input(**fields: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [2], "datatype": "INT32", **fields}]}


def refused(body: bytes, header_length: Any = None, **limits: int) -> str:
    with pytest.raises(V2ProtocolError) as caught:
        parse(body, header_length, **limits)
    return caught.value.message


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    if expected.dtype == object:
        assert actual.tolist() == expected.tolist()
    else:
        np.testing.assert_array_equal(actual, expected)


# --- datatypes ---------------------------------------------------------------------------------


def test_datatype_map_both_ways() -> None:
    pairs = {
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
    for datatype, name in pairs.items():
        assert datatype_to_dtype(datatype) == np.dtype(name)
        assert dtype_to_datatype(name) == datatype
        assert dtype_to_datatype(np.dtype(name)) == datatype
    assert dtype_to_datatype(">f4") == "FP32"
    assert dtype_to_datatype(np.dtype("S3")) == "BYTES"
    assert dtype_to_datatype("bytes") == "BYTES"


def test_unknown_datatypes_are_refused() -> None:
    for bad in ("BF16", "fp32", "", 5, None):
        with pytest.raises(V2ProtocolError, match="unknown datatype"):
            datatype_to_dtype(bad)
    with pytest.raises(ValueError, match="has no V2 datatype"):
        dtype_to_datatype("complex64")


# --- wire format, checked byte for byte --------------------------------------------------------


def test_binary_inputs_are_little_endian_and_length_prefixed() -> None:
    header = {
        "id": "42",
        "inputs": [
            {"name": "h", "shape": [2], "datatype": "FP16", "parameters": {"binary_data_size": 4}},
            {"name": "b", "shape": [3], "datatype": "BOOL", "parameters": {"binary_data_size": 3}},
            {"name": "s", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 11}},
            {"name": "i", "shape": [1], "datatype": "INT32", "parameters": {"binary_data_size": 4}},
        ],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}],
        "parameters": {"priority": 2},
    }
    tail = b"\x00\x3c\x00\xc0" + b"\x01\x00\x01" + b"\x03\x00\x00\x00abc\x00\x00\x00\x00"
    tail += b"\xfe\xff\xff\xff"
    body, header_length = request(header, tail)

    parsed = parse(body, str(header_length))

    assert parsed.id == "42"
    assert list(parsed.inputs) == ["h", "b", "s", "i"]
    assert_same(parsed.inputs["h"], np.array([1.0, -2.0], dtype=np.float16))
    assert_same(parsed.inputs["b"], np.array([True, False, True]))
    assert_same(parsed.inputs["s"], np.array([b"abc", b""], dtype=object))
    assert_same(parsed.inputs["i"], np.array([-2], dtype=np.int32))
    assert parsed.outputs == [RequestedOutput("y", True), RequestedOutput("z", False)]
    assert parsed.binary_output_default is False
    assert parsed.parameters == {"priority": 2}
    for array in parsed.inputs.values():
        assert array.flags.writeable and array.flags.c_contiguous
        assert not np.shares_memory(array, np.frombuffer(body, dtype=np.uint8))


def test_json_data_may_be_flat_or_nested() -> None:
    flat = parse(request(one_input(shape=[2, 2], data=[1, 2, 3, 4]))[0])
    nested = parse(request(one_input(shape=[2, 2], data=[[1, 2], [3, 4]]))[0])
    expected = np.array([[1, 2], [3, 4]], dtype=np.int32)
    assert_same(flat.inputs["x"], expected)
    assert_same(nested.inputs["x"], expected)
    scalar = parse(request(one_input(shape=[], datatype="FP32", data=[2]))[0])
    assert_same(scalar.inputs["x"], np.array(2.0, dtype=np.float32))
    empty = parse(request(one_input(shape=[0, 3], datatype="BYTES", data=[]))[0])
    assert empty.inputs["x"].shape == (0, 3)


def test_json_floats_accept_integers_and_refuse_nan_infinity_and_overflow() -> None:
    """JSON has no NaN or infinity; the native API refuses them and so does V2's JSON (issue 16
    item 13). Binary tensors carry any IEEE value."""
    body = b'{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1,2.5]}]}'
    values = parse(body).inputs["x"]
    assert values.dtype == np.float32 and values.tolist() == [1.0, 2.5]
    for bad, message in ((b"NaN", "holds NaN, which is not JSON"), (b"-Infinity", "holds -Infinity"),
                         (b"Infinity", "holds Infinity"), (b"1e999", "out of range"), (b"-1e999", "out of range"),
                         (b"1e300", "out of range")):
        body = b'{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1,' + bad + b']}]}'
        with pytest.raises(V2ProtocolError, match=message):
            parse(body)
    binary = np.array([np.nan, -np.inf], dtype=np.float32)
    header = b'{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}'
    parsed = parse(header + binary.tobytes(), len(header)).inputs["x"]
    assert np.isnan(parsed[0]) and parsed[1] == -np.inf


def test_binary_data_output_sets_the_default_and_binary_data_overrides_it() -> None:
    header = one_input(data=[1, 2])
    header["parameters"] = {"binary_data_output": True}
    header["outputs"] = [{"name": "a"}, {"name": "b", "parameters": {"binary_data": False}}]
    parsed = parse(request(header)[0])
    assert parsed.outputs == [RequestedOutput("a", True), RequestedOutput("b", False)]
    assert parsed.output_is_binary("a") and not parsed.output_is_binary("b")
    assert parsed.output_is_binary("not-requested") is True


def test_select_outputs_follows_the_request() -> None:
    a, b = np.zeros(1, np.float32), np.ones(1, np.float32)
    everything = parse(request(one_input(data=[1, 2]))[0])
    assert everything.select_outputs([("a", a), ("b", b)]) == (
        [("a", a), ("b", b)],
        {"a": False, "b": False},
    )
    header = one_input(data=[1, 2])
    header["outputs"] = [{"name": "b", "parameters": {"binary_data": True}}]
    chosen = parse(request(header)[0])
    assert chosen.select_outputs([("a", a), ("b", b)]) == ([("b", b)], {"b": True})
    header["outputs"] = [{"name": "c"}]
    with pytest.raises(V2ProtocolError, match="unknown output 'c'"):
        parse(request(header)[0]).select_outputs([("a", a)])


def test_json_response_exact_body() -> None:
    body, header_length = encode_infer_response(
        model_name="acme/resnet",
        model_version="3",
        request_id="7",
        outputs=[
            ("y", np.array([[1, 2], [3, 4]], dtype=np.int64)),
            ("ok", np.array([True, False])),
            ("s", np.array([b"a\xc3\xa9", "z"], dtype=object)),
        ],
        parameters={"sequence_id": 5},
    )
    assert header_length is None
    assert body == (
        b'{"model_name":"acme/resnet","model_version":"3","id":"7","parameters":{"sequence_id":5},'
        b'"outputs":[{"name":"y","datatype":"INT64","shape":[2,2],"data":[1,2,3,4]},'
        b'{"name":"ok","datatype":"BOOL","shape":[2],"data":[true,false]},'
        b'{"name":"s","datatype":"BYTES","shape":[2],"data":["a\\u00e9","z"]}]}'
    )


def test_binary_response_exact_body() -> None:
    body, header_length = encode_infer_response(
        model_name="m",
        model_version="1",
        request_id=None,
        outputs=[
            ("h", np.array([1.0, -2.0], dtype=">f2")),
            ("s", np.array([[b"ab"], [b""]], dtype=object)),
            ("j", np.array([7], dtype=np.uint8)),
        ],
        binary={"h": True, "s": True},
    )
    header = (
        b'{"model_name":"m","model_version":"1","outputs":['
        b'{"name":"h","datatype":"FP16","shape":[2],"parameters":{"binary_data_size":4}},'
        b'{"name":"s","datatype":"BYTES","shape":[2,1],"parameters":{"binary_data_size":10}},'
        b'{"name":"j","datatype":"UINT8","shape":[1],"data":[7]}]}'
    )
    assert header_length == len(header)
    assert body == header + b"\x00\x3c\x00\xc0" + b"\x02\x00\x00\x00ab\x00\x00\x00\x00"


def test_non_utf8_bytes_output_goes_binary_even_when_json_was_asked() -> None:
    body, header_length = encode_infer_response(
        model_name="m",
        model_version="1",
        request_id=None,
        outputs=[("s", np.array([b"\xff"], dtype=object))],
        binary=False,
    )
    assert header_length is not None
    assert json.loads(body[:header_length])["outputs"][0]["parameters"] == {"binary_data_size": 5}
    assert body[header_length:] == b"\x01\x00\x00\x00\xff"


def test_encoding_refuses_server_side_mistakes() -> None:
    with pytest.raises(ValueError, match="has no V2 datatype"):
        encode_infer_response(model_name="m", model_version="1", request_id=None, outputs=[("c", np.zeros(1, "c8"))])
    with pytest.raises(ValueError, match="given twice"):
        encode_infer_response(
            model_name="m",
            model_version="1",
            request_id=None,
            outputs=[("a", np.zeros(1)), ("a", np.zeros(1))],
        )


def test_model_metadata_uses_datatypes_and_minus_one_for_dynamic_dims() -> None:
    metadata = model_metadata(
        "acme/resnet",
        ["1", "2"],
        "onnxruntime_onnx",
        [{"name": "x", "dtype": "float32", "shape": [None, 3, 224, 224]}],
        [{"name": "y", "dtype": "int64", "shape": None}, {"name": "t", "dtype": "object", "shape": [2]}],
    )
    assert metadata == {
        "name": "acme/resnet",
        "versions": ["1", "2"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3, 224, 224]}],
        "outputs": [
            {"name": "y", "datatype": "INT64", "shape": [-1]},
            {"name": "t", "datatype": "BYTES", "shape": [2]},
        ],
    }


# --- interoperability with tritonclient --------------------------------------------------------


@pytest.fixture
def triton() -> Any:
    return pytest.importorskip("tritonclient.http")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", INTEROP_DATATYPES)
def test_tritonclient_round_trip(triton: Any, datatype: str, binary: bool) -> None:
    sample = SAMPLES[datatype]
    tensor = triton.InferInput("in", list(sample.shape), datatype)
    tensor.set_data_from_numpy(sample, binary_data=binary)
    requested = [triton.InferRequestedOutput("out", binary_data=binary)]
    body, header_length = triton.InferenceServerClient.generate_request_body(
        [tensor], outputs=requested, request_id="req-1"
    )

    parsed = parse(body, header_length)

    assert (header_length is not None) == binary
    assert_same(parsed.inputs["in"], sample)
    outputs, flags = parsed.select_outputs([("out", parsed.inputs["in"]), ("other", sample)])
    response, response_header_length = encode_infer_response(
        model_name="acme/echo",
        model_version="1",
        request_id=parsed.id,
        outputs=outputs,
        binary=flags,
    )
    assert (response_header_length is not None) == binary
    result = triton.InferenceServerClient.parse_response_body(response, header_length=response_header_length)
    assert result.get_response()["id"] == "req-1"
    assert result.get_response()["model_version"] == "1"
    assert result.as_numpy("other") is None
    received = result.as_numpy("out")
    if datatype == "BYTES" and not binary:
        # tritonclient reads JSON BYTES back as str, not bytes.
        assert received.tolist() == [[e.decode() for e in row] for row in sample.tolist()]
    else:
        assert_same(received, sample)


def test_tritonclient_default_asks_for_binary_outputs(triton: Any) -> None:
    sample = np.arange(12, dtype=np.float32).reshape(3, 4)
    first = triton.InferInput("a", [3, 4], "FP32").set_data_from_numpy(sample)
    second = triton.InferInput("b", [3, 4], "FP32").set_data_from_numpy(sample, binary_data=False)
    body, header_length = triton.InferenceServerClient.generate_request_body([first, second])

    parsed = parse(body, header_length)

    assert parsed.outputs is None and parsed.binary_output_default is True
    assert parsed.parameters == {"binary_data_output": True}
    outputs, flags = parsed.select_outputs([("y", sample * 2), ("n", np.array([np.nan], np.float32))])
    response, response_header_length = encode_infer_response(
        model_name="m", model_version="1", request_id=parsed.id, outputs=outputs, binary=flags
    )
    result = triton.InferenceServerClient.parse_response_body(response, header_length=response_header_length)
    assert_same(result.as_numpy("y"), sample * 2)
    assert np.isnan(result.as_numpy("n")).all()


def test_tritonclient_json_nan_is_refused(triton: Any) -> None:
    floats = np.array([np.nan, -np.inf], dtype=np.float32)
    json_input = triton.InferInput("f", [2], "FP32").set_data_from_numpy(floats, binary_data=False)
    body, header_length = triton.InferenceServerClient.generate_request_body([json_input])
    with pytest.raises(V2ProtocolError, match="NaN, which is not JSON"):
        parse(body, header_length)


def test_tritonclient_binary_nan_and_empty_bytes_tensor(triton: Any) -> None:
    floats = np.array([np.nan, -np.inf], dtype=np.float32)
    json_input = triton.InferInput("f", [2], "FP32").set_data_from_numpy(floats, binary_data=True)
    empty = np.array([], dtype=object)
    empty_input = triton.InferInput("e", [0], "BYTES").set_data_from_numpy(empty)
    body, header_length = triton.InferenceServerClient.generate_request_body(
        [json_input, empty_input], outputs=[triton.InferRequestedOutput("f", binary_data=False)]
    )
    assert header_length == len(body) - 8  # the 8 bytes of f follow the JSON header

    parsed = parse(body, header_length)

    assert np.isnan(parsed.inputs["f"][0]) and parsed.inputs["f"][1] == -np.inf
    assert parsed.inputs["e"].shape == (0,) and parsed.inputs["e"].dtype == object
    response, response_header_length = encode_infer_response(
        model_name="m",
        model_version="1",
        request_id=None,
        outputs=[("f", parsed.inputs["f"]), ("e", parsed.inputs["e"])],
        binary={"e": True},
    )
    result = triton.InferenceServerClient.parse_response_body(response, header_length=response_header_length)
    assert np.isnan(result.as_numpy("f")[0]) and result.as_numpy("f")[1] == -np.inf
    assert result.as_numpy("e").shape == (0,)


def test_tritonclient_classification_is_refused(triton: Any) -> None:
    tensor = triton.InferInput("a", [1], "INT64").set_data_from_numpy(np.array([1]))
    outputs = [triton.InferRequestedOutput("y", class_count=3)]
    body, header_length = triton.InferenceServerClient.generate_request_body([tensor], outputs)
    assert refused(body, header_length) == "output 'y': classification is not supported"


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_tritonclient_compression_both_ways(triton: Any, encoding: str) -> None:
    sample = np.arange(300, dtype=np.int64)
    tensor = triton.InferInput("a", [300], "INT64").set_data_from_numpy(sample)
    body, header_length = triton.InferenceServerClient.generate_request_body([tensor])
    # What InferenceServerClient.infer does with request_compression_algorithm.
    compressed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)

    plain = decompress_body(compressed, encoding, max_bytes=MAX_BODY)
    parsed = parse(plain, header_length)

    assert_same(parsed.inputs["a"], sample)
    response, response_header_length = encode_infer_response(
        model_name="m", model_version="1", request_id=None, outputs=[("y", sample)], binary=True
    )
    sent, content_encoding = maybe_compress(response, encoding)
    assert content_encoding == encoding and len(sent) < len(response)
    result = triton.InferenceServerClient.parse_response_body(
        sent, header_length=response_header_length, content_encoding=content_encoding
    )
    assert_same(result.as_numpy("y"), sample)


# --- refusals ----------------------------------------------------------------------------------

# fmt: off
_BIN = {"binary_data_size": 8}
REFUSALS: list[tuple[str, dict[str, Any] | bytes, bytes, Any, str]] = [
    # (id, header or raw JSON bytes, tail, header length ("auto" = the JSON length), message)
    ("header length negative", one_input(data=[1, 2]), b"", -1,
     "Inference-Header-Content-Length must be a non-negative integer"),
    ("header length text", one_input(data=[1, 2]), b"", "12a",
     "Inference-Header-Content-Length must be a non-negative integer"),
    ("header length float text", one_input(data=[1, 2]), b"", "1.5",
     "Inference-Header-Content-Length must be a non-negative integer"),
    ("header length minus text", one_input(data=[1, 2]), b"", "-3",
     "Inference-Header-Content-Length must be a non-negative integer"),
    ("header length bool", one_input(data=[1, 2]), b"", True,
     "Inference-Header-Content-Length must be a non-negative integer"),
    ("header length huge", one_input(data=[1, 2]), b"", "9" * 40,
     "Inference-Header-Content-Length must be a non-negative integer"),
    ("header length beyond body", b"{}", b"", 3,
     "Inference-Header-Content-Length 3 is beyond the request body of 2 bytes"),
    ("not json", b"{inputs:", b"", None, "inference request header is not valid JSON"),
    ("not utf-8", b'{"id":"\xff"}', b"", None, "inference request header is not valid UTF-8"),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, b"", None,
     "inference request header is not valid JSON"),
    ("huge integer", b'{"inputs":' + b"9" * 5000 + b"}", b"", None,
     "inference request header is not valid JSON"),
    ("not an object", b"[]", b"", None, "inference request header must be a JSON object"),
    ("inputs missing", {"outputs": []}, b"", None, "request has no 'inputs'"),
    ("inputs not a list", {"inputs": {"name": "x"}}, b"", None, "request 'inputs' must be a list"),
    ("inputs empty", {"inputs": []}, b"", None, "request 'inputs' must not be empty"),
    ("input not an object", {"inputs": [3]}, b"", None, "input #0 must be a JSON object"),
    ("input without name", {"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}, b"",
     None, "input #0 needs a non-empty string 'name'"),
    ("input name not a string", {"inputs": [{"name": 1, "shape": [1], "datatype": "FP32"}]}, b"",
     None, "input #0 needs a non-empty string 'name'"),
    ("input without shape", {"inputs": [{"name": "x", "datatype": "FP32", "data": [1]}]}, b"",
     None, "input 'x' has no 'shape'"),
    ("input without datatype", {"inputs": [{"name": "x", "shape": [1], "data": [1]}]}, b"", None,
     "input 'x' has no 'datatype'"),
    ("unknown datatype", one_input(datatype="BF16", data=[1, 2]), b"", None,
     "input 'x' has unknown datatype 'BF16'"),
    ("datatype not a string", one_input(datatype=["FP32"], data=[1, 2]), b"", None,
     "input 'x' has unknown datatype ['FP32']"),
    ("negative dim", one_input(shape=[-1, 2], data=[1, 2]), b"", None,
     "input 'x' 'shape' must be a list of non-negative integers"),
    ("float dim", one_input(shape=[2.0], data=[1, 2]), b"", None,
     "input 'x' 'shape' must be a list of non-negative integers"),
    ("string dim", one_input(shape=["2"], data=[1, 2]), b"", None,
     "input 'x' 'shape' must be a list of non-negative integers"),
    ("bool dim", one_input(shape=[True], data=[1]), b"", None,
     "input 'x' 'shape' must be a list of non-negative integers"),
    ("shape not a list", one_input(shape=2, data=[1, 2]), b"", None,
     "input 'x' 'shape' must be a list of non-negative integers"),
    ("too many dims", one_input(shape=[1] * 33, data=[1]), b"", None,
     "input 'x' 'shape' has more than 32 dimensions"),
    ("too many elements", one_input(shape=[10, 101], data=[]), b"", None,
     "input 'x' shape [10, 101] exceeds the limit of 1000 elements"),
    ("element count overflow", one_input(shape=[2**62, 2**62, 2**62], data=[]), b"", None,
     "exceeds the limit of 1000 elements"),
    ("zero dim hiding a huge one", one_input(shape=[0, 10**12], data=[]), b"", None,
     "input 'x' shape [0, 1000000000000] exceeds the limit of 1000 elements"),
    ("too many elements in all",
     {"inputs": [{"name": f"x{i}", "shape": [400], "datatype": "UINT8", "data": [0] * 400}
                 for i in range(3)]}, b"", None,
     "request inputs hold more than the limit of 1000 elements"),
    ("duplicate input",
     {"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [1]}] * 2}, b"", None,
     "duplicate input 'x'"),
    ("both data and binary", one_input(data=[1, 2], parameters=_BIN), b"\x00" * 8, "auto",
     "input 'x' has both 'data' and 'binary_data_size'"),
    ("neither data nor binary", one_input(), b"", None,
     "input 'x' has neither 'data' nor 'binary_data_size'"),
    ("input parameters not an object", one_input(parameters=[1]), b"", None,
     "input 'x' 'parameters' must be a JSON object"),
    ("negative binary size", one_input(parameters={"binary_data_size": -8}), b"\x00" * 8, "auto",
     "input 'x' 'binary_data_size' must be a non-negative integer"),
    ("float binary size", one_input(parameters={"binary_data_size": 8.0}), b"\x00" * 8, "auto",
     "input 'x' 'binary_data_size' must be a non-negative integer"),
    ("string binary size", one_input(parameters={"binary_data_size": "8"}), b"\x00" * 8, "auto",
     "input 'x' 'binary_data_size' must be a non-negative integer"),
    ("bool binary size", one_input(parameters={"binary_data_size": True}), b"\x00" * 8, "auto",
     "input 'x' 'binary_data_size' must be a non-negative integer"),
    ("oversized binary size", one_input(shape=[2**60], parameters={"binary_data_size": 2**62}),
     b"\x00" * 8, "auto", "input 'x' shape [1152921504606846976] exceeds the limit"),
    ("binary size beyond body", one_input(shape=[250], parameters={"binary_data_size": 1000}),
     b"\x00" * 8, "auto", "input 'x' binary_data_size 1000 is larger than the request body"),
    ("binary size not shape x itemsize", one_input(parameters={"binary_data_size": 6}),
     b"\x00" * 6, "auto",
     "input 'x' binary_data_size 6 does not match shape [2] of INT32 (8 bytes)"),
    ("trailing bytes", one_input(parameters=_BIN), b"\x00" * 10, "auto",
     "request body has 2 unexpected bytes after the tensor data"),
    ("short body",
     {"inputs": [{"name": "a", "shape": [2], "datatype": "INT32", "parameters": _BIN},
                 {"name": "b", "shape": [2], "datatype": "INT32", "parameters": _BIN}]},
     b"\x00" * 12, "auto",
     "binary tensor data is 16 bytes but the body holds 12 bytes after the JSON header"),
    ("trailing bytes with json only", one_input(data=[1, 2]), b"xx", "auto",
     "request body has 2 unexpected bytes after the tensor data"),
    ("binary without header length", b'{"inputs":[{"name":"x","shape":[2],"datatype":"INT32",'
     b'"parameters":{"binary_data_size":8}}]}', b"", None,
     "binary tensor data needs the Inference-Header-Content-Length header"),
    ("bytes element overruns", one_input(datatype="BYTES", parameters=_BIN),
     b"\x01\x00\x00\x00a\x09\x00\x00", "auto", "BYTES element 1 of input 'x' overruns its tensor"),
    ("bytes length overruns", one_input(shape=[1], datatype="BYTES", parameters=_BIN),
     b"\x05\x00\x00\x00abcd", "auto", "BYTES element 0 of input 'x' overruns its tensor"),
    ("bytes after last element", one_input(shape=[1], datatype="BYTES", parameters=_BIN),
     b"\x01\x00\x00\x00abcd", "auto", "input 'x' has 3 bytes after its last BYTES element"),
    ("bytes size too small", one_input(shape=[3], datatype="BYTES", parameters=_BIN),
     b"\x00" * 8, "auto", "input 'x' binary_data_size 8 is too small for 3 BYTES elements"),
    ("bool byte not 0 or 1", one_input(datatype="BOOL", parameters={"binary_data_size": 2}),
     b"\x01\x02", "auto", "BOOL input 'x' has a byte other than 0 or 1"),
    ("data not a list", one_input(data="12"), b"", None, "input 'x' 'data' must be a JSON array"),
    ("data wrong count", one_input(shape=[2, 2], data=[1, 2, 3]), b"", None,
     "input 'x' has 3 values in 'data' but shape [2, 2] needs 4"),
    ("data ragged", one_input(shape=[2, 2], data=[[1, 2], [3]]), b"", None,
     "input 'x' 'data' is not nested to shape [2, 2]"),
    ("data half nested", one_input(shape=[2, 2], data=[[1, 2], 3, 4]), b"", None,
     "input 'x' 'data' is not nested to shape [2, 2]"),
    ("data nested too deep", one_input(shape=[2], data=[[1], [2]]), b"", None,
     "input 'x' 'data' is not nested to shape [2]"),
    ("strings for FP32", one_input(datatype="FP32", data=["1", "2"]), b"", None,
     "input 'x' (FP32) 'data' must hold only numbers"),
    ("bools for FP32", one_input(datatype="FP32", data=[True, 1.0]), b"", None,
     "input 'x' (FP32) 'data' must hold only numbers"),
    ("FP16 out of range", one_input(datatype="FP16", data=[1.0, 70000.0]), b"", None,
     "input 'x' (FP16) 'data' has a value out of range"),
    ("FP32 integer out of range", one_input(datatype="FP32", data=[1, 10**39]), b"", None,
     "input 'x' (FP32) 'data' has a value out of range"),
    ("floats for INT64", one_input(datatype="INT64", data=[1.0, 2]), b"", None,
     "input 'x' (INT64) 'data' must hold only integers"),
    ("bools for INT32", one_input(data=[True, 2]), b"", None,
     "input 'x' (INT32) 'data' must hold only integers"),
    ("INT8 out of range", one_input(datatype="INT8", data=[127, 128]), b"", None,
     "input 'x' (INT8) 'data' has a value out of range"),
    ("UINT8 negative", one_input(datatype="UINT8", data=[-1, 0]), b"", None,
     "input 'x' (UINT8) 'data' has a value out of range"),
    ("UINT64 out of range", one_input(datatype="UINT64", data=[2**64, 0]), b"", None,
     "input 'x' (UINT64) 'data' has a value out of range"),
    ("integers for BOOL", one_input(datatype="BOOL", data=[1, 0]), b"", None,
     "input 'x' (BOOL) 'data' must hold only true or false"),
    ("numbers for BYTES", one_input(datatype="BYTES", data=["a", 1]), b"", None,
     "input 'x' (BYTES) 'data' must hold only strings"),
    ("lone surrogate for BYTES",
     b'{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":["\\ud800"]}]}', b"", None,
     "input 'x' (BYTES) 'data' is not valid Unicode"),
    ("input shared memory",
     one_input(parameters={"shared_memory_region": "r", "shared_memory_byte_size": 8}), b"", None,
     "input 'x': shared memory is not supported"),
    ("id not a string", {**one_input(data=[1, 2]), "id": 7}, b"", None,
     "request 'id' must be a string"),
    ("parameters not an object", {**one_input(data=[1, 2]), "parameters": []}, b"", None,
     "request 'parameters' must be a JSON object"),
    ("binary_data_output not bool",
     {**one_input(data=[1, 2]), "parameters": {"binary_data_output": 1}}, b"", None,
     "parameter 'binary_data_output' must be true or false"),
    ("outputs not a list", {**one_input(data=[1, 2]), "outputs": {"name": "y"}}, b"", None,
     "request 'outputs' must be a list"),
    ("output without name", {**one_input(data=[1, 2]), "outputs": [{}]}, b"", None,
     "output #0 needs a non-empty string 'name'"),
    ("duplicate output", {**one_input(data=[1, 2]), "outputs": [{"name": "y"}, {"name": "y"}]},
     b"", None, "duplicate output 'y'"),
    ("output binary_data not bool",
     {**one_input(data=[1, 2]), "outputs": [{"name": "y", "parameters": {"binary_data": "yes"}}]},
     b"", None, "output 'y' 'binary_data' must be true or false"),
    ("output classification",
     {**one_input(data=[1, 2]), "outputs": [{"name": "y", "parameters": {"classification": 2}}]},
     b"", None, "output 'y': classification is not supported"),
    ("output shared memory",
     {**one_input(data=[1, 2]),
      "outputs": [{"name": "y", "parameters": {"shared_memory_region": "r"}}]},
     b"", None, "output 'y': shared memory is not supported"),
]
# fmt: on


@pytest.mark.parametrize(
    ("header", "tail", "header_length", "message"),
    [case[1:] for case in REFUSALS],
    ids=[case[0] for case in REFUSALS],
)
def test_refusals(header: Any, tail: bytes, header_length: Any, message: str) -> None:
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    if header_length == "auto":
        header_length = len(encoded)
    assert message in refused(encoded + tail, header_length)


def test_body_over_the_limit_is_refused() -> None:
    body, _ = request(one_input(data=[1, 2]))
    assert refused(body, max_body_bytes=len(body) - 1) == (f"request body exceeds {len(body) - 1} bytes")
    assert parse(body, max_body_bytes=len(body)).inputs["x"].tolist() == [1, 2]


def test_claimed_sizes_are_refused_before_allocating() -> None:
    # Each header claims a tensor of ~8 GB (or ~1 GB of elements) with a few bytes of body.
    claims = [
        one_input(shape=[2**30], datatype="FP64", data=[0.0]),
        one_input(shape=[2**30], datatype="FP64", parameters={"binary_data_size": 2**33}),
        one_input(shape=[2**30], datatype="BYTES", parameters={"binary_data_size": 8}),
    ]
    tracemalloc.start()
    try:
        for claim in claims:
            body, header_length = request(claim, b"\x00" * 8)
            with pytest.raises(V2ProtocolError):
                parse(body, header_length, max_elements=2**31)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


# --- compression -------------------------------------------------------------------------------


def test_decompress_passes_plain_bodies_through() -> None:
    assert decompress_body(b"abc", None, max_bytes=3) == b"abc"
    assert decompress_body(b"abc", "identity", max_bytes=3) == b"abc"
    with pytest.raises(V2ProtocolError, match=r"^request body exceeds 2 bytes$"):
        decompress_body(b"abc", None, max_bytes=2)


def test_decompress_gzip_deflate_and_raw_deflate() -> None:
    data = b"tensor" * 1000
    raw = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    raw_deflate = raw.compress(data) + raw.flush()
    assert decompress_body(gzip.compress(data), "gzip", max_bytes=len(data)) == data
    assert decompress_body(gzip.compress(data), " X-GZIP ", max_bytes=len(data)) == data
    assert decompress_body(zlib.compress(data), "deflate", max_bytes=len(data)) == data
    assert decompress_body(raw_deflate, "deflate", max_bytes=len(data)) == data
    two_members = gzip.compress(b"ab") + gzip.compress(b"cd")
    assert decompress_body(two_members, "gzip", max_bytes=4) == b"abcd"


def test_gzip_bomb_is_refused_without_inflating_it() -> None:
    bomb = gzip.compress(b"\x00" * (64 << 20), compresslevel=9)  # 64 MiB in ~64 KiB
    assert len(bomb) < 128 << 10
    tracemalloc.start()
    try:
        with pytest.raises(V2ProtocolError) as caught:
            decompress_body(bomb, "gzip", max_bytes=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.message == "decompressed body exceeds 1048576 bytes"
    assert peak < 4 << 20
    with pytest.raises(V2ProtocolError, match=r"^decompressed body exceeds 1048576 bytes$"):
        decompress_body(zlib.compress(b"\x00" * (8 << 20)), "deflate", max_bytes=1 << 20)


def test_decompress_refusals() -> None:
    data = gzip.compress(b"x" * 100)
    cases = [
        (data[:-9], "gzip", "compressed request body is truncated"),
        (b"", "gzip", "compressed request body is truncated"),
        (b"not gzip at all", "gzip", "compressed request body is invalid"),
        (data + b"junk", "gzip", "compressed request body is invalid"),
        (zlib.compress(b"x") + b"junk", "deflate", "compressed request body has trailing bytes"),
        (data, "br", "unsupported Content-Encoding 'br'"),
        (data, "gzip, gzip", "unsupported Content-Encoding 'gzip, gzip'"),
    ]
    for body, encoding, message in cases:
        with pytest.raises(V2ProtocolError) as caught:
            decompress_body(body, encoding, max_bytes=1000)
        assert caught.value.message == message


def test_maybe_compress_follows_accept_encoding() -> None:
    body = b'{"outputs":[]}' * 50
    assert maybe_compress(body, None) == (body, None)
    assert maybe_compress(body, "") == (body, None)
    assert maybe_compress(body, "br, identity") == (body, None)
    assert maybe_compress(body, "gzip;q=0, deflate;q=0") == (body, None)
    assert maybe_compress(body, "*;q=0") == (body, None)
    for header, expected in [
        ("gzip", "gzip"),
        ("deflate", "deflate"),
        ("deflate, gzip", "gzip"),
        ("gzip;q=0.5, deflate", "deflate"),
        ("GZIP;Q=1", "gzip"),
        ("*", "gzip"),
        ("br;q=1, *;q=0.1", "gzip"),
    ]:
        compressed, encoding = maybe_compress(body, header)
        assert encoding == expected, header
        assert decompress_body(compressed, encoding, max_bytes=len(body)) == body


# --- fuzzing -----------------------------------------------------------------------------------


def parse_or_refuse(body: bytes, header_length: Any, max_elements: int = 100) -> InferRequest | None:
    """Parse; the only failure allowed is V2ProtocolError. Checks what a success holds."""
    try:
        parsed = parse(body, header_length, max_elements=max_elements, max_body_bytes=16384)
    except V2ProtocolError as error:
        assert isinstance(error.message, str) and error.message
        return None
    total = 0
    for array in parsed.inputs.values():
        assert isinstance(array, np.ndarray) and array.flags.writeable
        total += array.size
        if array.dtype != object:
            assert array.nbytes <= 8 * max_elements
    assert total <= max_elements
    return parsed


@st.composite
def valid_requests(draw: st.DrawFn) -> tuple[bytes, int | None]:
    inputs = []
    tails = []
    for index in range(draw(st.integers(1, 3))):
        datatype = draw(st.sampled_from(sorted(SAMPLES)))
        shape = draw(st.lists(st.integers(0, 3), max_size=3))
        count = int(np.prod(shape, dtype=np.int64))
        dtype = datatype_to_dtype(datatype)
        if datatype == "BYTES":
            values = draw(st.lists(st.binary(max_size=6), min_size=count, max_size=count))
            array = np.empty(count, dtype=object)
            array[:] = values
        elif datatype == "BOOL":
            array = np.array(draw(st.lists(st.booleans(), min_size=count, max_size=count)), bool)
        else:
            raw = draw(st.binary(min_size=count * dtype.itemsize, max_size=count * dtype.itemsize))
            array = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype)
            if dtype.kind == "f":
                array = np.where(np.isfinite(array), array, 0).astype(dtype)
        array = array.reshape(shape)
        entry: dict[str, Any] = {"name": f"in{index}", "shape": shape, "datatype": datatype}
        if draw(st.booleans()):
            if datatype == "BYTES":
                payload = b"".join(struct.pack("<I", len(v)) + v for v in array.reshape(-1))
            else:
                payload = array.astype(dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(payload)}
            tails.append(payload)
        elif datatype == "BYTES":
            entry["data"] = [v.decode("latin-1") for v in array.reshape(-1)]
        else:
            nested = array.ndim > 1 and draw(st.booleans())
            entry["data"] = array.tolist() if nested else array.reshape(-1).tolist()
        inputs.append(entry)
    header: dict[str, Any] = {"inputs": inputs, "parameters": {"binary_data_output": True}}
    if draw(st.booleans()):
        header["outputs"] = [{"name": "out", "parameters": {"binary_data": draw(st.booleans())}}]
    body, header_length = request(header, b"".join(tails))
    if header_length is None and draw(st.booleans()):
        header_length = len(body)
    return body, header_length


@FUZZ
@given(valid_requests())
def test_fuzz_valid_requests_parse(case: tuple[bytes, int | None]) -> None:
    body, header_length = case
    assert parse_or_refuse(body, header_length) is not None


@FUZZ
@given(
    valid_requests(),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    st.integers(0, 10_000),
    st.one_of(st.none(), st.integers(-3, 3), st.sampled_from(["", "x", " 7 ", "-0", "1e3"])),
    st.booleans(),
)
def test_fuzz_mutated_requests_only_refuse(
    case: tuple[bytes, int | None],
    flips: list[tuple[int, int]],
    cut: int,
    length_change: Any,
    truncate: bool,
) -> None:
    body, header_length = case
    mutated = bytearray(body)
    for position, value in flips:
        if mutated:
            mutated[position % len(mutated)] = value
    if truncate:
        mutated = mutated[: cut % (len(mutated) + 1)]
    if isinstance(length_change, int):
        header_length = (header_length or len(body)) + length_change
    elif isinstance(length_change, str):
        header_length = length_change
    parse_or_refuse(bytes(mutated), header_length)


@FUZZ
@given(
    st.binary(max_size=512),
    st.one_of(st.none(), st.integers(-2, 600), st.text(max_size=6)),
)
def test_fuzz_random_bytes_only_refuse(body: bytes, header_length: Any) -> None:
    parse_or_refuse(body, header_length)


_JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=12,
)
_ODD_INTS = st.one_of(st.integers(-2, 5), st.sampled_from([2**31, 2**63, 2**64, 10**30]))


@st.composite
def odd_headers(draw: st.DrawFn) -> bytes:
    """Well-formed JSON whose V2 fields have plausible-but-wrong types and sizes."""
    entries = []
    for _ in range(draw(st.integers(0, 3))):
        entry = {
            "name": draw(st.one_of(st.sampled_from(["a", "b", ""]), _JSON)),
            "datatype": draw(st.one_of(st.sampled_from([*sorted(SAMPLES), "BF16"]), _JSON)),
            "shape": draw(st.one_of(st.lists(_ODD_INTS, max_size=4), _JSON)),
            "data": draw(st.one_of(st.lists(_JSON_SCALARS, max_size=6), _JSON)),
            "parameters": draw(st.one_of(st.fixed_dictionaries({"binary_data_size": _ODD_INTS}), _JSON)),
        }
        keys = draw(st.sets(st.sampled_from(sorted(entry))))
        entries.append({key: entry[key] for key in keys})
    header: dict[str, Any] = {"inputs": entries}
    for key in draw(st.sets(st.sampled_from(["id", "parameters", "outputs"]))):
        header[key] = draw(_JSON)
    return json.dumps(header).encode()


@FUZZ
@given(odd_headers(), st.binary(max_size=40), st.booleans())
def test_fuzz_odd_headers_only_refuse(header: bytes, tail: bytes, with_length: bool) -> None:
    parse_or_refuse(header + tail, len(header) if with_length else None)


@FUZZ
@given(st.binary(max_size=256), st.sampled_from([None, "gzip", "deflate", "br", "identity"]))
def test_fuzz_decompress_only_refuses(body: bytes, encoding: str | None) -> None:
    try:
        result = decompress_body(body, encoding, max_bytes=1024)
    except V2ProtocolError:
        return
    assert len(result) <= 1024


@FUZZ
@given(st.text(max_size=40), st.binary(max_size=64))
def test_fuzz_maybe_compress_never_breaks_the_body(accept_encoding: str, body: bytes) -> None:
    sent, encoding = maybe_compress(body, accept_encoding)
    assert decompress_body(sent, encoding, max_bytes=len(body)) == body
