"""Mesh formation: how long three `meshgpu join` daemons on one machine take to become a mesh.

Two ways to meet, measured in the same run:

- ``mdns``: no seeds; the daemons announce and browse ``_meshgpu._udp.local.``;
- ``static``: every daemon gets the other two as ``--peer`` seeds and ``--no-mdns``.

Each run starts three fresh daemons (fresh data dirs, a mesh name of its own, ports
chosen up front so the static seeds can name them) at the same moment. Times are taken
in this process on one monotonic clock:

- ``listening``: each daemon's "listening on" line (it serves; mDNS registration and
  seeding start right then, so they are inside the formation time);
- ``members``: the daemon's own ``wait`` op answers once it holds 3 live members;
- ``formed_s``: from the *last* daemon listening to the *last* one holding 3 members
  (process start-up, mostly Python imports, is left out: it is not the protocol);
- ``leader_s``: from the last one listening until all three name the same leader.

The issue's targets: by mDNS under 2 s, by static peers under 1 s. mDNS traffic goes out
on this machine's interfaces like any daemon's (the mesh name is unique per run, so
other meshes ignore it); ``--netns`` instead runs all three in a throwaway network
namespace with multicast routed on ``lo`` (needs root), which keeps the LAN quiet.

Usage::

    python bench/mesh_formation.py                 # 3 runs of each, rich table
    python bench/mesh_formation.py --runs 5 --json
    sudo python bench/mesh_formation.py --netns

Benchmarks are not tests: this prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import trio

from meshgpu.daemon.auth import Authenticator
from meshgpu.daemon.rpc import open_rpc
from meshgpu.errors import RequestFailedError

NODES = 3
LISTENING = re.compile(rb"meshgpu node (\S+) listening on ([\d.]+):(\d+)")
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Run:
    """One formation, in seconds on this process's monotonic clock."""

    method: str
    run: int
    formed_s: float | None
    leader_s: float | None
    startup_spread_s: float
    """From the first daemon listening to the last (the start-up of Python, mostly)."""
    error: str | None = None


