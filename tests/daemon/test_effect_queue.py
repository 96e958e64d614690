"""The effect queue on its own: fakes for the handlers and the journal gate, trio's
autojump clock for time. (The real-socket tests in test_runtime.py and
test_group_commit.py run it inside a whole daemon.)"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from meshgpu.core.effects import (
    CancelTask,
    DropPayload,
    Effect,
    FetchPayload,
    LeaderChanged,
    MemberChanged,
    Persist,
    RunTask,
    SendDatagram,
    TaskAccepted,
    TaskRejected,
    TaskResolved,
)
from meshgpu.core.membership import MemberState
from meshgpu.core.tasks import Resolution, TaskId, TaskRecord, TaskSpec
from meshgpu.daemon.effect_queue import EffectHandlers, EffectQueue
from meshgpu.errors import StorageError

TASK = TaskId("n1", 1)
SPEC = TaskSpec("model", "inputs")
ONE_OF_EACH: list[Effect] = [
    SendDatagram(("10.0.0.2", 7946), b"ping"),
    Persist(TaskRecord(TASK, None)),
    MemberChanged("n2", ("10.0.0.2", 7946), MemberState.SUSPECT, 3, "probe failed"),
    LeaderChanged(4, "n2"),
    FetchPayload(TASK, "inputs", ("n2",)),
    RunTask(TASK, 1, SPEC, ("n1",)),
    CancelTask(TASK, 1),
    DropPayload(TASK, "inputs"),
    TaskAccepted("ref", TASK, 2, 2),
    TaskRejected("ref", "no"),
    TaskResolved(TASK, Resolution.DONE, "", ("n1",)),
]


class Recorder:
    """Handlers that write down what reached them, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Effect, float]] = []
        self.fail_on: type | None = None

    def sync(self, name: str) -> Any:
        def handle(effect: Any) -> None:
            if self.fail_on is not None and isinstance(effect, self.fail_on):
                raise RuntimeError("boom")
            self.seen.append((name, effect, trio.current_time()))

        return handle

    def handlers(self) -> EffectHandlers:
        async def send(effect: SendDatagram) -> None:
            self.seen.append(("send_datagram", effect, trio.current_time()))

        return EffectHandlers(
            send_datagram=send,
            persist=self.sync("persist"),
            member_changed=self.sync("member_changed"),
            leader_changed=self.sync("leader_changed"),
            data_plane=self.sync("data_plane"),
            clients=self.sync("clients"),
        )


class FakeGate:
    """Gates acknowledgements until a test says the journal is synced."""

    def __init__(self) -> None:
        self.holder_seq = 0
        self.synced = 0
        self._synced = trio.Event()

    def gates(self, effect: Effect, free: bool, queue_busy: bool) -> bool:
        return queue_busy or (isinstance(effect, TaskAccepted) and self.holder_seq > self.synced)

    async def durable(self, seq: int) -> None:
        while self.synced < seq:
            await self._synced.wait()

    def sync(self, seq: int) -> None:
        self.synced = seq
        self._synced.set()
        self._synced = trio.Event()


def make_queue(
    recorder: Recorder, gate: FakeGate | None = None
) -> tuple[EffectQueue, list[str], list[StorageError]]:
    counted: list[str] = []
    failures: list[StorageError] = []
    queue = EffectQueue(recorder.handlers(), gate or FakeGate(), counted.append, failures.append)
    return queue, counted, failures


async def test_every_effect_reaches_its_handler_in_order() -> None:
    recorder = Recorder()
    queue, counted, _ = make_queue(recorder)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.run)
        queue.extend(ONE_OF_EACH, free=False)
        with trio.fail_after(1):
            await queue.flushed()
        nursery.cancel_scope.cancel()
    assert [effect for _, effect, _ in recorder.seen] == ONE_OF_EACH
    assert [name for name, _, _ in recorder.seen] == [
        "send_datagram",
        "persist",
        "member_changed",
        "leader_changed",
        "data_plane",
        "data_plane",
        "data_plane",
        "data_plane",
        "clients",
        "clients",
        "clients",
    ]
    assert counted == []


async def test_a_gated_effect_waits_for_the_journal_and_keeps_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder = Recorder()
    gate = FakeGate()
    gate.holder_seq = 5
    queue, _, _ = make_queue(recorder, gate)
    accepted = TaskAccepted("ref", TASK, 1, 2)
    after = SendDatagram(("10.0.0.2", 7946), b"after")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.run)
        queue.extend([accepted, after], free=False)
        await trio.sleep(10)
        # Nothing left: the acknowledgement waits for record 5, the datagram behind it.
        assert recorder.seen == []
        assert [effect for _, effect in queue.gated] == [accepted, after]
        gate.sync(5)
        with trio.fail_after(1):
            await queue.flushed()
        nursery.cancel_scope.cancel()
    assert [effect for _, effect, _ in recorder.seen] == [accepted, after]
    assert recorder.seen[0][2] == pytest.approx(10.0)


async def test_a_failing_handler_is_counted_and_the_queue_goes_on() -> None:
    recorder = Recorder()
    recorder.fail_on = LeaderChanged
    queue, counted, _ = make_queue(recorder)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.run)
        queue.extend(ONE_OF_EACH, free=False)
        with trio.fail_after(1):
            await queue.flushed()
        nursery.cancel_scope.cancel()
    assert counted == ["effect_errors"]
    expected = [e for e in ONE_OF_EACH if not isinstance(e, LeaderChanged)]
    assert [e for _, e, _ in recorder.seen] == expected


async def test_a_storage_error_stops_the_executor_and_is_reported() -> None:
    recorder = Recorder()
    queue, counted, failures = make_queue(recorder)
    error = StorageError("disk full")

    def persist(effect: Persist) -> None:
        raise error

    queue.handlers = EffectHandlers(
        send_datagram=recorder.handlers().send_datagram,
        persist=persist,
        member_changed=recorder.sync("member_changed"),
        leader_changed=recorder.sync("leader_changed"),
        data_plane=recorder.sync("data_plane"),
        clients=recorder.sync("clients"),
    )
    with trio.fail_after(1):
        queue.extend(ONE_OF_EACH[:3], free=False)
        await queue.execute()  # returns: the journal failed
    assert failures == [error]
    assert [name for name, _, _ in recorder.seen] == ["send_datagram"]
    assert counted == []
