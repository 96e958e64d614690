"""The dashboard's cost: first paint in headless Chromium and a node's CPU with it open.

A three-node loopback mesh (``meshgpu join`` processes, each with an HTTP port). Then:

* **first paint**: Chromium (Debian's ``chromium`` and ``chromium-driver`` through
  selenium, headless) loads node 0's ``/`` ``--loads`` times, each in a fresh tab; the page's
  own navigation timing gives ``first-contentful-paint`` and ``loadEventEnd``
  (milliseconds from the start of navigation);
* **a node's CPU**: node 0's user+system CPU from ``/proc/PID/stat`` over ``--seconds``
  with no dashboard open, then over the same time with the dashboard open (its live
  updates streaming); the difference is what the updates cost, in percent of one core.

The issue's goals: first paint under 1 s on loopback, the updates under 2% of a core.
On a shared machine the CPU figures carry the load of everything else the node does
(gossip, timers): compare the two columns of one run, not runs on different days.

Usage::

    python bench/dashboard.py                 # table
    python bench/dashboard.py --json
    python bench/dashboard.py --seconds 20 --loads 3
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.http.headless_chromium import MISSING, headless_chromium, installed

TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` so far (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def cpu_percent(pid: int, seconds: float) -> float:
    """Percent of one core process ``pid`` used over the next ``seconds``."""
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - start_cpu) / (time.monotonic() - start)


def start_mesh(root: Path) -> tuple[Any, list[int]]:
    from meshgpu.client.localmesh import LocalMesh

    ports = {f"dash-{c}": free_port() for c in "abc"}

    class WithHttp(LocalMesh):
        def command(self, node: Any, seeds: list[str]) -> list[str]:
            return [*super().command(node, seeds), "--http-port", str(ports[node.name])]

    mesh = WithHttp(root, 3, prefix="dash", slots=1)
    mesh.__enter__()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{ports['dash-a']}/mesh/status", timeout=5
            ) as response:
                status = json.loads(response.read())
            if sum(m["state"] == "alive" for m in status["members"]) == 3:
                return mesh, list(ports.values())
        except OSError:
            pass
        time.sleep(0.3)
    mesh.__exit__(None, None, None)
    raise RuntimeError("the mesh did not form")


TIMING = """
const nav = performance.getEntriesByType('navigation')[0];
const paint = performance.getEntriesByName('first-contentful-paint')[0];
return {fcp: paint ? paint.startTime : null, load: nav ? nav.loadEventEnd : null,
        dom: nav ? nav.domContentLoadedEventEnd : null};
"""


def first_paints(driver: Any, url: str, loads: int) -> list[dict[str, float]]:
    results = []
    for _ in range(loads):
        driver.switch_to.new_window("tab")
        driver.get(url)
        deadline = time.monotonic() + 10
        timing: dict[str, Any] = {}
        while time.monotonic() < deadline:
            timing = driver.execute_script(TIMING)
            if timing["fcp"] is not None and timing["load"]:
                break
            time.sleep(0.05)
        results.append({k: round(float(v), 1) for k, v in timing.items() if v is not None})
        driver.close()
        driver.switch_to.window(driver.window_handles[0])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seconds", type=float, default=60.0, help="each CPU window")
    parser.add_argument("--loads", type=int, default=5, help="page loads timed")
    args = parser.parse_args()
    if not installed():
        sys.exit(MISSING)
    with tempfile.TemporaryDirectory(prefix="meshgpu-dash-") as root:
        mesh, ports = start_mesh(Path(root))
        try:
            node = mesh.nodes[0]
            pid = node.process.pid
            url = f"http://127.0.0.1:{ports[0]}/"
            time.sleep(3)  # let the start settle
            closed = cpu_percent(pid, args.seconds)
            driver = headless_chromium()
            try:
                paints = first_paints(driver, url, args.loads)
                driver.get(url)  # the page that stays open
                time.sleep(2)
                opened = cpu_percent(pid, args.seconds)
            finally:
                driver.quit()
        finally:
            mesh.__exit__(None, None, None)
    fcps = [p["fcp"] for p in paints if "fcp" in p]
    result = {
        "machine": {"cpus": os.cpu_count(), "load_1min": os.getloadavg()[0]},
        "seconds": args.seconds,
        "first_contentful_paint_ms": {
            "p50": statistics.median(fcps) if fcps else None,
            "max": max(fcps) if fcps else None,
            "loads": paints,
        },
        "node_cpu_percent": {
            "dashboard_closed": round(closed, 2),
            "dashboard_open": round(opened, 2),
            "updates_cost": round(opened - closed, 2),
        },
        "goals": {"first_paint_ms": 1000, "updates_cost_percent": 2.0},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"machine: {os.cpu_count()} CPUs, load {result['machine']['load_1min']:.1f}")
    print(f"{'measure':<44} {'value':>10} {'goal':>8}")
    fcp = result["first_contentful_paint_ms"]
    print(f"{'first contentful paint p50 (ms)':<44} {fcp['p50']:>10} {'< 1000':>8}")
    print(f"{'first contentful paint max (ms)':<44} {fcp['max']:>10}")
    cpu = result["node_cpu_percent"]
    print(f"{'node CPU, no dashboard (% of a core)':<44} {cpu['dashboard_closed']:>10}")
    print(f"{'node CPU, dashboard open (% of a core)':<44} {cpu['dashboard_open']:>10}")
    print(f"{'cost of the updates (% of a core)':<44} {cpu['updates_cost']:>10} {'< 2':>8}")


if __name__ == "__main__":
    main()
