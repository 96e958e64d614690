"""The effect executor: the node's effects, executed in order, some after an fsync.

The node driver hands an event to the node at once (it is synchronous and cheap) and
appends the effects to one queue; a single task executes them in order, so two tasks that
feed events never interleave two effect lists. What must not leave before it is on stable
storage (a node's claim to hold a task, and the acknowledgement) is *gated*: it moves, in
order, to a second queue that a second task releases once the journal record it follows
is synced (the rule is :meth:`Gate.gates`, implemented by ``GroupCommit`` in
``durability.py``). Every other effect goes on at once; long work (transfers, runs) is
started by the data plane as its own task.

Contract: the queue knows nothing of the daemon. The wiring (``runtime.py``) hands it an
:class:`EffectHandlers` (one callable per kind of effect: what the daemon does about it)
and a :class:`Gate`. :meth:`EffectQueue._dispatch` ``match``-es the closed
:data:`~meshgpu.core.effects.Effect` union with ``assert_never``, so mypy reports an
effect nobody handles.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, assert_never

import trio

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
from meshgpu.errors import StorageError

logger = logging.getLogger("meshgpu.daemon")

DataPlaneEffect = FetchPayload | RunTask | CancelTask | DropPayload
"""The effects the data plane executes (it starts its own tasks for the long ones)."""

ClientEffect = TaskAccepted | TaskRejected | TaskResolved
"""The effects that answer a client (the client handlers' waiters)."""


@dataclass(frozen=True, slots=True)
class EffectHandlers:
    """What the daemon does about each kind of effect (built by the wiring)."""

    send_datagram: Callable[[SendDatagram], Awaitable[None]]
    """Seal and send on the gossip socket."""
    persist: Callable[[Persist], None]
    """Append to the journal (a committer fsyncs later; see :class:`Gate`)."""
    member_changed: Callable[[MemberChanged], None]
    leader_changed: Callable[[LeaderChanged], None]
    data_plane: Callable[[DataPlaneEffect], None]
    clients: Callable[[ClientEffect], None]


class Gate(Protocol):
    """Which effects wait for the journal, and the wait (``GroupCommit``)."""

    @property
    def holder_seq(self) -> int:
        """The journal record a gated effect waits for (the last holder record)."""
        ...

    def gates(self, effect: Effect, free: bool, queue_busy: bool) -> bool:
        """Whether ``effect`` must wait until ``holder_seq`` is durable."""
        ...

    async def durable(self, seq: int) -> None:
        """Wait until journal record ``seq`` is synced."""
        ...


class EffectQueue:
    """The queue of effects fed by the node, and the two tasks that execute it."""

    def __init__(
        self,
        handlers: EffectHandlers,
        gate: Gate,
        count: Callable[[str], None],
        storage_failed: Callable[[StorageError], None],
    ) -> None:
        self.handlers = handlers
        self.gate = gate
        self._count = count
        self._storage_failed = storage_failed
        self._effects: deque[tuple[Effect, bool]] = deque()
        """(effect, free): free datagrams need not wait for the journal (durability.py)."""
        self._effects_ready = trio.Event()
        self._idle = trio.Event()
        self.gated: deque[tuple[int, Effect]] = deque()
        """(journal sequence number to wait for, effect), in order."""
        self.gated_ready = trio.Event()
        """Set when an effect was gated (replaced once the gated queue is empty)."""
        self._gate_idle = trio.Event()

    def extend(self, effects: Iterable[Effect], free: bool) -> None:
        """Queue the effects of one event (``free``: its datagrams claim nothing)."""
        self._effects.extend((effect, free) for effect in effects)
        self._idle = trio.Event()
        self._effects_ready.set()

    def clear(self) -> None:
        """Drop everything queued (the node stops: its journal failed)."""
        self._effects.clear()
        self.gated.clear()

    async def flushed(self) -> None:
        """Wait until every queued effect has been executed (gated ones included)."""
        while self._effects or self.gated:
            if self._effects:
                await self._idle.wait()
            else:
                await self._gate_idle.wait()

    async def run(self) -> None:
        """Run both halves of the queue until cancelled (in a nursery the queue owns)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.execute)
            nursery.start_soon(self.release_gated)

    async def execute(self) -> None:
        """Execute the queue in order, forever; returns when the journal failed."""
        while True:
            if not self._effects:
                self._idle.set()
                self._effects_ready = trio.Event()
                await self._effects_ready.wait()
                continue
            effect, free = self._effects.popleft()
            try:
                gate = self.gate
                if gate.gates(effect, free, bool(self.gated)):
                    self.gated.append((gate.holder_seq, effect))
                    self._gate_idle = trio.Event()
                    self.gated_ready.set()
                else:
                    await self._dispatch(effect)
            except StorageError as error:
                self._storage_failed(error)
                return
            except Exception:
                self._count("effect_errors")
                logger.exception("executing %s failed", type(effect).__name__)

    async def release_gated(self) -> None:
        """Execute gated effects, in order, each once its journal record is durable."""
        while True:
            if not self.gated:
                self._gate_idle.set()
                self.gated_ready = trio.Event()
                await self.gated_ready.wait()
                continue
            seq, effect = self.gated[0]
            await self.gate.durable(seq)
            self.gated.popleft()
            try:
                await self._dispatch(effect)
            except Exception:
                self._count("effect_errors")
                logger.exception("executing %s failed", type(effect).__name__)

    async def _dispatch(self, effect: Effect) -> None:
        handlers = self.handlers
        if logger.isEnabledFor(logging.DEBUG) and not isinstance(effect, SendDatagram):
            logger.debug("effect %s", type(effect).__name__)
        match effect:
            case SendDatagram():
                await handlers.send_datagram(effect)
            case Persist():
                handlers.persist(effect)
            case MemberChanged():
                handlers.member_changed(effect)
            case LeaderChanged():
                handlers.leader_changed(effect)
            case FetchPayload() | RunTask() | CancelTask() | DropPayload():
                handlers.data_plane(effect)
            case TaskAccepted() | TaskRejected() | TaskResolved():
                handlers.clients(effect)
            case _:
                assert_never(effect)
