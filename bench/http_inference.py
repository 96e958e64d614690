"""HTTP inference: meshgpu's Open Inference Protocol endpoint against Ray Serve, one run.

The same models (the shipped digits classifier, and a MatMul model of about a millisecond
on one core) behind meshgpu's V2 endpoint on a 3-node loopback mesh (requests spread over
the three nodes' HTTP ports) and behind a Ray Serve deployment of 3 replicas, each an
onnxruntime session (the ``bench`` extra brings ``ray[serve]``; without it only meshgpu
is measured and the table says so). Both get the same V2 JSON body; clients are threads
with one keep-alive connection each, at concurrency 1, 8 and 64, for ``--seconds`` per
cell. Both systems are up for the whole run and take turns (``--rounds`` turns per cell,
the order alternating), so the load of a shared machine falls on both alike. Printed:
throughput, p50 and p99 latency per cell, and meshgpu's over Ray Serve's.

The file is not ``bench/http.py``: a script's own directory comes first on its import
path, so that name would shadow the standard library's ``http`` package (``http.client``,
which this and every other script in ``bench/`` uses).

Usage::

    python bench/http_inference.py                 # table
    python bench/http_inference.py --json          # one JSON object on stdout
    python bench/http_inference.py --seconds 3 --concurrency 1,8

Benchmarks are not tests: this prints numbers and asserts nothing. On a shared machine,
compare the two systems of one run (ratios), not numbers across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "meshgpu" / "inference" / "models" / "digits.onnx"
MATMUL_SIZE = 1024


def matmul_model(path: Path) -> Path:
    """y = x @ W with W of MATMUL_SIZE^2 floats: about a millisecond per row on one core."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).normal(size=(MATMUL_SIZE, MATMUL_SIZE))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", MATMUL_SIZE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", MATMUL_SIZE])],
        [numpy_helper.from_array(weights.astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def v2_body(name: str, array: np.ndarray) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": list(array.shape),
                    "datatype": "FP32",
                    "data": array.reshape(-1).tolist(),
                }
            ]
        }
    ).encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def drive(
    targets: list[tuple[int, str]], body: bytes, concurrency: int, seconds: float
) -> dict[str, Any]:
    """``concurrency`` threads, each with a keep-alive connection to one target (round
    robin), posting ``body`` until ``seconds`` pass; throughput and latencies."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker(index: int) -> None:
        port, path = targets[index % len(targets)]
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine = []
        while time.perf_counter() < stop:
            started = time.perf_counter()
            try:
                connection.request(
                    "POST", path, body=body, headers={"Content-Type": "application/json"}
                )
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            if ok:
                mine.append(time.perf_counter() - started)
            else:
                with lock:
                    errors[0] += 1
        connection.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "latencies": latencies,
        "errors": errors[0],
        "elapsed": time.perf_counter() - began,
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Throughput and latency percentiles of the runs of one cell, taken together."""
    latencies = sorted(x for run in runs for x in run["latencies"])
    elapsed = sum(run["elapsed"] for run in runs)
    return {
        "requests": len(latencies),
        "errors": sum(run["errors"] for run in runs),
        "throughput": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
    }


class Mesh:
    """Three ``meshgpu join`` processes on loopback, each with an HTTP port."""

    def __init__(self, root: Path) -> None:
        from meshgpu.client.localmesh import LocalMesh

        ports = {f"bench-{c}": free_port() for c in "abc"}

        class WithHttp(LocalMesh):
            def command(self, node: Any, seeds: list[str]) -> list[str]:
                return [*super().command(node, seeds), "--http-port", str(ports[node.name])]

        self.ports = list(ports.values())
        self.mesh = WithHttp(root, 3, prefix="bench", slots=1)

    def __enter__(self) -> Mesh:
        self.mesh.__enter__()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.ports[0], timeout=5)
                connection.request("GET", "/mesh/status")
                status = json.loads(connection.getresponse().read())
                if sum(m["state"] == "alive" for m in status["members"]) == 3:
                    return self
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError("the mesh did not form")

    def __exit__(self, *exc: object) -> None:
        self.mesh.__exit__(*exc)

    def add(self, name: str, path: Path) -> None:
        subprocess.run(
            [sys.executable, "-m", "meshgpu", "models", "add", name, str(path),
             "--peer", self.mesh.nodes[0].peer],
            check=True, capture_output=True,
        )  # fmt: skip
        for port in self.ports:  # every node warm, its bytes fetched
            deadline = time.monotonic() + 60
            while True:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                connection.request("POST", f"/v2/repository/models/{name}/load", body=b"")
                response = connection.getresponse()
                response.read()
                if response.status == 200:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} does not load on port {port}")
                time.sleep(0.2)


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        return False
    return True


