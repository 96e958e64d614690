"""Hostile input at a real daemon's port (UDP gossip and TCP API share it): random
datagrams (dropped in the kernel by the socket's filter), garbage that begins like an
envelope, garbage and truncated frames, a lying length prefix, a frame over the limit,
hundreds of idle connections and a client that sends one byte a second, from two
hosts (127.0.0.2 and .3; the real client is 127.0.0.1). The daemon keeps serving a real task
meanwhile, holds no more of the hostile host's connections than its per-client share,
its counters say what it dropped, and the open files it spent come back when they
close."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import socket
from pathlib import Path

import numpy as np
import pytest
import trio

from meshgpu.daemon.auth.handshake import MAGIC
from meshgpu.daemon.payloads import encode_tensors
from tests.daemon.meshprocs import call, start_node

pytestmark = [pytest.mark.integration]

MODELS = Path(__file__).parents[2] / "meshgpu" / "inference" / "models"
MODEL = (MODELS / "digits.onnx").read_bytes()
DIGEST = hashlib.sha256(MODEL).hexdigest()
IDLE = 300
HOSTILE = "127.0.0.2"
SECOND_HOSTILE = "127.0.0.3"
PER_CLIENT = 100
"""The daemon's default ``api_max_connections_per_client``."""
GARBAGE_ENVELOPES = 600
"""Datagrams that begin with the envelope's magic (the kernel's filter passes them)."""


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_the_daemon_keeps_serving_under_hostile_input(tmp_path: Path) -> None:
    node = start_node(tmp_path / "n0", "--name", "n0")
    rng = random.Random(7)
    try:
        await call(node, None, "put_model", digest=DIGEST, data=MODEL)
        files_before = open_files(node.process.pid)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((HOSTILE, 0))
            for _ in range(2000):  # dropped by the socket's filter, in the kernel
                udp.sendto(rng.randbytes(rng.randrange(0, 1400)), node.address)
            for _ in range(GARBAGE_ENVELOPES):  # past the filter: opened or dropped early
                udp.sendto(MAGIC + rng.randbytes(rng.randrange(4, 1400)), node.address)
        idle = []
        for _ in range(IDLE):
            try:
                stream = await trio.open_tcp_stream(*node.address, local_address=HOSTILE)
            except OSError:  # reset by the daemon before the connect returned: refused
                continue
            idle.append(stream)
        with trio.fail_after(30):
            while True:
                daemon = (await call(node, None, "status"))["counters"]["daemon"]
                refused = daemon.get("api_client_limit_refused", 0)
                # a slow machine: strangers closed after the handshake timeout made room
                if refused + daemon.get("api_handshake_timeouts", 0) >= IDLE - PER_CLIENT:
                    break
                await trio.sleep(0.1)
        assert open_files(node.process.pid) - files_before <= PER_CLIENT + 10
        hostile = [
            b"\x00\x00\x00\x10" + rng.randbytes(16),  # a frame of garbage
            b"\xff\xff\xff\xff",  # a length over the limit
            b"\x00\x00\x10\x00" + b"short",  # a lying length prefix, then the end
            rng.randbytes(3),  # a truncated header
        ]
        for data in hostile:  # from a second hostile host: the first one is at its share
            stream = await trio.open_tcp_stream(*node.address, local_address=SECOND_HOSTILE)
            await stream.send_all(data)
            await stream.aclose()

        async def one_byte_a_second() -> None:
            stream = await trio.open_tcp_stream(*node.address, local_address=SECOND_HOSTILE)
            with contextlib.suppress(trio.BrokenResourceError):  # the daemon may cut it
                for byte in b"\x00\x00\x00\x08abc":
                    await stream.send_all(bytes([byte]))
                    await trio.sleep(1.0)
            await stream.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one_byte_a_second)
            pixels = np.full((1, 64), 3.0, np.float32)
            reply = await call(
                node,
                None,
                "submit",
                model_digest=DIGEST,
                inputs=encode_tensors({"pixels": pixels}),
                direct=False,
                replicas=1,
            )
            assert reply["copies"] == 1
        with trio.fail_after(60):
            while True:
                rows = (await call(node, None, "tasks"))["tasks"]
                if rows and rows[0]["state"] == "done":
                    break
                await trio.sleep(0.1)
        for stream in idle:
            await stream.aclose()
        counters = (await call(node, None, "status"))["counters"]
        daemon = counters["daemon"]
        assert daemon.get("frames_rejected", 0) >= 2, counters
        assert daemon.get("api_handshake_timeouts", 0) >= PER_CLIENT // 2, counters
        assert daemon.get("datagrams_dropped_in_kernel", 0) >= 1900, counters
        dropped = daemon.get("datagrams_rejected", 0) + daemon.get("datagrams_dropped_early", 0)
        assert dropped >= GARBAGE_ENVELOPES // 2, counters
        assert daemon.get("datagrams_dropped_early", 0) > 0, counters  # past the budget
        with trio.fail_after(30):
            while open_files(node.process.pid) > files_before + 20:
                await trio.sleep(0.1)
        assert node.process.poll() is None
    finally:
        node.stop()
