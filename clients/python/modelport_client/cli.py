"""`modelport`: push models, call them with .npy files, show the account.

Exit status: 0 on success, 1 for an API error or a version that failed validation/conversion
(the error code and message are printed on stderr), 2 for bad command-line arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

import httpx
import numpy as np

from modelport_client.client import Client, ModelportError, Prediction


def _json_arg(kind: type) -> Any:
    def parse(raw: str) -> Any:
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(f"must be a JSON {'object' if kind is dict else 'array'}")
        return value

    return parse


def _input_arg(raw: str) -> tuple[str, Path]:
    name, sep, value = raw.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=@FILE.npy, got {raw!r}")
    return name, Path(value[1:] if value.startswith("@") else value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelport", description="Modelport command line (configured by MODELPORT_URL and MODELPORT_API_KEY)."
    )
    parser.add_argument("--url", help="server URL (default: $MODELPORT_URL or http://127.0.0.1:8000)")
    parser.add_argument("--api-key", help="API key (default: $MODELPORT_API_KEY)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    push = commands.add_parser("push", help="upload a model version and follow it until ready or failed")
    push.add_argument("model", help="owner/name")
    push.add_argument("--format", required=True, choices=["onnx", "torchscript", "state_dict"])
    push.add_argument(
        "--weights",
        "--artifact",
        dest="artifact",
        required=True,
        type=Path,
        help="the model file: .onnx, TorchScript archive, or state_dict weights",
    )
    push.add_argument("--source", type=Path, help="Python source defining the network (state_dict)")
    push.add_argument("--entrypoint", help="nn.Module subclass or factory function in --source")
    push.add_argument("--init-kwargs", type=_json_arg(dict), help="JSON object passed to the entrypoint")
    push.add_argument("--inputs", type=_json_arg(list), help='JSON array of {"name", "dtype", "shape"}')
    push.add_argument("--outputs", type=_json_arg(list), help="JSON array of output names")
    push.add_argument("--create", action="store_true", help="create the model first if it does not exist")
    push.add_argument("--public", action="store_true", help="with --create: make the model public")
    push.add_argument("--description", default="", help="with --create: the model's description")
    push.add_argument("--no-wait", action="store_true", help="return once uploaded (queued)")
    push.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for ready (default 900)")

    predict = commands.add_parser("predict", help="call a model with .npy inputs; writes <output>.npy files")
    predict.add_argument("model", help="owner/name")
    predict.add_argument(
        "--input",
        "-i",
        dest="inputs",
        action="append",
        type=_input_arg,
        required=True,
        metavar="NAME=@FILE.npy",
        help="an input array (repeat for each input)",
    )
    predict.add_argument("--version", type=int, help="a version number (default: the model's default)")
    predict.add_argument("--output-dir", "-o", type=Path, default=Path("."), help="where to write outputs")
    predict.add_argument("--timeout", type=float, default=120.0)

    commands.add_parser("status", help="the account and its balance")
    commands.add_parser("models", help="your models and public ones")
    return parser


def credits_text(micro: int) -> str:
    """Credits as the dashboard and the admin show them: "49,999.999710" (six decimals, grouped)."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(int(micro)), 1_000_000)
    return f"{sign}{whole:,}.{frac:06d}"


def _credits_of(credits: dict[str, Any], name: str) -> str:
    micro = credits.get(f"{name}_micro")
    if isinstance(micro, int):
        return credits_text(micro)
    value = credits.get(name)
    return credits_text(round(value * 1_000_000)) if isinstance(value, int | float) else str(value)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


class _UploadProgress:
    """Upload progress on stderr: one rewritten line on a terminal, a few lines otherwise."""

    def __init__(self, name: str, out: TextIO) -> None:
        self.name, self.out = name, out
        self.tty = out.isatty()
        self.shown = -1

    def __call__(self, sent: int, total: int) -> None:
        percent = 100 if total == 0 else int(sent * 100 / total)
        step = percent if self.tty else percent // 25 * 25
        if step == self.shown:
            return
        self.shown = step
        line = f"uploading {self.name}: {percent:3d}% ({_size(sent)} of {_size(total)})"
        self.out.write(("\r" + line + ("\n" if percent == 100 else "")) if self.tty else line + "\n")
        self.out.flush()