def start_ray(models: dict[str, Path], port: int) -> None:
    """Ray Serve: one deployment of 3 replicas per model, each an onnxruntime session,
    answering the same V2 JSON body with the V2 JSON response."""
    import ray
    from ray import serve
    from starlette.requests import Request

    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})

    @serve.deployment(num_replicas=3, max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.25})
    class OnnxModel:
        def __init__(self, path: str) -> None:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1
            self.session = onnxruntime.InferenceSession(
                path, options, providers=["CPUExecutionProvider"]
            )

        async def __call__(self, request: Request) -> dict[str, Any]:
            document = await request.json()
            feeds = {
                t["name"]: np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])
                for t in document["inputs"]
            }
            names = [o.name for o in self.session.get_outputs()]
            outputs = self.session.run(names, feeds)
            return {
                "outputs": [
                    {"name": n, "datatype": "FP32", "shape": list(o.shape),
                     "data": o.reshape(-1).tolist()}
                    for n, o in zip(names, outputs, strict=True)
                ]
            }  # fmt: skip

    for name, path in models.items():
        serve.run(OnnxModel.bind(str(path)), name=name, route_prefix=f"/{name}")


@contextlib.contextmanager
def ray_serving(models: dict[str, Path]) -> Iterator[int]:
    """Ray Serve up with ``models`` (start_ray) while in the block; yields its port."""
    import ray
    from ray import serve

    port = free_port()
    try:
        start_ray(models, port)
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument(
        "--rounds", type=int, default=4, help="turns per cell, the systems alternating"
    )
    arguments = parser.parse_args()
    levels = [int(c) for c in arguments.concurrency.split(",")]
    rng = np.random.default_rng(1)
    work = tempfile.TemporaryDirectory(prefix="meshgpu-bench-http-")
    root = Path(work.name)
    models = {"digits": DIGITS, "matmul": matmul_model(root / "matmul.onnx")}
    bodies = {
        "digits": v2_body("pixels", rng.random((1, 64), dtype=np.float32) * 16),
        "matmul": v2_body("x", rng.normal(size=(1, MATMUL_SIZE)).astype(np.float32)),
    }
    ray_note = "measured"
    if not ray_available():
        ray_note = "not installed (pip install -e '.[bench]')"
    cells: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    with contextlib.ExitStack() as stack:
        # Ray prints its own messages on stdout (at shutdown too): they go to stderr for
        # the whole run, so that the JSON stays clean.
        stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        mesh = stack.enter_context(Mesh(root / "mesh"))
        mesh.add("matmul", models["matmul"])
        systems = {
            "meshgpu": {
                name: [(port, f"/v2/models/{name}/infer") for port in mesh.ports] for name in bodies
            }
        }
        if ray_note == "measured":
            ray_port = stack.enter_context(ray_serving(models))
            systems["ray-serve"] = {name: [(ray_port, f"/{name}")] for name in bodies}
        for routes in systems.values():
            for name, body in bodies.items():
                drive(routes[name], body, 4, 1.0)  # warm-up
        # Both systems up the whole time, measured in turns (the order alternating), so
        # the load of a shared machine falls on both alike.
        order = list(systems)
        for turn in range(arguments.rounds):
            for name, body in bodies.items():
                for level in levels:
                    for system in order if turn % 2 == 0 else order[::-1]:
                        run = drive(
                            systems[system][name], body, level, arguments.seconds / arguments.rounds
                        )
                        cells.setdefault((system, name, level), []).append(run)
    results = [
        {"system": system, "model": name, "concurrency": level, **summary(runs)}
        for (system, name, level), runs in cells.items()
    ]
    ratios = []
    for cell in results:
        if cell["system"] != "meshgpu":
            continue
        other = next(
            (
                r
                for r in results
                if r["system"] == "ray-serve"
                and r["model"] == cell["model"]
                and r["concurrency"] == cell["concurrency"]
            ),
            None,
        )
        if other and other["throughput"]:
            ratios.append(
                {
                    "model": cell["model"],
                    "concurrency": cell["concurrency"],
                    "throughput_ratio": cell["throughput"] / other["throughput"],
                    "p50_ratio": (cell["p50_ms"] or 0) / (other["p50_ms"] or 1),
                }
            )
    report = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
        },
        "seconds_per_cell": arguments.seconds,
        "rounds": arguments.rounds,
        "ray_serve": ray_note,
        "results": results,
        "meshgpu_over_ray": ratios,
    }
    if arguments.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    print(f"machine: {report['machine']}; Ray Serve: {ray_note}")
    print(
        f"{'system':<10} {'model':<7} {'conc':>4} {'req/s':>8} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'err':>4}"
    )
    for cell in results:
        print(
            f"{cell['system']:<10} {cell['model']:<7} {cell['concurrency']:>4} "
            f"{cell['throughput']:>8.1f} {cell['p50_ms'] or 0:>8.2f} {cell['p99_ms'] or 0:>8.2f} "
            f"{cell['errors']:>4}"
        )
    for ratio in ratios:
        print(
            f"meshgpu / Ray Serve  {ratio['model']:<7} c={ratio['concurrency']:<3} "
            f"throughput x{ratio['throughput_ratio']:.2f}  p50 x{ratio['p50_ratio']:.2f}"
        )


if __name__ == "__main__":
    main()
