"""Connections dropped for a wrong mesh key: the first from an address is a warning that
says what to do, then one summary per address per interval with the count (a
neighbouring mesh with another key retries every 12-15 s for as long as it runs)."""

from __future__ import annotations

import logging

import pytest
import trio

from meshgpu.daemon import api
from meshgpu.daemon.api import ApiServer
from meshgpu.daemon.auth import Authenticator, MeshKey
from meshgpu.daemon.key_drops import KeyDrops
from meshgpu.daemon.rpc import open_rpc
from meshgpu.errors import MeshError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_peer_is_warned_about_once_then_summed_up_every_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    drops = KeyDrops(clock, interval_s=600)
    with caplog.at_level(logging.WARNING):
        for _ in range(50):  # 50 tries 13 s apart: 650 s
            drops.dropped("10.0.0.2", "10.0.0.2:41000", "wrong mesh key")
            clock.now += 13
        drops.dropped("10.0.0.3", "10.0.0.3:41000", "wrong mesh key")
    lines = _lines(caplog)
    assert len(lines) == 3, lines
    assert "--key-file" in lines[0] and "--mesh" in lines[0]
    assert lines[1].startswith("dropped 47 connections from 10.0.0.2 in the last 10 minutes")
    assert lines[2].startswith("dropping connection from 10.0.0.3:41000")


def test_the_table_of_addresses_is_bounded() -> None:
    drops = KeyDrops(Clock(), remembered=8)
    for i in range(100):
        drops.dropped(f"10.0.{i}.1", f"10.0.{i}.1:1", "wrong mesh key")
    assert len(drops) == 8


async def test_the_api_server_warns_once_about_a_peer_of_another_key(
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(api, "WARNING_INTERVAL_S", 0.0)  # retries past the other limit
    counters: dict[str, int] = {}
    server = ApiServer({}, Authenticator(MeshKey.generate(), "n0"), counters)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    address = ("127.0.0.1", listeners[0].socket.getsockname()[1])
    await nursery.start(server.serve_listeners, listeners)
    other = Authenticator(MeshKey.generate(), "n1")
    with caplog.at_level(logging.WARNING, logger="meshgpu.daemon.api"):
        for _ in range(3):
            with pytest.raises(MeshError):
                async with open_rpc(address, other) as rpc:
                    await rpc.call("ping")
    dropped = [line for line in _lines(caplog) if "dropping connection" in line]
    assert len(dropped) == 1, dropped
    assert "wrong mesh key" in dropped[0] and "--key-file" in dropped[0]
    assert counters["frames_rejected"] == 3
