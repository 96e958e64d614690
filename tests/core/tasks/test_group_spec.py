"""The ``members`` field of a task spec (task groups, docs/task-queue.md): validated,
round-tripped on the wire, and absent from the encoding of an ordinary task, so every
journal record and simulator trace written before groups existed stays byte-identical."""

from __future__ import annotations

import msgpack
import pytest

from meshgpu.core.tasks import TaskSpec
from meshgpu.core.tasks.wire import spec_from_wire, spec_to_wire
from meshgpu.errors import DecodeError, TaskError

DIGEST = "ab" * 32


def _spec(**fields: object) -> TaskSpec:
    return TaskSpec(model_digest=DIGEST, input_digest="cd" * 32, **fields)  # type: ignore[arg-type]


def test_an_ordinary_spec_encodes_byte_for_byte_as_before_groups() -> None:
    # The encoding of a spec before the field existed, written out by hand.
    before = [
        DIGEST,
        "cd" * 32,
        [["x", [1, 4]]],
        1,
        [None, 0, False],
        None,
        ["exponential", 0.1, 5.0, 4, 0.5],
        2,
        None,
    ]
    spec = _spec(input_shapes=(("x", (1, 4)),))
    wire = spec_to_wire(spec)
    assert msgpack.packb(wire) == msgpack.packb(before)
    assert spec_from_wire(before) == spec
    assert spec.members == 1


def test_a_group_spec_round_trips_with_its_member_count() -> None:
    spec = _spec(input_shapes=(("x", (1, 4)),), members=7)
    wire = spec_to_wire(spec)
    assert len(wire) == 10 and wire[-1] == 7
    assert spec_from_wire(msgpack.unpackb(msgpack.packb(wire))) == spec


def test_members_must_be_positive() -> None:
    with pytest.raises(TaskError, match="members"):
        _spec(members=0)
    bad = spec_to_wire(_spec(members=2))
    bad[-1] = 0
    with pytest.raises(DecodeError):
        spec_from_wire(bad)
    bad[-1] = "3"
    with pytest.raises(DecodeError):
        spec_from_wire(bad)
    with pytest.raises(DecodeError):
        spec_from_wire([*spec_to_wire(_spec(members=2)), 1])
