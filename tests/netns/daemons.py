"""`meshgpu join` daemons on the hosts of a :class:`~tests.netns.lab.NetnsLab`.

Each daemon runs as ``ip netns exec <host> python -m meshgpu.cli join`` with mDNS on and
no ``--peer``: discovery is the real thing. Every host uses the default port (7946) on
its own address; namespaces keep the ports apart. The test process calls a daemon's API
from inside the daemon's namespace (:func:`~tests.netns.lab.in_namespace`), so the calls
still work while that host is cut off from the others.

Conditions are waited for with :meth:`Fleet.until`: it re-reads every daemon's status,
blocking on the daemon's own ``wait`` op (woken by its next membership or leader
change) between reads, and fails at the deadline with the last status of every host.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from meshgpu.daemon.auth import Authenticator, MeshKey
from meshgpu.daemon.rpc import open_rpc
from meshgpu.errors import ClientError, RequestFailedError
from tests.netns.lab import Host, NetnsLab, in_namespace

PORT = 7946
LISTENING = re.compile(rb"meshgpu node (\S+) listening on ([\d.]+):(\d+)")
START_TIMEOUT_S = 60.0
Status = dict[str, Any]


@dataclass
class Daemon:
    """One running daemon and where its output goes."""

    host: Host
    process: subprocess.Popen[bytes]
    node_id: str
    data_dir: Path
    log: Path

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """A real ``kill -9``: no goodbye, no leave, no flush."""
        self.process.kill()
        self.process.wait(10)

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def join_argv(
    data_dir: Path, mesh: str, key_file: Path, host: Host, name: str | None = None
) -> list[str]:
    """The daemon's command line (named ``lab-host-<index>`` unless ``name`` is given); a
    host with a decoy interface pins eth0 (--interface)."""
    pin = ["--interface", "eth0"] if host.decoy_address else []
    return [
        sys.executable,
        "-c",
        "from meshgpu.cli import main; main()",
        "join",
        "--name",
        name or f"lab-host-{host.index}",
        "--mesh",
        mesh,
        "--key-file",
        str(key_file),
        "--backend",
        "onnxruntime",
        "--data-dir",
        str(data_dir),
        *pin,
    ]


class Fleet:
    """The daemons of one lab, their mesh key, and synchronous API calls to them."""

    def __init__(self, lab: NetnsLab, root: Path, key: MeshKey, key_file: Path) -> None:
        self.lab = lab
        self.root = root
        self.key = key
        self.key_file = key_file
        self.mesh = f"netns-{lab.suffix}"
        self.daemons: list[Daemon] = []
        self.started_at = 0.0
        """When the daemons were launched (time.monotonic), for the printed timings."""
        self.extra_argv: dict[int, list[str]] = {}
        """More ``join`` arguments for the daemon of a host index (seeds, a profile)."""

    def start_all(self) -> None:
        """Start a daemon on every host (all at once) and wait for each to listen."""
        self.started_at = time.monotonic()
        launched = [self.launch(host) for host in self.lab.hosts]
        self.daemons = [self._await_listening(*started) for started in launched]

    def launch(
        self, host: Host, data_dir: Path | None = None, name: str | None = None
    ) -> tuple[Host, subprocess.Popen[bytes], Path, Path]:
        """Start a daemon on ``host`` (with ``data_dir``, default ``<root>/h<index>``, and
        the host's name unless ``name`` is given); stdout is a pipe (the 'listening on'
        line), stderr goes to ``<data_dir>.log``."""
        data_dir = data_dir or self.root / f"h{host.index}"
        data_dir.mkdir(parents=True, exist_ok=True)
        log = data_dir.with_suffix(".log")
        env = {k: v for k, v in os.environ.items() if k not in ("MESHGPU_KEY", "MESHGPU_PEER")}
        with open(log, "ab") as log_file:
            process = self.lab.popen(
                host,
                [
                    *join_argv(data_dir, self.mesh, self.key_file, host, name),
                    *self.extra_argv.get(host.index, []),
                ],
                stdout=subprocess.PIPE,
                stderr=log_file,
                env=env,
            )
        return host, process, data_dir, log

    def _await_listening(
        self, host: Host, process: subprocess.Popen[bytes], data_dir: Path, log: Path
    ) -> Daemon:
        assert process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        buffer = b""
        while time.monotonic() < deadline and process.poll() is None:
            ready, _, _ = select.select([process.stdout], [], [], 0.5)
            if ready:
                chunk = os.read(process.stdout.fileno(), 4096)
                buffer += chunk
                match = LISTENING.search(buffer)
                if match:
                    return Daemon(host, process, match.group(1).decode(), data_dir, log)
                if not chunk:
                    break
        process.kill()
        process.wait()
        raise AssertionError(
            f"daemon on {host.namespace} did not start (exit {process.returncode}); "
            f"stdout {buffer[-500:]!r}; log:\n{log.read_text(errors='replace')[-3000:]}"
        )

    # -- API calls, made from inside the daemon's namespace ---------------------------

    def run_in(self, daemon: Daemon, session: Callable[[Any], Any]) -> Any:
        """Open an API connection to ``daemon`` from its namespace and run ``session(rpc)``."""

        async def connect() -> Any:
            authenticator = Authenticator(self.key, f"client-netns-{daemon.host.index}")
            async with open_rpc((daemon.host.address, PORT), authenticator) as rpc:
                return await session(rpc)

        return in_namespace(daemon.host.namespace, lambda: trio.run(connect))

    def call(self, daemon: Daemon, op: str, **fields: Any) -> Status:
        async def one(rpc: Any) -> Status:
            return await rpc.call(op, **fields)  # type: ignore[no-any-return]

        return self.run_in(daemon, one)  # type: ignore[no-any-return]

    def statuses(self, daemons: Sequence[Daemon]) -> dict[str, Status | str]:
        """Each daemon's status, or the error that stood in its way."""
        seen: dict[str, Status | str] = {}
        for daemon in daemons:
            try:
                seen[daemon.node_id] = self.call(daemon, "status")
            except ClientError as error:
                seen[daemon.node_id] = f"no status: {error}"
        return seen

    def until(
        self,
        daemons: Sequence[Daemon],
        condition: Callable[[dict[str, Status]], bool],
        what: str,
        timeout: float = 30.0,
    ) -> dict[str, Status]:
        """Statuses of ``daemons`` once ``condition`` holds for them; fail loudly at timeout.

        Between reads it blocks on one daemon's ``wait`` op until that daemon's view
        changes (at most half a second: the change that matters may be on another host).
        """
        deadline = time.monotonic() + timeout
        while True:
            seen = self.statuses(daemons)
            complete = {k: v for k, v in seen.items() if isinstance(v, dict)}
            if len(complete) == len(seen) and condition(complete):
                return complete
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what}; last views:\n"
                    + describe(seen)
                    + "\n"
                    + "\n".join(f"--- log of {d.node_id}:\n{d.tail(15)}" for d in daemons)
                )
            self._await_change(daemons[0], seen, min(0.5, remaining))

    def _await_change(self, daemon: Daemon, seen: dict[str, Status | str], bound: float) -> None:
        status = seen.get(daemon.node_id)
        if not isinstance(status, dict):
            time.sleep(min(bound, 0.1))  # it did not answer: do not spin on it
            return
        # No change within the bound is an error answer: then read everyone again.
        with contextlib.suppress(RequestFailedError):
            self.call(daemon, "wait", after_generation=status["generation"], timeout=bound)


