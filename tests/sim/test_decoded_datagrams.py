"""The simulator hands each receiver the sender's decoded datagram
(``SendDatagram.decoded``, ``NodeContext.keep_decoded``) instead of having it decode the
bytes: that envelope must be exactly what decoding the bytes gives, field by field and
type by type (``repr`` tells ``1`` from ``1.0`` and ``True``, a list from a tuple), in
every kind of traffic: probes, gossip, push-pull tables, notices, task, load, leader and
catalog messages."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from meshgpu.core.events import DatagramReceived
from meshgpu.core.messages import decode
from meshgpu.core.node import Node
from meshgpu.sim.report import run_scenario
from meshgpu.sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("name", "duration_s"),
    [
        ("tasks-steady-3", None),
        ("catalog-partition-crash-10", None),
        ("partition-3-2", None),
        ("tasks-worker-crash", 30.0),
    ],
)
def test_every_decoded_envelope_equals_the_decoded_bytes(
    name: str, duration_s: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Node._on_datagram
    seen: Counter[str] = Counter()

    def checked(node: Node, event: DatagramReceived, now: float) -> None:
        if event.decoded is None:
            seen["bytes only"] += 1
        else:
            assert repr(event.decoded) == repr(decode(event.payload))
            seen["decoded"] += 1
            seen[type(event.decoded.body).__name__] += 1
            for update in event.decoded.piggyback:
                seen[type(update).__name__] += 1
        original(node, event, now)

    monkeypatch.setattr(Node, "_on_datagram", checked)
    scenario = load_scenario(ROOT / "simulations" / f"{name}.toml")
    scenario = scenario.with_overrides(duration_s=duration_s)
    run_scenario(scenario)
    assert seen["decoded"] > 100
    assert seen["bytes only"] == 0
    for kind in ("Ping", "Ack", "PushPull", "Alive"):
        assert seen[kind] > 0, kind
    if name.startswith("tasks"):
        task_kinds: list[Any] = [k for k in seen if k.startswith("Task")]
        assert task_kinds, seen


def test_a_node_outside_the_simulator_sends_no_decoded_form() -> None:
    import random

    from meshgpu.core.config import MeshConfig
    from meshgpu.core.effects import SendDatagram
    from meshgpu.core.events import PeerDiscovered

    node = Node("a", ("10.0.0.1", 7946), MeshConfig(), random.Random(1), 0.0)
    effects = node.handle(PeerDiscovered(("10.0.0.2", 7946), "b"), 0.0)
    sent = [e for e in effects if isinstance(e, SendDatagram)]
    assert sent
    assert all(e.decoded is None for e in sent)