def free_ports(count: int) -> list[int]:
    """Ports free for both UDP and TCP right now (the daemons bind them a moment later)."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        if port not in ports:
            ports.append(port)
    return ports


def join_argv(data_dir: Path, mesh: str, port: int, seeds: Sequence[int], mdns: bool) -> list[str]:
    argv = [
        sys.executable,
        "-c",
        "from meshgpu.cli import main; main()",
        "join",
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--mesh",
        mesh,
        "--backend",
        "onnxruntime",
        "--data-dir",
        str(data_dir),
    ]
    for seed in seeds:
        argv += ["--peer", f"127.0.0.1:{seed}"]
    if not mdns:
        argv.append("--no-mdns")
    return argv


async def read_listening(process: trio.Process) -> float:
    """Time at which the daemon printed its 'listening on' line."""
    assert process.stdout is not None
    buffer = b""
    async for chunk in process.stdout:
        buffer += chunk
        if LISTENING.search(buffer):
            return trio.current_time()
    raise RuntimeError(f"daemon exited before listening (exit {process.returncode})")


async def members_ready(port: int) -> float:
    async with open_rpc(("127.0.0.1", port), Authenticator(None, "client-bench")) as rpc:
        await rpc.call("wait", alive=NODES, timeout=TIMEOUT_S)
    return trio.current_time()


async def leaders_agree(ports: Sequence[int]) -> float:
    """Time at which all daemons first named one leader (re-read on every change)."""
    while True:
        leaders = set()
        generations = []
        for port in ports:
            async with open_rpc(("127.0.0.1", port), Authenticator(None, "client-bench")) as rpc:
                status = await rpc.call("status")
            leaders.add(status["leader"])
            generations.append(status["generation"])
        if len(leaders) == 1 and None not in leaders:
            return trio.current_time()
        async with open_rpc(("127.0.0.1", ports[0]), Authenticator(None, "client-bench")) as rpc:
            # No change within the bound is an error answer: then read everyone again.
            with contextlib.suppress(RequestFailedError):
                await rpc.call("wait", after_generation=generations[0], timeout=0.2)


async def one_run(method: str, index: int, root: Path) -> Run:
    mesh = f"bench-{secrets.token_hex(4)}"
    ports = free_ports(NODES)
    environment = {k: v for k, v in os.environ.items() if k not in ("MESHGPU_KEY",)}
    processes: list[trio.Process] = []
    try:
        with trio.fail_after(TIMEOUT_S):
            for n, port in enumerate(ports):
                seeds = [p for p in ports if p != port] if method == "static" else []
                data_dir = root / f"{method}-{index}-{n}"
                argv = join_argv(data_dir, mesh, port, seeds, method == "mdns")
                processes.append(
                    await trio.lowlevel.open_process(
                        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=environment
                    )
                )
            listening: list[float] = []
            ready: list[float] = []
            async with trio.open_nursery() as nursery:

                async def watch(process: trio.Process, port: int) -> None:
                    listening.append(await read_listening(process))
                    ready.append(await members_ready(port))

                for process, port in zip(processes, ports, strict=True):
                    nursery.start_soon(watch, process, port)
            leader_at = await leaders_agree(ports)
        last_listening = max(listening)
        return Run(
            method,
            index,
            formed_s=round(max(ready) - last_listening, 4),
            leader_s=round(leader_at - last_listening, 4),
            startup_spread_s=round(last_listening - min(listening), 4),
        )
    except (trio.TooSlowError, RuntimeError, OSError) as error:
        return Run(method, index, None, None, 0.0, error=f"{type(error).__name__}: {error}")
    finally:
        for process in processes:
            if process.returncode is None:
                process.terminate()
        with trio.move_on_after(10):
            for process in processes:
                await process.wait()
        for process in processes:
            if process.returncode is None:
                process.kill()


async def bench(runs: int) -> list[Run]:
    results = []
    with tempfile.TemporaryDirectory(prefix="meshgpu-bench-") as scratch:
        for index in range(runs):
            for method in ("mdns", "static"):
                result = await one_run(method, index, Path(scratch))
                print(f"{method} run {index}: {result}", file=sys.stderr, flush=True)
                results.append(result)
    return results


def summarise(results: list[Run]) -> dict[str, dict[str, float | int | None]]:
    summary: dict[str, dict[str, float | int | None]] = {}
    for method in ("mdns", "static"):
        formed = [r.formed_s for r in results if r.method == method and r.formed_s is not None]
        leader = [r.leader_s for r in results if r.method == method and r.leader_s is not None]
        summary[method] = {
            "runs": sum(1 for r in results if r.method == method),
            "failed": sum(1 for r in results if r.method == method and r.error),
            "formed_median_s": statistics.median(formed) if formed else None,
            "formed_max_s": max(formed) if formed else None,
            "leader_median_s": statistics.median(leader) if leader else None,
            "leader_max_s": max(leader) if leader else None,
        }
    return summary


def render(summary: dict[str, dict[str, Any]], machine: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    table = Table(
        "method",
        "runs",
        "failed",
        "members p50 s",
        "members max s",
        "leader p50 s",
        "leader max s",
        "target",
        title=f"3-node mesh formation on {machine['host']} ({machine['where']})",
    )
    targets = {"mdns": "< 2 s", "static": "< 1 s"}
    for method, row in summary.items():
        table.add_row(
            method,
            str(row["runs"]),
            str(row["failed"]),
            seconds(row["formed_median_s"]),
            seconds(row["formed_max_s"]),
            seconds(row["leader_median_s"]),
            seconds(row["leader_max_s"]),
            targets[method],
        )
    Console().print(table)


def rerun_in_netns(argv: list[str]) -> int:
    """Run this script again inside a throwaway namespace with multicast routed on lo."""
    name = f"mgbench{secrets.token_hex(3)}"
    try:
        for command in (
            ["ip", "netns", "add", name],
            ["ip", "-n", name, "link", "set", "lo", "up", "multicast", "on"],
            ["ip", "-n", name, "route", "add", "224.0.0.0/4", "dev", "lo"],
        ):
            subprocess.run(command, check=True, capture_output=True)
        inner = [a for a in argv if a != "--netns"] + ["--where", "private netns, mDNS on lo"]
        command = ["ip", "netns", "exec", name, sys.executable, __file__, *inner]
        return subprocess.run(command, check=False).returncode
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="formations per method")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--netns", action="store_true", help="run in a private namespace")
    parser.add_argument("--where", default="loopback, this namespace", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.netns:
        if os.geteuid() != 0 or shutil.which("ip") is None:
            parser.error("--netns needs root and the `ip` command")
        return rerun_in_netns(argv)
    results = trio.run(bench, args.runs)
    machine = {
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "where": args.where,
    }
    summary = summarise(results)
    if args.json:
        print(
            json.dumps(
                {
                    "machine": machine,
                    "summary": summary,
                    "runs": [asdict(result) for result in results],
                }
            )
        )
    else:
        render(summary, machine)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