def cmd_push(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.create:
        name = args.model.partition("/")[2]
        try:
            client.model(args.model)
        except ModelportError as exc:
            if exc.status != 404:
                raise
            client.create_model(name, visibility="public" if args.public else "private", description=args.description)
            print(f"created model {args.model}", file=err)
    version = client.upload(
        args.model,
        args.format,
        args.artifact,
        source=args.source,
        entrypoint=args.entrypoint,
        init_kwargs=args.init_kwargs,
        inputs=args.inputs,
        outputs=args.outputs,
        on_upload=_UploadProgress(args.artifact.name, err),
    )
    number = version["version"]
    print(f"version {number}: {version['status']}", file=err)
    if args.no_wait:
        print(json.dumps(version), file=out)
        return 0

    def progress(v: dict[str, Any]) -> None:
        if v["status"] != version["status"]:
            print(f"version {number}: {v['status']}", file=err)

    final = client.wait_version(args.model, number, timeout=args.timeout, on_progress=progress)
    if final["status"] == "failed":
        error = final.get("error") or {}
        print(f"error: version {number} of {args.model} failed: {error.get('code')}: {error.get('message')}", file=err)
        return 1
    report = final.get("report") or {}
    print(f"{args.model} version {number} is ready", file=out)
    for direction in ("inputs", "outputs"):
        for spec in (final.get("signature") or {}).get(direction, []):
            shape = ", ".join("?" if d is None else str(d) for d in spec["shape"])
            print(f"  {direction[:-1]:6} {spec['name']}: {spec['dtype']} [{shape}]", file=out)
    for key in ("parity_max_abs_error", "latency_ms_p50", "peak_memory_mb"):
        if key in report:
            print(f"  {key}: {report[key]}", file=out)
    return 0


def cmd_predict(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    inputs = {}
    for name, path in args.inputs:
        try:
            inputs[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            print(f"error: cannot read input {name} from {path}: {exc}", file=err)
            return 2
    result = client.predict(args.model, inputs, version=args.version, timeout=args.timeout)
    assert isinstance(result, Prediction)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    print(f"prediction {result.id} ({args.model} version {result.version}): succeeded", file=out)
    for name, array in result.items():
        path = args.output_dir / f"{name}.npy"
        np.save(path, array, allow_pickle=False)
        print(f"  {name}: {array.dtype} {tuple(array.shape)} -> {path}", file=out)
    credits = result.credits
    print(f"credits charged: {_credits_of(credits, 'charged')} (royalty {_credits_of(credits, 'royalty')})", file=out)
    return 0


def cmd_status(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    status = client.status()
    print(f"server:  {status['url']}", file=out)
    print(f"account: {status['username']}{' (staff)' if status.get('is_staff') else ''}", file=out)
    print(f"credits: {_credits_of(status, 'credits')}", file=out)
    return 0


def cmd_models(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    models = client.models()
    if not models:
        print("no models", file=out)
        return 0
    rows = [
        (
            f"{m['owner']}/{m['name']}",
            m["visibility"],
            "-" if m["default_version"] is None else str(m["default_version"]),
            m.get("description") or "",
        )
        for m in models
    ]
    widths = [max(len(r[i]) for r in [("MODEL", "VISIBILITY", "DEFAULT", ""), *rows]) for i in range(3)]
    for row in [("MODEL", "VISIBILITY", "DEFAULT", "DESCRIPTION"), *rows]:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3], file=out)
    return 0


COMMANDS = {"push": cmd_push, "predict": cmd_predict, "status": cmd_status, "models": cmd_models}


def main(argv: list[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        with Client(url=args.url, api_key=args.api_key) as client:
            return COMMANDS[args.command](client, args, out, err)
    except ModelportError as exc:
        print(f"error: {exc}", file=err)
        for field, messages in (exc.errors or {}).items() if isinstance(exc.errors, dict) else ():
            print(f"  {field}: {messages}", file=err)
        return 1
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {args.url or 'the server'}: {exc}", file=err)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=err)
        return 1
