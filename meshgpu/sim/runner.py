"""The discrete-event loop that drives N real ``Node`` cores over a simulated network.

The model (design.md sections 2 and 6): one virtual clock; one heap of pending events
ordered by ``(time, sequence)``, the sequence number breaking ties in insertion order so
equal-time events always run in the same order; every randomness from one seed through
named streams (:mod:`meshgpu.sim.randomness`). Nodes interact only through
``SendDatagram`` effects, which :class:`meshgpu.sim.network.Network` delays, drops,
duplicates or reorders; each is delivered as its bytes (traced by length and CRC) and,
when the sender kept it, its decoded form, which equals the decoded bytes and spares the
receiver decoding them (:func:`meshgpu.sim.nodes.core_node`). A node's timers are
honoured exactly as the driver contract in ``meshgpu.core.events`` says: ``Tick`` when
``now >= node.next_deadline()``.

Composition (how checkers and extensions plug in): a :class:`Simulation` holds a list of
:class:`meshgpu.sim.observers.Observer`; the built-in invariant checkers
(:func:`meshgpu.sim.invariants.default_checkers`) are observers, and so is anything a
scenario's extension table builds (``scenario.EXTENSION_SECTIONS``), or what a caller
passes as ``observers=``. Observers see node life-cycle changes, faults, every non-datagram
effect, periodic samples and the end; they may schedule work with :meth:`Simulation.call_at`
and feed events with :meth:`Simulation.inject`. A custom ``node_factory`` lets an extension
wrap or configure nodes (e.g. device profiles) while keeping the real core.

The event trace (invariant 10) is one JSON line per processed event
(:mod:`meshgpu.sim.trace`); faults are applied by :mod:`meshgpu.sim.fault_actions`.
"""

from __future__ import annotations

import bisect
import heapq
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any, assert_never

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
from meshgpu.core.events import (
    DatagramReceived,
    Event,
    LeaveRequested,
    PeerDiscovered,
    Tick,
    new_datagram_received,
)
from meshgpu.core.types import NodeId
from meshgpu.errors import SimulationError
from meshgpu.sim.fault_actions import apply_fault
from meshgpu.sim.faults import Fault, Reversal, Slow
from meshgpu.sim.network import Network
from meshgpu.sim.nodes import (
    NodeFactory,
    SimulatedNode,
    address_for,
    core_node_factory,
    node_id_for,
)
from meshgpu.sim.observers import Observer, overrides
from meshgpu.sim.randomness import node_stream, stream
from meshgpu.sim.scenario import Scenario, mesh_config_for
from meshgpu.sim.trace import FLUSH_LINES, EventTrace, describe, json_line

_TICK = Tick()
"""The one ``Tick`` the runner hands to nodes: it has no fields, so sharing it is safe and
saves an allocation per timer event."""

DELIVER, HANDLE, TICK, INJECT, FAULT, CALL, SAMPLE = range(7)
INFINITY = float("inf")
PROGRESS_EVERY = 20_000


@dataclass(frozen=True, slots=True)
class RunTotals:
    """Counts of what the loop did, for the report."""

    events: int
    virtual_s: float
    trace_sha256: str


