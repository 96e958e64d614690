"""``meshgpu run`` and ``meshgpu devices``: standalone inference on this machine.

``meshgpu run`` is the first of meshgpu's three operating modes (standalone, mesh,
simulation): it loads a model with :func:`meshgpu.inference.load`, feeds it ``.npy`` files,
and prints or saves the outputs. ``meshgpu devices`` lists what this machine can run on.
Both are thin: parsing and rendering here, everything else in :mod:`meshgpu.inference`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from meshgpu.inference.session import Session

BACKENDS = ("auto", "opencl", "onnxruntime")
PREVIEW_VALUES = 10


def _format_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"


def _parse_inputs(
    pairs: tuple[str, ...], default_name: str | None = None, names: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``NAME=FILE`` pairs (``.npy``, or ``.npz``: the array named NAME, else its only
    one) -> arrays; raises click.BadParameter naming the bad pair.

    A bare ``FILE.npy`` feeds ``default_name`` (the model's only input), as in
    ``meshgpu submit``: the same ``--input`` that works there must work here. ``names``:
    the model's inputs, named when a bare file cannot say which it feeds."""
    from meshgpu.client.inputs import load_input
    from meshgpu.errors import ConfigError

    feeds: dict[str, Any] = {}
    for pair in pairs:
        name, separator, path = pair.partition("=")
        if (not separator or not name or not path) and default_name is not None:
            if not Path(pair).is_file():
                raise click.BadParameter(
                    f"{pair!r} is not NAME=FILE.npy, nor a .npy file for the model's "
                    f"only input {default_name!r}",
                    param_hint="--input",
                )
            name, path = default_name, pair
        elif (not separator or not name or not path) and len(names) > 1:
            # It said only "is not NAME=FILE.npy" to a user with one .npz of every input.
            first = names[0]
            raise click.BadParameter(
                f"{pair!r} is not NAME=FILE.npy; the model has inputs {', '.join(names)}: "
                f"give each as NAME=FILE (one .npz holding them all serves every NAME: "
                f"-i {first}={pair} -i {names[1]}={pair} ...)",
                param_hint="--input",
            )
        elif not separator or not name or not path:
            raise click.BadParameter(f"{pair!r} is not NAME=FILE.npy", param_hint="--input")
        if name in feeds:
            raise click.BadParameter(f"input {name!r} given twice", param_hint="--input")
        try:  # the files `meshgpu submit` reads, with its messages (an .npz, a CSV)
            feeds[name] = load_input(Path(path), name)
        except ConfigError as error:
            raise click.BadParameter(str(error), param_hint="--input") from None
    return feeds