def live_view(status: Status) -> tuple[frozenset[str], str | None]:
    """(ids this node holds alive, the leader it names)."""
    alive = frozenset(m["node_id"] for m in status["members"] if m["state"] == "alive")
    return alive, status["leader"]


def agree(expected: set[str]) -> Callable[[dict[str, Status]], bool]:
    """Condition: every status holds exactly ``expected`` alive and one common leader."""

    def check(statuses: dict[str, Status]) -> bool:
        views = {live_view(status) for status in statuses.values()}
        if len(views) != 1:
            return False
        ((alive, leader),) = views
        return alive == expected and leader in expected

    return check


def agree_in_one_view(expected: set[str]) -> Callable[[dict[str, Status]], bool]:
    """Condition: :func:`agree`, and every node in the same leader view. A node adopts a
    newer view from the next envelope that carries it, so agreeing on the leader can come
    a round of gossip before agreeing on its view number."""
    agreed = agree(expected)

    def check(statuses: dict[str, Status]) -> bool:
        return agreed(statuses) and len({status["view"] for status in statuses.values()}) == 1

    return check


def describe(seen: dict[str, Status | str]) -> str:
    """A readable line per node: alive/suspect/dead members, leader and view."""
    lines = []
    for node_id, status in seen.items():
        if not isinstance(status, dict):
            lines.append(f"  {node_id}: {status}")
            continue
        members = ", ".join(
            f"{m['node_id']}={m['state']}" + (f"({m['reason']})" if m["reason"] else "")
            for m in status["members"]
        )
        lines.append(
            f"  {node_id}: leader={status['leader']} view={status['view']} "
            f"gen={status['generation']} tasks={json.dumps(status['tasks'])} [{members}]"
        )
    return "\n".join(lines)
