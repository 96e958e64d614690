"""What the mesh benchmarks share: a loopback mesh that is formed before timing starts,
the conditions of the machine, the models, and how figures are shown.

Imported by ``bench/dispatch.py``, ``bench/scaling.py`` and ``bench/failover.py`` (run as
scripts, so ``bench/`` is on ``sys.path``). The daemons are
:class:`meshgpu.client.localmesh.LocalMesh` children (the launcher ``meshgpu demo`` uses):
127.0.0.1 only, free ports, static seeds, no mDNS, stopped on every exit.
"""

from __future__ import annotations

import os
import platform
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import trio
from onnx import TensorProto, helper, numpy_helper

from meshgpu.client import AsyncClient
from meshgpu.client.localmesh import LocalMesh


def exit_on_sigterm() -> None:
    """Turn SIGTERM (``timeout``, a CI runner) into SystemExit, so the ``with LocalMesh``
    blocks run and every daemon is stopped instead of orphaned."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def conditions() -> dict[str, Any]:
    """The machine as the measurement saw it: cores, model, load averages right now."""
    one, five, fifteen = os.getloadavg()
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "loadavg": [round(one, 2), round(five, 2), round(fifteen, 2)],
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def wait_formed(
    mesh: LocalMesh, environ: dict[str, str] | None = None, timeout: float = 120.0
) -> None:
    """Block until the first node sees every node alive and a leader is named (bounded:
    the daemon's ``wait`` op raises after ``timeout``); ``environ`` holds a keyed mesh's key."""

    async def formed() -> None:
        async with AsyncClient(mesh.nodes[0].peer, environ=environ or {}) as client:
            await client.call("wait", alive=len(mesh.nodes), timeout=timeout)

    trio.run(formed)


def identity_model(width: int = 16) -> bytes:
    """Identity on a float32 [1, width] tensor: the no-op task."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "noop", [x], [y])
    return _serialised(graph)


def matmul_model(layers: int, width: int = 256, rows: int = 16) -> bytes:
    """``layers`` MatMul+Relu of a float32 [rows, width] tensor with fixed seeded weights:
    a model whose run time grows with ``layers`` (about 1 ms at the defaults' scale)."""
    generator = np.random.default_rng(7)
    nodes, weights, previous = [], [], "x"
    for layer in range(layers):
        weight = (generator.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        weights.append(numpy_helper.from_array(weight, f"w{layer}"))
        nodes.append(helper.make_node("MatMul", [previous, f"w{layer}"], [f"m{layer}"]))
        out = "y" if layer == layers - 1 else f"r{layer}"
        nodes.append(helper.make_node("Relu", [f"m{layer}"], [out]))
        previous = out
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, width])
    graph = helper.make_graph(nodes, "matmuls", [x], [y], initializer=weights)
    return _serialised(graph)


def _serialised(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def show_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table on stderr (stdout stays for the JSON object)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right" if column != columns[0] else "left")
    for row in rows:
        table.add_row(*(_shown(value) for value in row))
    Console(stderr=True, width=160).print(table)


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)
