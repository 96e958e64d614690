"""A mesh of real daemon processes on this machine's loopback (``meshgpu demo``, tests).

Each node is a ``python -m meshgpu join`` child on ``127.0.0.1`` with a free port (the
daemon binds port 0 and prints the one it got), no mDNS (static ``--peer`` seeds: the
first node seeds the others), its own name and its own data dir under ``root``. A child
runs in its own session, so a Ctrl-C in the terminal reaches only the parent, which then
stops every child itself (:meth:`LocalMesh.close`); SIGKILL is :meth:`LocalNode.kill`.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from meshgpu.errors import MeshError

LISTENING = re.compile(rb"meshgpu node (\S+) listening on ([\d.]+):(\d+)")


@dataclass
class LocalNode:
    """One daemon process of a :class:`LocalMesh`."""

    name: str
    data_dir: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    killed_at: float | None = field(default=None, repr=False)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def peer(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: a crash, with no leave message and no flush."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
            self.killed_at = time.monotonic()

    def signal_stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout: float) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class LocalMesh:
    """``count`` daemons named ``{prefix}-a``, ``-b``, ... under ``root``; use as a context
    manager (every process is stopped on exit, whatever happened)."""

    def __init__(
        self,
        root: Path,
        count: int = 3,
        *,
        prefix: str = "node",
        backend: str = "onnxruntime",
        slots: int = 2,
        extra_args: tuple[str, ...] = (),
        start_timeout: float = 60.0,
    ) -> None:
        self.root = root
        self.backend = backend
        self.slots = slots
        self.extra_args = extra_args
        self.start_timeout = start_timeout
        self.nodes = [
            LocalNode(
                f"{prefix}-{chr(ord('a') + i)}",
                root / f"{prefix}-{chr(ord('a') + i)}",
                root / f"{prefix}-{chr(ord('a') + i)}.log",
            )
            for i in range(count)
        ]

    def __enter__(self) -> LocalMesh:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def command(self, node: LocalNode, seeds: list[str]) -> list[str]:
        peers = [arg for seed in seeds for arg in ("--peer", seed)]
        return [
            sys.executable, "-m", "meshgpu", "join",
            "--name", node.name,
            "--bind", "127.0.0.1", "--port", "0", "--no-mdns", "--http-port", "0",
            "--backend", self.backend, "--slots", str(self.slots),
            "--data-dir", str(node.data_dir),
            *peers, *self.extra_args,
        ]  # fmt: skip

    def start(self) -> None:
        """Start the first node, then the others at once (seeded by the first)."""
        first, *others = self.nodes
        self.launch(first, [])
        self.wait_listening(first)
        for node in others:
            self.launch(node, [first.peer])
        for node in others:
            self.wait_listening(node)

    def restart(self, node: LocalNode) -> None:
        """Start ``node`` again on its data dir (same identity and journal)."""
        seeds = [other.peer for other in self.nodes if other is not node and other.running]
        self.launch(node, seeds)
        self.wait_listening(node)

    def launch(self, node: LocalNode, seeds: list[str]) -> None:
        node.data_dir.mkdir(parents=True, exist_ok=True)
        environment = {k: v for k, v in os.environ.items() if k != "MESHGPU_PEER"}
        with open(node.log, "ab") as log:
            node.process = subprocess.Popen(
                self.command(node, seeds),
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=environment,
                start_new_session=True,
            )
        node.killed_at = None

    def wait_listening(self, node: LocalNode) -> None:
        """Read the child's stdout until it says where it listens (bounded)."""
        process = node.process
        assert process is not None and process.stdout is not None
        deadline = time.monotonic() + self.start_timeout
        buffer = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(process.stdout.fileno(), 4096)
                buffer += chunk
                match = LISTENING.search(buffer)
                if match:
                    node.port = int(match.group(3))
                    return
                if not chunk:
                    break
            elif process.poll() is not None:
                break
        node.kill()
        tail = node.log.read_text(errors="replace")[-2000:] if node.log.exists() else ""
        raise MeshError(f"daemon {node.name} did not start (log {node.log}):\n{tail}")

    def close(self, timeout: float = 10.0) -> None:
        """Stop every node: SIGTERM to all, then wait; SIGKILL whatever is left."""
        for node in self.nodes:
            node.signal_stop()
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            node.wait_stopped(max(0.1, deadline - time.monotonic()))
            if node.process is not None and node.process.stdout is not None:
                node.process.stdout.close()
