"""The fast constructors (meshgpu.core.fast_construct) build objects equal to the plain
constructors' and indistinguishable from them."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

import meshgpu.core  # noqa: F401  (imports every module that makes a fast constructor)
from meshgpu.core.effects import MemberChanged, SendDatagram
from meshgpu.core.events import DatagramReceived
from meshgpu.core.fast_construct import FAST_CONSTRUCTORS, fast_constructor
from meshgpu.core.membership.state import ALIVE, MemberInfo
from meshgpu.core.membership.wire import Ack, Alive, Ping
from meshgpu.core.messages import Envelope

SAMPLES: dict[type[Any], tuple[Any, ...]] = {
    SendDatagram: (("10.0.0.1", 7946), b"payload", None),
    DatagramReceived: (("10.0.0.2", 7946), b"payload", Envelope("n001", 0, 0, Ack(1))),
    Ping: (7, "n001"),
    Ack: (7,),
    Alive: ("n001", ("10.0.0.1", 7946), 3),
    Envelope: ("n001", 3, 2, Ping(7, "n002"), (Ack(1),)),
    MemberChanged: ("n001", ("10.0.0.1", 7946), ALIVE, 3, "joined"),
    MemberInfo: ("n001", ("10.0.0.1", 7946), ALIVE, 3, 1.5, "joined"),
}


def test_every_fast_constructor_has_a_sample() -> None:
    assert set(FAST_CONSTRUCTORS) == set(SAMPLES)


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda cls: cls.__name__)
def test_the_fast_constructor_equals_the_plain_one(cls: type[Any]) -> None:
    values = SAMPLES[cls]
    fast, plain = FAST_CONSTRUCTORS[cls](*values), cls(*values)
    assert type(fast) is cls
    assert fast == plain
    assert hash(fast) == hash(plain)
    assert dataclasses.astuple(fast) == dataclasses.astuple(plain)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.__setattr__(dataclasses.fields(cls)[0].name, None)


def test_classes_the_fast_path_would_get_wrong_are_refused() -> None:
    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        value: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        value: int

        def __post_init__(self) -> None:
            if self.value < 0:
                raise ValueError("negative")

    with pytest.raises(TypeError, match="slotted"):
        fast_constructor(NoSlots)
    with pytest.raises(TypeError, match="__post_init__"):
        fast_constructor(Checked)
