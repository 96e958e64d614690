"""The node driver: the one caller of ``node.handle``, and the node's timer.

Every event of the daemon (datagrams, mDNS sightings, submissions, finished transfers
and runs) reaches the node through :meth:`NodeDriver.feed`, which hands it to the node
at once (``handle`` is synchronous and cheap) and queues the effects for the effect
queue, in order. :meth:`NodeDriver.run_timers` sleeps until ``node.next_deadline()``
and feeds a ``Tick``; ``feed`` wakes it early when a handled event moved the deadline
earlier.

Contract: the driver takes the node (``DrivenNode``: ``handle``, ``next_deadline``,
``incarnation``), where effects go (``EffectSink``), and three
callables: ``count`` (daemon counters), ``save_incarnation`` (write a raised
incarnation down before any datagram announcing it leaves; returns whether it was
written; a failed write is tried again on the first event ``SAVE_RETRY_S`` later, not on
every event) and ``before_tick`` (drain datagrams already received before a due timer fires,
``GossipSocket.take_queued``). It knows nothing else of the daemon.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Protocol

import trio

from meshgpu.core.effects import Effect, TaskAccepted
from meshgpu.core.events import DatagramReceived, Event, SubmitTask, Tick

logger = logging.getLogger("meshgpu.daemon")

SAVE_RETRY_S = 1.0
"""After a failed incarnation write (a full disk), the first event this much later tries
again: every event (each datagram) trying, and logging, made hundreds of lines a second."""


class DrivenNode(Protocol):
    """What the driver uses of :class:`~meshgpu.core.node.Node`."""

    @property
    def incarnation(self) -> int: ...

    def handle(self, event: Event, now: float) -> list[Effect]: ...

    def next_deadline(self) -> float: ...


class EffectSink(Protocol):
    """Where the effects of one event go (``EffectQueue``)."""

    def extend(self, effects: Iterable[Effect], free: bool) -> None:
        """Queue the effects of one event (``free``: its datagrams claim nothing)."""
        ...


def _claims_nothing(event: Event, effects: list[Effect]) -> bool:
    """Whether the datagrams of one event's effects are free to leave before the journal
    is synced (durability.py): those of a ``SubmitTask`` are (hold requests, the first
    announcement), unless the submission was acknowledged in the same handle (a lone
    holder: ``replicas=1``, or no live peer to ask), since then they carry the
    ``acknowledged`` mark that lets the leader assign the task, and nothing may be
    acknowledged anywhere before the origin's record of the task is durable."""
    if not isinstance(event, SubmitTask):
        return False
    return not any(isinstance(effect, TaskAccepted) for effect in effects)


class NodeDriver:
    """Feeds events to the node, queues their effects and keeps the node's timer."""

    def __init__(
        self,
        node: DrivenNode,
        effects: EffectSink,
        count: Callable[[str], None],
        save_incarnation: Callable[[int], bool],
        before_tick: Callable[[], None] = lambda: None,
    ) -> None:
        self.node = node
        self.effects = effects
        self._count = count
        self._save_incarnation = save_incarnation
        self._before_tick = before_tick
        self._saved_incarnation = node.incarnation
        self._save_retry_at = -math.inf
        self._deadline_moved = trio.Event()
        self._timer_deadline = -math.inf
        """The deadline the timer sleeps until; ``feed`` wakes it only for an earlier one."""

    def feed(self, event: Event) -> None:
        """Hand ``event`` to the node now; its effects are queued for the executor."""
        if logger.isEnabledFor(logging.DEBUG) and not isinstance(event, Tick | DatagramReceived):
            logger.debug("event %s", type(event).__name__)
        node = self.node
        now = trio.current_time()
        try:
            effects = node.handle(event, now)
        except Exception:
            # A core bug must not take the node's sockets down with it: log it loudly,
            # count it (status shows core_errors) and go on serving.
            self._count("core_errors")
            logger.exception("the core failed to handle %s", type(event).__name__)
            return
        if node.incarnation > self._saved_incarnation and now >= self._save_retry_at:
            if self._save_incarnation(node.incarnation):
                self._saved_incarnation = node.incarnation
            else:
                self._save_retry_at = now + SAVE_RETRY_S
        if effects:
            self.effects.extend(effects, _claims_nothing(event, effects))
        if node.next_deadline() < self._timer_deadline:
            self._deadline_moved.set()  # else the timer would wake only to sleep again

    async def run_timers(self) -> None:
        """Feed a ``Tick`` whenever the node's deadline is due, forever."""
        node = self.node
        while True:
            self._deadline_moved = trio.Event()
            deadline = self._timer_deadline = node.next_deadline()
            if trio.current_time() >= deadline:
                self._before_tick()
                self.feed(Tick())
                await trio.sleep(0)  # let the executor and receivers run
                continue
            with trio.move_on_at(deadline):
                await self._deadline_moved.wait()
