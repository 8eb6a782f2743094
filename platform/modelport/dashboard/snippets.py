"""Example inputs and client snippets for a model page, generated from a version's signature."""

from __future__ import annotations

import json
from typing import Any

# A try-it textarea is prefilled only up to this many elements; beyond, the user pastes their own.
MAX_EXAMPLE_ELEMENTS = 20_000

NUMPY_TO_V2 = {
    "float32": "FP32",
    "float16": "FP16",
    "float64": "FP64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "bool": "BOOL",
}


def example_shape(shape: list[int | None]) -> list[int]:
    """The shape of the example input: every dynamic axis (null) set to 1."""
    return [d if isinstance(d, int) else 1 for d in shape]


def zero_value(dtype: str) -> Any:
    if dtype == "bool":
        return False
    return 0.0 if dtype.startswith("float") else 0


def zeros(shape: list[int], dtype: str) -> Any:
    value = zero_value(dtype)
    for dim in reversed(shape):
        value = [value] * dim
    return value


def element_count(shape: list[int]) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total


def example_json(spec: dict[str, Any]) -> str:
    """JSON of zeros in the example shape, or "" when it would be too large to prefill."""
    shape = example_shape(spec["shape"])
    if element_count(shape) > MAX_EXAMPLE_ELEMENTS:
        return ""
    return json.dumps(zeros(shape, spec["dtype"]))


def python_zeros_expr(shape: list[int], dtype: str) -> str:
    """A short Python expression for the example input, e.g. `[[0.0] * 784]`."""
    expr = repr(zero_value(dtype))
    for dim in reversed(shape):
        expr = f"[{expr}]" if dim == 1 else f"[{expr}] * {dim}"
    return expr


def snippets(
    *,
    base_url: str,
    model: str,
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    version: int | None = None,
) -> dict[str, str]:
    """Examples calling `model` ("owner/name"), with the version's own input and output names:
    curl, Python (requests), the project's CLI (`modelport predict`), its Python client
    (`modelport_client`) and tritonclient. With `version` every snippet calls that version; without,
    the model's default version."""
    host = base_url.split("://", 1)[-1].rstrip("/")
    server = base_url.rstrip("/")
    path = f"/api/v1/models/{model}" + (f"/versions/{version}" if version is not None else "")
    api = f"{server}{path}/predictions"
    body_py = ", ".join(f'"{s["name"]}": {python_zeros_expr(example_shape(s["shape"]), s["dtype"])}' for s in inputs)
    total = sum(element_count(example_shape(s["shape"])) for s in inputs)
    if total <= 16:
        body = json.dumps({"input": {s["name"]: zeros(example_shape(s["shape"]), s["dtype"]) for s in inputs}})
        curl = (
            f'curl -s {api} \\\n  -H "Authorization: Bearer $MODELPORT_API_KEY" \\\n'
            f'  -H "Content-Type: application/json" -H "Prefer: wait" \\\n  -d \'{body}\''
        )
    else:
        curl = (
            f'python3 -c \'import json; json.dump({{"input": {{{body_py}}}}}, open("input.json", "w"))\'\n'
            f'curl -s {api} \\\n  -H "Authorization: Bearer $MODELPORT_API_KEY" \\\n'
            f'  -H "Content-Type: application/json" -H "Prefer: wait" \\\n  -d @input.json'
        )
    np_arrays = {s["name"]: f'np.zeros({tuple(example_shape(s["shape"]))}, dtype="{s["dtype"]}")' for s in inputs}
    np_inputs = ", ".join(f'"{name}": {expr}.tolist()' for name, expr in np_arrays.items())
    python = (
        "import os\n\nimport numpy as np\nimport requests\n\n"
        f'resp = requests.post(\n    "{api}",\n'
        '    headers={"Authorization": f"Bearer {os.environ[\'MODELPORT_API_KEY\']}", "Prefer": "wait"},\n'
        f'    json={{"input": {{{np_inputs}}}}},\n    timeout=60,\n)\nresp.raise_for_status()\n'
        'prediction = resp.json()\nprint(prediction["output"], prediction["credits"]["charged"])'
    )
    version_arg = f" --version {version}" if version is not None else ""
    saves = "; ".join(f'np.save("{name}.npy", {expr})' for name, expr in np_arrays.items())
    cli = (
        f"export MODELPORT_URL={server}\n"
        f"python3 -c 'import numpy as np; {saves}'\n"
        f"modelport predict {model}{version_arg} "
        + " ".join(f"-i {s['name']}=@{s['name']}.npy" for s in inputs)
        + "\n# writes "
        + ", ".join(f"{o['name']}.npy" for o in outputs)
    )
    client_inputs = ", ".join(f'"{name}": {expr}' for name, expr in np_arrays.items())
    client_version = f", version={version}" if version is not None else ""
    client = (
        "import numpy as np\nfrom modelport_client import Client\n\n"
        f'with Client("{server}") as client:  # the key from $MODELPORT_API_KEY\n'
        f'    result = client.predict("{model}", {{{client_inputs}}}{client_version})\n'
        + "".join(f'    print(result["{o["name"]}"].shape)\n' for o in outputs)
        + '    print(result.credits["charged"])'
    )
    triton_lines = [
        "import os\n\nimport numpy as np\nimport tritonclient.http as httpclient\n",
        f'client = httpclient.InferenceServerClient(url="{host}")',
        'headers = {"Authorization": f"Bearer {os.environ[\'MODELPORT_API_KEY\']}"}',
        "inputs = []",
    ]
    for s in inputs:
        shape = example_shape(s["shape"])
        var = "t"
        np_dtype = "bool_" if s["dtype"] == "bool" else s["dtype"]
        triton_lines += [
            f'{var} = httpclient.InferInput("{s["name"]}", {shape}, "{NUMPY_TO_V2.get(s["dtype"], s["dtype"])}")',
            f"{var}.set_data_from_numpy(np.zeros({tuple(shape)}, dtype=np.{np_dtype}))",
            f"inputs.append({var})",
        ]
    version_kw = f', model_version="{version}"' if version is not None else ""
    triton_lines.append(f'result = client.infer("{model}", inputs{version_kw}, headers=headers)')
    triton_lines += [f'print(result.as_numpy("{o["name"]}"))' for o in outputs]
    return {
        "curl": curl,
        "python": python,
        "cli": cli,
        "client": client,
        "tritonclient": "\n".join(triton_lines),
    }
