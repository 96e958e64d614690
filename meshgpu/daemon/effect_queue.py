"""The effect executor: the node's effects, executed in order, some after an fsync.

``Daemon.feed`` hands an event to the node at once (it is synchronous and cheap) and
appends the effects to one queue; a single task executes them in order, so two tasks that
feed events never interleave two effect lists. What must not leave before it is on stable
storage (a node's claim to hold a task, and the acknowledgement) is *gated*: it moves, in
order, to a second queue that a second task releases once the journal record it follows
is synced (the rule is ``GroupCommit.gates``, in ``durability.py``). Every other effect
goes on at once; long work (transfers, runs) is started by the data plane as its own task.

Kept apart from the daemon's lifecycle because it is the one place that maps an effect to
what the daemon does about it (the table in ``runtime.py``'s docstring) and that knows the
order in which effects leave.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import trio

from meshgpu.core.effects import LeaderChanged, MemberChanged, SendDatagram
from meshgpu.errors import StorageError

if TYPE_CHECKING:
    from meshgpu.daemon.runtime import Daemon

logger = logging.getLogger("meshgpu.daemon")


class EffectQueue:
    """The queue of effects fed by the node, and the two tasks that execute it."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._effects: deque[tuple[Any, bool]] = deque()
        """(effect, free): free datagrams need not wait for the journal (durability.py)."""
        self._effects_ready = trio.Event()
        self._idle = trio.Event()
        self.gated: deque[tuple[int, Any]] = deque()
        """(journal sequence number to wait for, effect), in order."""
        self.gated_ready = trio.Event()
        """Set when an effect was gated (replaced once the gated queue is empty)."""
        self._gate_idle = trio.Event()

    def extend(self, effects: Iterable[Any], free: bool) -> None:
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

    async def execute(self) -> None:
        """Execute the queue in order, forever (a task of the daemon's nursery)."""
        daemon = self.daemon
        while True:
            if not self._effects:
                self._idle.set()
                self._effects_ready = trio.Event()
                await self._effects_ready.wait()
                continue
            effect, free = self._effects.popleft()
            try:
                commit = daemon.commit
                if commit.gates(effect, free, bool(self.gated)):
                    self.gated.append((commit.holder_seq, effect))
                    self._gate_idle = trio.Event()
                    self.gated_ready.set()
                else:
                    await self._execute(effect)
            except StorageError as error:
                daemon.storage_failed(error)
                return
            except Exception:
                daemon.count("effect_errors")
                logger.exception("executing %s failed", type(effect).__name__)

    async def release_gated(self) -> None:
        """Execute gated effects, in order, each once its journal record is durable."""
        daemon = self.daemon
        while True:
            if not self.gated:
                self._gate_idle.set()
                self.gated_ready = trio.Event()
                await self.gated_ready.wait()
                continue
            seq, effect = self.gated[0]
            await daemon.durable(seq)
            self.gated.popleft()
            try:
                await self._execute(effect)
            except Exception:
                daemon.count("effect_errors")
                logger.exception("executing %s failed", type(effect).__name__)

    async def _execute(self, effect: Any) -> None:
        from meshgpu.core import effects as fx

        daemon = self.daemon
        if logger.isEnabledFor(logging.DEBUG) and not isinstance(effect, SendDatagram):
            logger.debug("effect %s", type(effect).__name__)
        if isinstance(effect, SendDatagram):
            await daemon.datagrams.send(effect.destination, effect.payload)
        elif isinstance(effect, fx.Persist):
            daemon.commit.persist(effect.record)
        elif isinstance(effect, MemberChanged):
            self._member_changed(effect)
        elif isinstance(effect, LeaderChanged):
            logger.info("view %d: leader is %s", effect.view, effect.leader)
            daemon.generation += 1
            daemon.pulse()
        elif isinstance(effect, fx.FetchPayload | fx.RunTask | fx.CancelTask | fx.DropPayload):
            daemon.dataplane.execute(effect)
        elif isinstance(effect, fx.TaskAccepted | fx.TaskRejected | fx.TaskResolved):
            daemon.handlers.execute(effect)
        else:
            daemon.count("effects_unknown")
            logger.warning("no driver action for effect %r", effect)

    def _member_changed(self, effect: MemberChanged) -> None:
        """Remember the change for ``status`` (who left when, and why), and log it."""
        daemon = self.daemon
        daemon.member_history[effect.node_id] = {
            "node_id": effect.node_id,
            "address": list(effect.address),
            "state": effect.state,
            "reason": effect.reason,
            "incarnation": effect.incarnation,
            "at": time.time(),
        }
        daemon.generation += 1
        daemon.pulse()
        log = logger.info if effect.state in ("alive", "ALIVE") else logger.warning
        log(
            "member %s at %s:%d is %s (%s)",
            effect.node_id,
            *effect.address,
            effect.state,
            effect.reason,
        )
