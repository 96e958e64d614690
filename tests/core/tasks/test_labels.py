"""The ``label`` of a task spec: round-tripped on the wire, absent from the encoding of
an unlabelled task (journals and simulator traces stay byte-identical), bounded."""

from __future__ import annotations

import msgpack
import pytest

from meshgpu.core.tasks import TaskSpec
from meshgpu.core.tasks.spec import LABEL_MAX
from meshgpu.core.tasks.wire import spec_from_wire, spec_to_wire
from meshgpu.errors import DecodeError, TaskError

DIGEST = "ab" * 32


def _spec(**fields: object) -> TaskSpec:
    return TaskSpec(model_digest=DIGEST, input_digest="cd" * 32, **fields)  # type: ignore[arg-type]


def test_an_unlabelled_spec_has_no_label_field() -> None:
    assert len(spec_to_wire(_spec())) == 9
    assert len(spec_to_wire(_spec(members=3))) == 10


@pytest.mark.parametrize("members", [1, 5])
def test_a_labelled_spec_round_trips(members: int) -> None:
    spec = _spec(members=members, label="sample-0007")
    wire = spec_to_wire(spec)
    assert len(wire) == 11 and wire[9] == members and wire[10] == "sample-0007"
    assert spec_from_wire(msgpack.unpackb(msgpack.packb(wire))) == spec


def test_a_label_is_a_bounded_string() -> None:
    with pytest.raises(TaskError, match="label"):
        _spec(label="x" * (LABEL_MAX + 1))
    wire = spec_to_wire(_spec(label="ok"))
    wire[10] = 7
    with pytest.raises(DecodeError):
        spec_from_wire(wire)
    wire[10] = "x" * (LABEL_MAX + 1)
    with pytest.raises(DecodeError):
        spec_from_wire(wire)
