"""The simulator's wire path: with ``meshgpu.sim.nodes.DECODED_HANDOVER`` off, every datagram
between simulated nodes is decoded from its bytes by its receiver, as in the daemon. The
simulator normally hands the receiver the sender's decoded envelope instead
(:func:`meshgpu.sim.nodes.core_node`); both paths must give the same run, event for event:
the same trace hash, which is the reference one. ``test_decoded_datagrams.py`` checks the
handed-over envelopes datagram by datagram; this checks whole runs, and that what is
handed over cannot be changed by its receiver (every message type is frozen)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import meshgpu.core.node
from meshgpu.core import messages
from meshgpu.core.events import DatagramReceived
from meshgpu.core.messages import Envelope, registered_messages
from meshgpu.sim import nodes
from meshgpu.sim.report import run_scenario
from meshgpu.sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = json.loads((ROOT / "bench" / "trace_hashes.json").read_text())


@pytest.mark.parametrize("name", ["tasks-steady-3", "catalog-partition-crash-10", "crash-50"])
def test_the_wire_path_gives_the_reference_trace(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded = 0
    decode = messages.decode  # (what meshgpu.core.node calls)

    def counted(payload: bytes) -> Envelope:
        nonlocal decoded
        decoded += 1
        return decode(payload)

    monkeypatch.setattr(meshgpu.core.node, "decode", counted)
    monkeypatch.setattr(nodes, "DECODED_HANDOVER", False)
    scenario = load_scenario(ROOT / "simulations" / f"{name}.toml")
    report = run_scenario(scenario)
    assert decoded == report.metrics["node_counters"]["datagrams_received"]
    assert decoded > 1000
    assert report.trace_sha256 == REFERENCE[f"{name}@{scenario.duration_s:g}"]


def _frozen(cls: object) -> bool:
    """Whether ``cls`` is a frozen dataclass."""
    params = getattr(cls, "__dataclass_params__", None)
    return params is not None and bool(params.frozen)


def test_every_message_a_receiver_is_handed_is_frozen() -> None:
    for message_type in [Envelope, *registered_messages().values()]:
        assert _frozen(message_type), message_type


def _mutable_parts(value: object, path: str) -> list[str]:
    """Where ``value`` holds something its holder could change in place."""
    if isinstance(value, list | dict | set | bytearray):
        return [f"{path}: {type(value).__name__}"]
    if isinstance(value, tuple | frozenset):
        return [p for i, item in enumerate(value) for p in _mutable_parts(item, f"{path}[{i}]")]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if not _frozen(type(value)):
            return [f"{path}: {type(value).__name__} is not frozen"]
        return [
            p
            for f in dataclasses.fields(value)
            for p in _mutable_parts(getattr(value, f.name), f"{path}.{f.name}")
        ]
    return []


@pytest.mark.parametrize("name", ["tasks-steady-3", "catalog-partition-crash-10"])
def test_no_handed_over_envelope_holds_anything_mutable(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = meshgpu.core.node.Node._on_datagram
    found: set[str] = set()
    seen = 0

    def checked(node: meshgpu.core.node.Node, event: DatagramReceived, now: float) -> None:
        nonlocal seen
        if event.decoded is not None:
            seen += 1
            found.update(_mutable_parts(event.decoded, type(event.decoded.body).__name__))
        original(node, event, now)

    monkeypatch.setattr(meshgpu.core.node.Node, "_on_datagram", checked)
    run_scenario(load_scenario(ROOT / "simulations" / f"{name}.toml"))
    assert seen > 1000
    assert not found, sorted(found)