@click.command("run")
@click.argument("model")
@click.option(
    "--input",
    "-i",
    "inputs",
    multiple=True,
    metavar="NAME=FILE.npy",
    help="A model input and the .npy file holding it (or an .npz: the array named NAME, "
    "else its only one); repeat for each input.",
)
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False), help="Write every output to this .npz."
)
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default="auto",
    show_default=True,
    help="auto: OpenCL when it supports every operator, else onnxruntime.",
)
@click.option("--device", help="A device id from `meshgpu devices`, e.g. opencl:0.")
@click.option(
    "--allow-fallback", is_flag=True, help="Let --backend opencl fall back to onnxruntime."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def run(
    model: str,
    inputs: tuple[str, ...],
    output: str | None,
    backend: str,
    device: str | None,
    allow_fallback: bool,
    as_json: bool,
) -> None:
    """Run MODEL (a .onnx path, or `digits` for the shipped classifier) on this machine."""
    import numpy as np

    from meshgpu import inference
    from meshgpu.cli.submit import model_input_names
    from meshgpu.errors import MeshError

    if output is not None and not os.path.isdir(os.path.dirname(output) or "."):
        # Found only after the run, it was a FileNotFoundError traceback from numpy.
        raise click.BadParameter(
            f"directory {os.path.dirname(output)!r} does not exist", param_hint="'--output'"
        )

    def load() -> Session:
        try:
            return inference.load(
                model,
                backend=backend,  # type: ignore[arg-type]
                device=device,
                allow_fallback=allow_fallback,
            )
        except MeshError as error:
            message = f"{type(error).__name__}: {_as_flags(str(error))}"
            raise click.ClickException(message) from error

    session: Session | None = None
    bare = any("=" not in pair for pair in inputs)
    names = model_input_names(model) if bare else []
    if bare and not names:
        # No input names: the model is no readable ONNX file, and its load says why; a
        # bare input was refused as 'not NAME=FILE.npy' instead.
        session = load()
    feeds = _parse_inputs(inputs, names[0] if len(names) == 1 else None, tuple(names))
    if session is None:
        session = load()
    try:
        results = session.run(feeds)
    except MeshError as error:
        raise click.ClickException(f"{type(error).__name__}: {_as_flags(str(error))}") from error
    if output is not None:
        try:
            np.savez(output, **results)  # type: ignore[arg-type]
        except OSError as error:
            raise click.ClickException(f"cannot write {output}: {error.strerror}") from None
    summary = {
        "model": session.model.source,
        "sha256": session.digest,
        "backend": session.backend,
        "backend_reason": session.backend_reason,
        "device": session.device.id,
        "device_name": session.device.name,
        "latency_ms": round(session.last_run_seconds * 1000, 3),
        "output_file": output,
        "outputs": {
            name: {
                "shape": list(value.shape),
                "dtype": str(value.dtype),
                **({} if output is not None else {"values": value.tolist()}),
            }
            for name, value in results.items()
        },
    }
    if as_json:
        click.echo(json.dumps(summary))
        return
    _render_run(summary, results)


def _render_run(summary: dict[str, Any], results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"[bold]{summary['model']}[/] (sha256 {summary['sha256'][:16]}…) ran on "
        f"[bold]{summary['backend']}[/] / {summary['device']} ({summary['device_name']}) "
        f"in {summary['latency_ms']:.2f} ms"
    )
    console.print(f"backend: {summary['backend_reason']}")
    table = Table("output", "shape", "dtype", "min", "max", "first values / argmax")
    for name, value in results.items():
        flat = value.reshape(-1)
        if not flat.size:  # a zero-size output: "argmax" with nothing after it before
            preview = "(empty)"
        elif value.ndim == 2 and value.shape[1] > 1 and value.dtype.kind == "f":
            preview = "argmax " + " ".join(str(i) for i in value.argmax(axis=1)[:PREVIEW_VALUES])
        else:
            preview = " ".join(_number(v) for v in flat[:PREVIEW_VALUES].tolist())
        if flat.size > PREVIEW_VALUES:
            preview += " …"
        table.add_row(
            name,
            str(list(value.shape)),
            str(value.dtype),
            _number(flat.min().item()) if flat.size else "-",
            _number(flat.max().item()) if flat.size else "-",
            preview,
        )
    console.print(table)
    if summary["output_file"]:
        console.print(f"wrote {summary['output_file']}")


def _number(value: float | int | bool) -> str:
    """Floats to 4 significant digits; integers exact (an int64 id of 1099511627779
    shown as 1.1e+12 is a different id)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@click.command("devices")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option(
    "--check",
    is_flag=True,
    help="Exit with status 1 when no OpenCL device is usable (for install scripts and CI).",
)
def devices(as_json: bool, check: bool) -> None:
    """List every device this machine can run inference on, each probed.

    Every OpenCL device builds and runs a small model and is compared with numpy; the
    verdict (usable, and the problem when not) is cached per device and driver, so only
    the first call on a machine pays the probe (its probe_ms)."""
    from meshgpu import inference
    from meshgpu.inference import probe

    found = inference.devices()
    judged = [probe.verdict(device) for device in found]
    _show_devices(found, judged, as_json)
    usable_opencl = any(
        v.usable for device, v in zip(found, judged, strict=True) if device.backend == "opencl"
    )
    if check and not usable_opencl:
        raise SystemExit(1)


def _show_devices(found: Any, judged: list[Any], as_json: bool) -> None:
    if as_json:
        entries = [
            device.as_dict() | verdict.as_dict()
            for device, verdict in zip(found, judged, strict=True)
        ]
        click.echo(json.dumps({"devices": entries}))
        return
    from rich.console import Console
    from rich.table import Table

    # One column per device and a row per property: readable in 80 columns, where a row
    # per device with twelve properties is not.
    table = Table("property", *(device.id for device in found), title="inference devices")
    rows: list[tuple[str, list[str]]] = [
        ("usable", ["yes" if v.usable else "NO" for v in judged]),
        ("problem", [v.problem or "-" for v in judged]),
        (
            "probe",
            [_probe_cell(device.backend, v) for device, v in zip(found, judged, strict=True)],
        ),
        ("name", [device.name for device in found]),
        ("vendor", [device.vendor for device in found]),
        ("type", [device.type for device in found]),
        ("platform", [device.platform for device in found]),
        ("compute units", [str(device.compute_units) for device in found]),
        ("global memory", [_format_bytes(device.global_memory_bytes) for device in found]),
        ("local memory", [_format_bytes(device.local_memory_bytes) for device in found]),
        ("max allocation", [_format_bytes(device.max_allocation_bytes) for device in found]),
        ("fp16", ["yes" if device.fp16 else "no" for device in found]),
        ("fp64", ["yes" if device.fp64 else "no" for device in found]),
        ("driver", [device.driver_version for device in found]),
        ("version", [device.version for device in found]),
    ]
    for label, values in rows:
        table.add_row(label, *values)
    console = Console()
    console.print(table)
    for device, verdict in zip(found, judged, strict=True):
        if not verdict.usable:
            console.print(f"{device.id} ({device.name}) is not used: {verdict.advice}")
    opencl = [v for device, v in zip(found, judged, strict=True) if device.backend == "opencl"]
    if not opencl:
        print(
            "no OpenCL device: install pyopencl with PoCL (pip install 'pyopencl[pocl]')",
            file=sys.stderr,
        )
    elif not any(v.usable for v in opencl):
        print("no usable OpenCL device: backend 'auto' runs on onnxruntime", file=sys.stderr)


def _probe_cell(backend: str, verdict: Any) -> str:
    if backend != "opencl":
        return "reference"
    return f"{verdict.probe_ms:.0f} ms" + (" (cached)" if verdict.cached else "")


_API_ADVICE = {
    "backend='onnxruntime'": "--backend onnxruntime",
    "allow_fallback=True": "--allow-fallback",
}
"""The Python API's words in the library's advice (``use allow_fallback=True or
backend='onnxruntime'``), as this command's flags."""


def _as_flags(message: str) -> str:
    for words, flag in _API_ADVICE.items():
        message = message.replace(words, flag)
    return message


__all__ = ["devices", "run"]