class Simulation:
    """One run of one scenario. Build it, :meth:`run` it, read the observers' results."""

    def __init__(
        self,
        scenario: Scenario,
        observers: Iterable[Observer] = (),
        node_factory: NodeFactory | None = None,
        trace: IO[str] | None = None,
        progress: Callable[[float, float], None] | None = None,
    ) -> None:
        self.scenario = scenario
        self.seed = scenario.seed
        self.node_count = n = scenario.nodes
        self.node_ids = [node_id_for(i, n) for i in range(n)]
        self.addresses = [address_for(i) for i in range(n)]
        self.index_of_address = {a: i for i, a in enumerate(self.addresses)}
        self.index_of_id = {node_id: i for i, node_id in enumerate(self.node_ids)}
        self.node_factory = node_factory or core_node_factory(scenario)
        self.nodes: list[SimulatedNode | None] = [None] * n
        self.up = [False] * n
        self.lives = [0] * n
        self.persisted_incarnation = [0] * n
        self.reset_incarnation = [False] * n
        self.config = mesh_config_for(scenario)
        self.slow: list[Slow | None] = [None] * n
        self.counters: dict[str, int] = {"unroutable": 0, "to_down_node": 0}
        self.bytes_sent = 0
        """Payload bytes of every datagram the nodes sent (routable or not)."""
        self.network = Network(
            n,
            scenario.network,
            {p: stream(self.seed, p) for p in ("latency", "loss", "duplicate", "reorder")},
        )
        self.now = 0.0
        self._heap: list[tuple[Any, ...]] = []
        self._sequence = 0
        self._tick_at = [INFINITY] * n
        self._tick_token = [0] * n
        self._inbox_free = [0.0] * n
        self._slow_random = stream(self.seed, "slow")
        self._bootstrap_random = stream(self.seed, "bootstrap")
        self.schedule_random = stream(self.seed, "schedule")
        self.trace = EventTrace(trace)
        self._trace_lines = self.trace.lines
        self._progress = progress
        self._next_progress = PROGRESS_EVERY
        self.observers: list[Observer] = list(observers)
        self._effect_observers: list[Observer] = []
        self._sample_observers: list[Observer] = []
        self._effect_handlers: dict[type, list[Callable[..., None]]] = {}
        self.finished = False

    # -- public API for observers and extensions ---------------------------------------

    def random_stream(self, purpose: str) -> Any:
        """A random stream of this run for an extension's own ``purpose``."""
        return stream(self.seed, f"extension:{purpose}")

    def call_at(self, time: float, callback: Callable[[Simulation], None]) -> None:
        """Run ``callback(sim)`` at virtual ``time`` (in scheduling order among equals)."""
        self._push(time, CALL, -1, callback, None)

    def schedule_fault(self, fault: Fault | Reversal) -> None:
        """Apply ``fault`` at its ``at_s`` (used for reversals and by extensions)."""
        self._push(fault.at_s, FAULT, -1, fault, None)

    def inject(self, index: int, event: Any, time: float) -> None:
        """Feed ``event`` to node ``index`` at ``time`` if that node life is still up then."""
        self._push(time, INJECT, index, self.lives[index], event)

    def trace_event(self, kind: str, **fields: Any) -> None:
        """Append an extension's own line to the event trace (and to the hash)."""
        self.trace.emit(json_line(self.now, kind, fields))

    def trace_view(self, kind: str, **fields: Any) -> None:
        """Write a line about what a node now believes (``suspect``, ``leader``, ...) to the
        trace file, after the event that caused it. Not part of ``trace_sha256``: these
        lines follow from the hashed ones, and recording them must not change the hash
        of a run. Dropped when no trace file is written."""
        if self.trace.file is not None:
            self.trace.view(json_line(self.now, kind, fields))

    def up_indices(self) -> list[int]:
        return [i for i in range(self.node_count) if self.up[i]]

    def index_of(self, node_id: NodeId | None) -> int | None:
        return None if node_id is None else self.index_of_id.get(node_id)

    def majority_leader(self) -> int | None:
        """The node most up nodes name as leader now (ties: the lowest index)."""
        votes: dict[int, int] = {}
        for i in self.up_indices():
            node = self.nodes[i]
            assert node is not None
            leader = self.index_of(node.leader())
            if leader is not None:
                votes[leader] = votes.get(leader, 0) + 1
        if not votes:
            return None
        return min(votes, key=lambda i: (-votes[i], i))

    # -- running -------------------------------------------------------------------------

    def run(self) -> RunTotals:
        """Run to ``scenario.duration_s``; returns totals. Observers hold the findings."""
        scenario = self.scenario
        for observer in self.observers:
            observer.on_start(self)
        self._effect_observers = [o for o in self.observers if overrides(o, "on_effect")]
        self._sample_observers = [o for o in self.observers if overrides(o, "on_sample")]
        for index in range(self.node_count):
            self._start_node(index, incarnation=0)
        self._bootstrap_all()
        for fault in scenario.faults:
            self.schedule_fault(fault)
        if self._sample_observers:
            self._push(scenario.sample_interval_s, SAMPLE, -1, None, None)
        self._loop(scenario.duration_s)
        self.now = scenario.duration_s
        for observer in self.observers:
            observer.on_finish(self, self.now)
        self.trace.flush()
        self.finished = True
        return RunTotals(self.events, self.now, self.trace.hexdigest())

    @property
    def events(self) -> int:
        """Events processed so far: the lines of the trace."""
        return self.trace.events

    def _loop(self, until: float) -> None:
        # _call is inlined below for datagrams and ticks (nearly every event): the same
        # steps in the same order, with the attributes it reads held in locals.
        heap = self._heap
        pop = heapq.heappop
        push = heapq.heappush
        nodes = self.nodes
        up = self.up
        lines = self._trace_lines
        emit = lines.append
        call = self._call
        execute = self._execute
        addresses = self.addresses
        counters = self.counters
        crc32 = zlib.crc32
        tick = _TICK
        slows = self.slow  # mutated in place by faults, never replaced
        tick_token = self._tick_token
        tick_at = self._tick_at
        next_check = 0
        while heap and heap[0][0] <= until:
            time, _, kind, index, first, second = pop(heap)
            self.now = time
            if kind == DELIVER:
                if not up[index]:
                    counters["to_down_node"] += 1
                    continue
                slow = slows[index]
                if slow is not None:
                    # late but in arrival order: a starved process drains its socket FIFO
                    late = time + slow.delay_s + slow.delay_jitter_s * self._slow_random.random()
                    done = max(late, self._inbox_free[index])
                    self._inbox_free[index] = done
                    self._push(done, HANDLE, index, (self.lives[index], first), second)
                    continue
                # _receive inlined: this branch runs once per datagram
                payload = second.payload
                emit(
                    f'{{"ns":{round(time * 1e9)},"e":"recv","n":{index},"src":{first},'
                    f'"len":{len(payload)},"crc":{crc32(payload)}}}'
                )
                event: Event = new_datagram_received(addresses[first], payload, second.decoded)
            elif kind == TICK:
                if second != tick_token[index] or not up[index]:
                    continue
                tick_at[index] = INFINITY
                node = nodes[index]
                assert node is not None
                deadline = node.next_deadline()
                if time < deadline:
                    # _schedule_tick inlined (deadline > time: not due yet)
                    slow = slows[index]
                    if slow is not None and slow.tick_delay_s:
                        deadline += slow.tick_delay_s
                    tick_at[index] = deadline
                    tick_token[index] = token = tick_token[index] + 1
                    self._sequence = sequence = self._sequence + 1
                    push(heap, (deadline, sequence, TICK, index, None, token))
                    if len(lines) >= next_check:
                        next_check = self._periodic(time, until)
                    continue
                emit(f'{{"ns":{round(time * 1e9)},"e":"tick","n":{index}}}')
                event = tick
            else:
                if kind == HANDLE:
                    life, source = first
                    if up[index] and life == self.lives[index]:
                        self._receive(index, source, second)
                elif kind == INJECT:
                    if up[index] and first == self.lives[index]:
                        self.trace.emit(
                            json_line(time, "inject", {"n": index, "event": describe(second)})
                        )
                        call(index, second)
                elif kind == FAULT:
                    self._apply_fault(first)
                elif kind == CALL:
                    first(self)
                elif kind == SAMPLE:
                    for observer in self._sample_observers:
                        observer.on_sample(self, time)
                    self._push(time + self.scenario.sample_interval_s, SAMPLE, -1, None, None)
                if len(lines) >= next_check:
                    next_check = self._periodic(time, until)
                continue
            # _call(index, event), with the attributes it reads held in locals
            node = nodes[index]
            assert node is not None
            try:
                effects = node.handle(event, time)
            except Exception as error:
                raise self._handle_error(index, event, error) from error
            if execute(index, effects, time):
                deadline = node.next_deadline()
                if deadline < tick_at[index]:
                    self._schedule_tick(index, deadline)
            if len(lines) >= next_check:
                next_check = self._periodic(time, until)

    def _periodic(self, time: float, until: float) -> int:
        """Hash the buffered trace and report progress; returns the next buffer size to
        call this at (keeping the per-event cost of the loop to one ``len``)."""
        trace = self.trace
        if len(trace.lines) >= FLUSH_LINES:
            trace.flush()
            if self._progress is not None and trace.flushed >= self._next_progress:
                self._next_progress = trace.flushed + PROGRESS_EVERY
                self._progress(time, until)
        return FLUSH_LINES

    def _receive(self, index: int, source: int, datagram: SendDatagram) -> None:
        payload = datagram.payload
        self._trace_lines.append(
            f'{{"ns":{round(self.now * 1e9)},"e":"recv","n":{index},"src":{source},'
            f'"len":{len(payload)},"crc":{zlib.crc32(payload)}}}'
        )
        self._call(index, DatagramReceived(self.addresses[source], payload, datagram.decoded))

    def _call(self, index: int, event: Any) -> None:
        """Hand ``event`` to node ``index``, execute its effects in order, re-arm its timer."""
        node = self.nodes[index]
        assert node is not None
        now = self.now
        try:
            effects = node.handle(event, now)
        except Exception as error:
            raise self._handle_error(index, event, error) from error
        if self._execute(index, effects, now):
            deadline = node.next_deadline()
            if deadline < self._tick_at[index]:
                self._schedule_tick(index, deadline)

    def _execute(self, index: int, effects: list[Effect], now: float) -> bool:
        """Execute node ``index``'s effects in order: datagrams go onto the network,
        everything else to the observers that asked for its type. Returns False if an
        observer stopped the node (the rest of its effects are then lost)."""
        up = self.up
        for effect in effects:
            match effect:
                case SendDatagram():
                    self.bytes_sent += len(effect.payload)
                    destination = self.index_of_address.get(effect.destination)
                    if destination is None:
                        self.counters["unroutable"] += 1
                        continue
                    heap = self._heap
                    for delay in self.network.transmit(index, destination):
                        # _push inlined (the same sequence numbers, so the same order)
                        self._sequence = sequence = self._sequence + 1
                        heapq.heappush(
                            heap,
                            (now + delay, sequence, DELIVER, destination, index, effect),
                        )
                case (
                    MemberChanged()
                    | LeaderChanged()
                    | Persist()
                    | FetchPayload()
                    | RunTask()
                    | CancelTask()
                    | TaskAccepted()
                    | TaskRejected()
                    | TaskResolved()
                    | DropPayload()
                ):
                    # Observers see every effect but datagrams (checkers, workload drivers).
                    handlers = self._effect_handlers.get(type(effect))
                    if handlers is None:
                        handlers = self._handlers_for(type(effect))
                    for handler in handlers:
                        handler(self, index, effect, now)
                case _:
                    assert_never(effect)
            if not up[index]:
                return False
        return True

    def _apply_fault(self, fault: Fault | Reversal) -> None:
        """Put a scheduled fault (or a reversal) into effect, trace it, tell the observers."""
        targets = apply_fault(self, fault)
        fields: dict[str, Any] = {"kind": fault.kind, "targets": targets}
        if isinstance(fault, Reversal):
            fields["of"] = fault.fault.kind
        self.trace.emit(json_line(self.now, "fault", fields))
        for observer in self.observers:
            observer.on_fault(self, fault, targets, self.now)

    def _handle_error(self, index: int, event: Any, error: Exception) -> SimulationError:
        """The error to raise when node ``index`` raised ``error`` handling ``event``."""
        return SimulationError(
            f"node {self.node_ids[index]} raised {type(error).__name__}: {error} while "
            f"handling {describe(event)} at virtual time {self.now!r} (seed {self.seed}, "
            f"scenario {self.scenario.source}); rerun with the same seed to reproduce"
        )

    def _handlers_for(self, effect_type: type) -> list[Callable[..., None]]:
        handlers = [
            observer.on_effect
            for observer in self._effect_observers
            if observer.effect_types is None or effect_type in observer.effect_types
        ]
        self._effect_handlers[effect_type] = handlers
        return handlers

    def _schedule_tick(self, index: int, deadline: float) -> None:
        slow = self.slow[index]
        time = max(deadline, self.now)
        if slow is not None and slow.tick_delay_s:
            time += slow.tick_delay_s
        self._tick_at[index] = time
        self._tick_token[index] += 1
        self._push(time, TICK, index, None, self._tick_token[index])

    def _push(self, time: float, kind: int, index: int, first: Any, second: Any) -> None:
        self._sequence += 1
        heapq.heappush(self._heap, (time, self._sequence, kind, index, first, second))

    # -- node life cycle ---------------------------------------------------------------

    def _start_node(self, index: int, incarnation: int) -> None:
        life = self.lives[index]
        node = self.node_factory(
            self.node_ids[index],
            self.addresses[index],
            node_stream(self.seed, index, life),
            self.now,
            incarnation,
        )
        self.nodes[index] = node
        self.up[index] = True
        self._tick_at[index] = INFINITY
        self._tick_token[index] += 1
        self._inbox_free[index] = self.now
        self.trace.emit(json_line(self.now, "up", {"n": index, "life": life, "inc": incarnation}))
        for observer in self.observers:
            observer.on_node_up(self, index, self.now)
        self._schedule_tick(index, node.next_deadline())

    def stop_node(self, index: int, reason: str) -> None:
        """Stop node ``index`` now (crash or end of a leave); its pending events die with it."""
        node = self.nodes[index]
        if node is None or not self.up[index]:
            return
        self.persisted_incarnation[index] = node.incarnation
        self.up[index] = False
        self.lives[index] += 1
        self._tick_token[index] += 1
        self._tick_at[index] = INFINITY
        self.trace.emit(json_line(self.now, "down", {"n": index, "reason": reason}))
        for observer in self.observers:
            observer.on_node_down(self, index, self.now, reason)

    def restart_node(self, index: int, keep_incarnation: bool) -> None:
        """Start a crashed node again with the same id (and incarnation, if persisted)."""
        if self.up[index]:
            return
        incarnation = self.persisted_incarnation[index] if keep_incarnation else 0
        self.reset_incarnation[index] = self.reset_incarnation[index] or not keep_incarnation
        self._start_node(index, incarnation)
        self._discover_for(index, others_learn=True)

    def request_leave(self, index: int, linger_s: float) -> None:
        self.inject(index, LeaveRequested(), self.now)
        life = self.lives[index]

        def finish_leave(sim: Simulation) -> None:
            if sim.up[index] and sim.lives[index] == life:
                sim.stop_node(index, "leave")

        self.call_at(self.now + linger_s, finish_leave)

    # -- bootstrap (simulated mDNS / seed list) --------------------------------------------

    def _bootstrap_all(self) -> None:
        up = self.up_indices()
        for index in range(self.node_count):
            self._discover_for(index, others_learn=False, up=up)

    def _discover_for(self, index: int, others_learn: bool, up: list[int] | None = None) -> None:
        """Node ``index`` learns of its seeds (or of every up node, mDNS); ``up``: the
        up nodes in index order, when the caller has them (the bootstrap: n nodes, each
        of whose list is the others, so not n lists built from n flags each)."""
        bootstrap = self.scenario.bootstrap
        rng = self._bootstrap_random
        if up is None:
            others = [j for j in range(self.node_count) if j != index and self.up[j]]
        else:
            at = bisect.bisect_left(up, index)
            found = at < len(up) and up[at] == index
            others = up[:at] + up[at + 1 :] if found else list(up)
        if bootstrap.mode == "seeds":
            others = rng.sample(others, min(bootstrap.seeds, len(others)))
        for j in others:
            self.inject(index, self._discovery(j), self.now + bootstrap.spread_s * rng.random())
            if others_learn and bootstrap.mode == "mdns":
                self.inject(j, self._discovery(index), self.now + bootstrap.spread_s * rng.random())

    def _discovery(self, index: int) -> PeerDiscovered:
        return PeerDiscovered(self.addresses[index], self.node_ids[index])
