"""Real `meshgpu join` processes on 127.0.0.1 for the daemon's integration tests."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshgpu.daemon.auth import Authenticator, MeshKey
from meshgpu.daemon.rpc import open_rpc

LISTENING = re.compile(rb"meshgpu node (\S+) listening on ([\d.]+):(\d+)")
START_TIMEOUT = 60.0


@dataclass
class MeshProcess:
    process: subprocess.Popen[bytes]
    node_id: str
    port: int
    data_dir: Path
    log: Path
    host: str = "127.0.0.1"

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def kill(self) -> None:
        """SIGKILL: no goodbye, no flush (a crash)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def join_command(data_dir: Path, *args: str, mdns: bool = False) -> list[str]:
    network = [] if mdns else ["--bind", "127.0.0.1", "--no-mdns"]
    return [
        sys.executable,
        "-c",
        "from meshgpu.cli import main; main()",
        "join",
        *network,
        "--port",
        "0",
        "--backend",
        "onnxruntime",
        "--data-dir",
        str(data_dir),
        "--http-port",
        "0",
        *args,
    ]


@dataclass
class Launched:
    """A daemon process started, its 'listening on' line not read yet."""

    process: subprocess.Popen[bytes]
    data_dir: Path
    log: Path


def launch_node(
    data_dir: Path, *args: str, env: dict[str, str] | None = None, mdns: bool = False
) -> Launched:
    """Start a daemon without waiting for it (:func:`until_listening` does)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir.with_suffix(".log")
    environment = {k: v for k, v in os.environ.items() if k != "MESHGPU_KEY"}
    environment.update(env or {})
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            join_command(data_dir, *args, mdns=mdns),
            stdout=subprocess.PIPE,
            stderr=log_file,
            env=environment,
        )
    return Launched(process, data_dir, log)


def until_listening(launched: Launched) -> MeshProcess:
    """The daemon once it printed its 'listening on' line; killed, and the test failed
    with its log, if it exits or stays silent for ``START_TIMEOUT``."""
    process, data_dir, log = launched.process, launched.data_dir, launched.log
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    buffer = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            chunk = os.read(process.stdout.fileno(), 4096)
            buffer += chunk
            match = LISTENING.search(buffer)
            if match:
                return MeshProcess(
                    process,
                    match.group(1).decode(),
                    int(match.group(3)),
                    data_dir,
                    log,
                    host=match.group(2).decode(),
                )
            if not chunk:
                break
        elif process.poll() is not None:
            break
    process.kill()
    process.wait()
    raise AssertionError(
        f"daemon did not start (exit {process.returncode}):\n{log.read_text()[-3000:]}"
    )


def start_node(
    data_dir: Path, *args: str, env: dict[str, str] | None = None, mdns: bool = False
) -> MeshProcess:
    """Start a daemon and wait (bounded) for its 'listening on' line."""
    return until_listening(launch_node(data_dir, *args, env=env, mdns=mdns))


def start_together(launched: list[Launched]) -> list[MeshProcess]:
    """Wait for daemons launched one after the other without waiting (:func:`launch_node`):
    their start-ups (imports, the inference stack) overlap, which on a 2-core machine
    takes about half the time of starting them one by one. If one fails to start, the
    others are killed."""
    started: list[MeshProcess] = []
    try:
        for each in launched:
            started.append(until_listening(each))
    except BaseException:
        for each in launched:
            if each.process.poll() is None:
                each.process.kill()
                each.process.wait()
        raise
    return started


def run_to_exit(
    data_dir: Path, *args: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run `meshgpu join` expecting it to refuse to start; returns its outcome."""
    env = {k: v for k, v in os.environ.items() if k != "MESHGPU_KEY"}
    return subprocess.run(
        join_command(data_dir, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


async def call(node: MeshProcess, key: MeshKey | None, op: str, **fields: Any) -> dict[str, Any]:
    """One API request to ``node`` as a test client."""
    async with open_rpc(node.address, Authenticator(key, "test-client")) as rpc:
        return await rpc.call(op, **fields)
