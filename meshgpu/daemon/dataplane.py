"""The data plane: moving inputs, models and results between nodes, and running tasks.

The core moves task metadata over gossip; it asks the daemon to move bytes with
``FetchPayload`` (become a holder of a task's inputs), ``RunTask`` (fetch inputs and
model, run, push the result to the holders) and ``DropPayload`` (the client has its
result). Each becomes a trio task in the data plane's own nursery (``run``), so the
effect queue never waits for a transfer or a model; each ends by feeding the node the
event the effect promised (``PayloadStored``/``PayloadFetchFailed``, ``TaskFinished``).

:class:`DataPlane` is the part: the wiring hands it the node's member list, the peer
connections, the stores, the executor, and callables (feed an event, count, write a
payload to the journal and wait for its sync, whether the daemon leaves, a task's entry
in the table).

Transfers are requests on the peer's TCP API (rpc.py): ``get_inputs``, ``get_model``
(a stream of chunks), ``put_result``, ``get_result``. Everything fetched is checked
against its sha256 before it is used or stored.

Inputs are stored content-addressed (by ``input_digest``) so that two tasks with equal
inputs share one file; ``DropPayload`` deletes it only once no task this node knows of
still refers to it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from meshgpu.core import effects as fx
from meshgpu.core.events import (
    Event,
    PayloadFetchFailed,
    PayloadStored,
    TaskFinished,
    TaskStarted,
)
from meshgpu.core.tasks import TaskId, TaskSpec
from meshgpu.core.types import Address, NodeId
from meshgpu.daemon.blobs import TensorReceiver
from meshgpu.daemon.early_results import EarlyResults
from meshgpu.daemon.execution import is_permanent
from meshgpu.daemon.memory_budget import MemoryBudget
from meshgpu.daemon.payloads import group_from_bytes, group_result_bytes
from meshgpu.daemon.relay import Relays
from meshgpu.daemon.results import RESULT, TRANSFER_TIMEOUT, Members, ResultPlane, task_key
from meshgpu.daemon.rpc import open_rpc
from meshgpu.daemon.transfers import (
    Fetched,
    RangeCall,
    ResultSource,
    pull,
)
from meshgpu.daemon.warm_inputs import WarmInputs
from meshgpu.errors import (
    DigestMismatchError,
    InputsUnavailableError,
    MeshError,
    PermanentTaskError,
)

if TYPE_CHECKING:
    from meshgpu.daemon.auth import Authenticator
    from meshgpu.daemon.execution import Executor
    from meshgpu.daemon.modelstore import ModelStore
    from meshgpu.daemon.payloads import PayloadStore
    from meshgpu.daemon.rpc import ConnectionPool
    from meshgpu.daemon.status import TaskLookup

logger = logging.getLogger("meshgpu.daemon")
runs_logger = logging.getLogger("meshgpu.daemon.runs")
"""One debug line per run that takes a device slot (task id, attempt): the record of
executions a fault campaign counts (bench/chaos.py turns this logger on)."""

INPUTS = "inputs"
MODEL_CHUNK_BYTES = 1 << 20
INPUTS_EXPIRY_S = 600.0
"""Inputs no task here refers to are deleted once this old (an upload never submitted;
docs/daemon.md, "Unsubmitted inputs expire"). A client submits right after its upload;
a later submit is refused with "upload them first", and the client uploads again."""
WARM_SWEEP_S = 5.0
"""How often the warm copies no run took are looked at (warm_inputs.KEEP_S is their age
limit)."""


class DataPlane(ResultPlane):
    """Executes the data-plane effects of one daemon (results: results.py). Use
    ``await nursery.start(plane.run)`` before the effect queue runs; :meth:`execute` is
    invoked by the effect queue."""

    def __init__(
        self,
        node_id: NodeId,
        node: Members,
        peers: ConnectionPool,
        payloads: PayloadStore,
        models: ModelStore,
        executor: Executor,
        authenticator: Authenticator,
        *,
        max_frame_bytes: int,
        task_entry: TaskLookup,
        feed: Callable[[Event], None],
        count: Callable[[str], None],
        write_payload: Callable[[Any, str, bytes, int | None], int | None],
        durable: Callable[[int], Awaitable[None]],
        leaving: Callable[[], bool],
    ) -> None:
        self.node_id = node_id
        self.node = node
        self.peers = peers
        self.payloads = payloads
        self.models = models
        self.executor = executor
        self.authenticator = authenticator
        self.max_frame_bytes = max_frame_bytes
        self._task_entry = task_entry
        self._feed = feed
        self._count = count
        self._write_payload = write_payload
        self._durable = durable
        self._leaving = leaving
        self._nursery: trio.Nursery | None = None
        self.running: dict[tuple[TaskId, int], trio.CancelScope] = {}
        self._fetching: set[tuple[TaskId, int]] = set()
        self._held_back: dict[tuple[TaskId, int], None] = {}
        """Attempts assigned here while the daemon leaves: never started (hand_back)."""
        self._idle = trio.Event()
        self._idle.set()
        self.input_refs: dict[str, set[TaskId]] = defaultdict(set)
        self._model_fetches: dict[str, trio.Lock] = defaultdict(trio.Lock)
        self.inputs_expiry_s = INPUTS_EXPIRY_S
        self.submitting: Counter[str] = Counter()
        """Input digests of submissions not yet acknowledged (no task id to refer to yet):
        an equal input of a finished task must not be dropped under them."""
        self.completed = 0
        self.failed = 0
        self.relays = Relays(
            node_id,
            lambda: list(self.node.live_members()),
            self.transfer_link,
            lambda: self.chunk,
            random.shuffle,
        )
        """Large uploads relayed to the next holders as they arrive (relay.py)."""
        self.memory = MemoryBudget()
        """The budget of tensors kept in memory beside their durable copies, which the
        warm inputs and the early results share (memory_budget.py)."""
        self.warm = WarmInputs(budget=self.memory)
        """Large uploads' arrays, kept where they were received for the run that usually
        follows here (warm_inputs.py; the upload ops fill them)."""
        self.early = EarlyResults(budget=self.memory)
        """Large results being stored on their task's origin, served to its client as
        they arrive (early_results.py; the pushes and the put_result op fill them)."""
        self._fetch_queue: list[fx.FetchPayload] = []
        """Hold requests whose inputs are still to fetch; every one queued by the time the
        fetching task runs (a burst: the tasks of one batch) goes in one request per source."""

    async def run(
        self,
        *,
        sweep_interval: float = 30.0,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Hold the nursery of every transfer and run this data plane starts, and sweep
        the worker's result copies and the unsubmitted inputs every ``sweep_interval``
        seconds, until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.relays.nursery = nursery
            nursery.start_soon(self.sweep_results, sweep_interval)
            nursery.start_soon(self.sweep_inputs, sweep_interval)
            nursery.start_soon(self.sweep_warm, min(sweep_interval, WARM_SWEEP_S))
            task_status.started()

    # --- effect dispatch ----------------------------------------------------------

    def execute(self, effect: Any) -> None:
        nursery = self._nursery
        assert nursery is not None, "DataPlane.run must be started before effects arrive"
        if isinstance(effect, fx.FetchPayload):
            self.input_refs[effect.input_digest].add(effect.task_id)
            self._fetch_queue.append(effect)
            if len(self._fetch_queue) == 1:  # the first of a burst starts the batch
                nursery.start_soon(self._fetch_queued)
        elif isinstance(effect, fx.RunTask):
            key = (effect.task_id, effect.attempt)
            if key in self.running or key in self._held_back:
                return  # the same attempt twice: already on it
            if self._leaving():
                # Not started: handed back with the running ones when the drain ends
                # (handed back at once, the leader, often this node, assigned it here
                # again at once, over and over, until the leave).
                self._held_back[key] = None
                return
            self.input_refs[effect.spec.input_digest].add(effect.task_id)
            scope = trio.CancelScope()
            self.running[key] = scope
            if self._idle.is_set():  # a waiter of wait_idle holds the unset one: keep it
                self._idle = trio.Event()
            nursery.start_soon(self._run_task, effect, scope)
        elif isinstance(effect, fx.CancelTask):
            key = (effect.task_id, effect.attempt)
            if key in self._fetching:  # a run already on the device finishes normally
                self.running[key].cancel()
        elif isinstance(effect, fx.DropPayload):
            self._drop(effect.task_id, effect.input_digest)

    def note_inputs(self, task_id: TaskId, input_digest: str) -> None:
        """A task this node holds refers to ``input_digest`` (submissions, journal replay)."""
        self.input_refs[input_digest].add(task_id)

    async def sweep_inputs(self, interval: float) -> None:
        """Every ``interval`` seconds, :meth:`expire_inputs`."""
        while True:
            await trio.sleep(interval)
            try:
                self.expire_inputs()
            except (OSError, MeshError) as error:
                logger.warning("sweeping unsubmitted inputs failed: %s", error)

    async def sweep_warm(self, interval: float) -> None:
        """Every ``interval`` seconds, drop the warm copies no run took in time."""
        while True:
            await trio.sleep(interval)
            self.warm.sweep(trio.current_time())

    def expire_inputs(self, now: float | None = None) -> int:
        """Delete the input payloads no task here refers to (uploaded with ``put_inputs``
        or relayed, and never submitted, or their submit was refused) once they are
        ``inputs_expiry_s`` old; returns how many (docs/daemon.md, "Unsubmitted inputs
        expire"). Runs on the loop: a directory listing and a stat per input file."""
        expired = 0
        for digest, modified in self.payloads.input_files():
            if self.input_refs.get(digest) or self.submitting.get(digest):
                continue
            if (now if now is not None else time.time()) - modified < self.inputs_expiry_s:
                continue
            self.payloads.delete(digest, INPUTS)
            self.warm.drop(digest)
            self._count("inputs_expired")
            expired += 1
        return expired

    def relayed_copies(self, input_digest: str) -> tuple[NodeId, ...]:
        """The nodes the upload of ``input_digest`` was relayed to, which stored it."""
        return self.relays.copies_of(input_digest)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def hand_back_waiting(self) -> list[tuple[TaskId, int]]:
        """Cancel every attempt not on a device yet (fetching its inputs, or prefetched
        and waiting for a slot): the daemon is leaving, and another worker can start
        them now. Returns them; the runs already on a device go on."""
        waiting = [key for key in self.running if key in self._fetching]
        for key in waiting:
            self.running[key].cancel()
        return waiting

    def hand_back(self) -> list[tuple[TaskId, int]]:
        """Cancel every running attempt (the daemon is leaving); returns them, and the
        attempts assigned here since it began to leave."""
        attempts = [*self.running, *self._held_back]
        self._held_back.clear()
        for scope in self.running.values():
            scope.cancel()
        return attempts

    # --- peers ---------------------------------------------------------------------

    def _address_of(self, node_id: NodeId) -> Address | None:
        info = self.node.members().get(node_id)
        return None if info is None else info.address

    def _live(self, node_ids: Iterable[NodeId]) -> list[NodeId]:
        """``node_ids`` with ourselves first and then live members in the order given
        (the caller's preference), unknown ones dropped."""
        live = set(self.node.live_members())
        unique = dict.fromkeys(node_ids)  # a set's order would follow the string hash seed
        ordered = sorted(unique, key=lambda n: (n != self.node_id, n not in live))
        return [n for n in ordered if n == self.node_id or n in live]

    async def _request(self, node_id: NodeId, op: str, **fields: Any) -> dict[str, Any]:
        address = self._address_of(node_id)
        if address is None:
            raise MeshError(f"no address known for {node_id}")
        return await self.peers.call(address, op, timeout=TRANSFER_TIMEOUT, **fields)

    # --- inputs ----------------------------------------------------------------------

    async def fetch_inputs(
        self, digest: str, sources: Iterable[NodeId], *, durable: bool, arrays: bool = False
    ) -> Fetched:
        """The input payload ``digest``: from our store, else from the first source that
        has it (a large one into a scratch file, checked against its digest, and synced
        to disk if ``durable``: a holder's copy, not a worker's read-once scratch). With
        ``arrays`` (a worker's copy of one task's tensor map) a large one is received
        straight into its arrays, hashed as it arrives: no scratch file written and
        read back, the same one copy in memory that loading the file made."""
        payloads = self.payloads
        if arrays:
            warm = self.warm.take(digest)
            if warm is not None:  # received here moments ago: no read of the file
                self._count("warm_inputs_taken")
                return Fetched(arrays=warm)
        local = payloads.get_memory(digest, INPUTS)
        if local is not None:
            return Fetched(data=local)
        if payloads.has(digest, INPUTS):
            # A miss goes straight to the holders: a thread hop only to learn that a file
            # is absent cost 0.6-7 ms of a loaded machine's scheduling (docs/daemon.md).
            return Fetched(path=payloads.path(digest, INPUTS))
        errors = []
        for node_id in self._live(sources):
            if node_id == self.node_id:
                continue
            try:
                first = self._ranges(node_id, "get_inputs", digest=digest)
                rest = functools.partial(
                    self._transfer_ranges, node_id, "get_inputs", digest=digest
                )
                if arrays:
                    data, receiver = await pull(
                        first, self.chunk, lambda: TensorReceiver(hashed=True), open_rest=rest
                    )
                    if receiver is not None:
                        if receiver.hexdigest() != digest:
                            raise DigestMismatchError(
                                f"inputs from {node_id} do not match {digest[:12]}"
                            )
                        return Fetched(arrays=receiver.tensors())
                    writer = None
                else:
                    data, writer = await pull(
                        first,
                        self.chunk,
                        lambda: payloads.writer(digest, INPUTS, durable=durable),
                        open_rest=rest,
                    )
                if writer is not None:
                    path = await trio.to_thread.run_sync(
                        functools.partial(writer.commit, digest, durable=durable)
                    )
                    return Fetched(path=path, owned=True)
                assert data is not None
                if hashlib.sha256(data).hexdigest() != digest:
                    raise DigestMismatchError(f"inputs from {node_id} do not match {digest[:12]}")
                return Fetched(data=bytes(data))
            except (MeshError, OSError, KeyError, TypeError, trio.TooSlowError) as error:
                errors.append(f"{node_id}: {error or type(error).__name__}")
        raise InputsUnavailableError(
            f"inputs {digest[:12]} unavailable: " + ("; ".join(errors) or "no live holder")
        )

    def _ranges(self, node_id: NodeId, op: str, **fields: Any) -> RangeCall:
        """Range requests ``op`` to ``node_id`` (transfers.pull)."""

        async def call(offset: int, length: int) -> dict[str, Any]:
            return await self._request(node_id, op, offset=offset, length=length, **fields)

        return call

    @asynccontextmanager
    async def _transfer_ranges(
        self, node_id: NodeId, op: str, **fields: Any
    ) -> AsyncIterator[RangeCall]:
        """Range requests ``op`` to ``node_id`` on a connection of their own (the rest of
        a payload larger than one range: transfers.transfer_link)."""
        async with self.transfer_link(node_id) as request:

            async def call(offset: int, length: int) -> dict[str, Any]:
                return await request(op, offset=offset, length=length, **fields)

            yield call

    async def _fetch_queued(self) -> None:
        """Fetch the inputs of every queued hold request, one ``get_inputs`` request per
        source node for all its digests; what a batch did not bring is fetched alone."""
        queued, self._fetch_queue = self._fetch_queue, []
        groups: dict[NodeId | None, list[fx.FetchPayload]] = defaultdict(list)
        for effect in queued:
            sources = [n for n in self._live(effect.from_nodes) if n != self.node_id]
            groups[sources[0] if sources else None].append(effect)
        async with trio.open_nursery() as nursery:
            for source, effects in groups.items():
                if source is None or len(effects) == 1:
                    for effect in effects:
                        nursery.start_soon(self._fetch_payload, effect)
                else:
                    nursery.start_soon(self._fetch_group, source, effects)

    async def _fetch_group(self, source: NodeId, effects: list[fx.FetchPayload]) -> None:
        digests = sorted({effect.input_digest for effect in effects})
        blobs: dict[str, bytes] = {}
        try:
            models = {self._model_of(e.task_id) for e in effects}
            for model_digest in sorted(digest for digest in models if digest is not None):
                await self.obtain_model(model_digest, [source])
            reply = await self._request(source, "get_inputs", digests=digests)
            for digest, data in dict(reply["blobs"]).items():
                if digest in digests and hashlib.sha256(data).hexdigest() == digest:
                    blobs[digest] = bytes(data)
        except (MeshError, OSError, KeyError, TypeError, ValueError, trio.TooSlowError) as error:
            logger.debug("batched inputs from %s failed (%s); fetching one by one", source, error)
        async with trio.open_nursery() as nursery:
            for effect in effects:
                data = blobs.get(effect.input_digest)
                if data is None:
                    nursery.start_soon(self._fetch_payload, effect)
                    continue
                try:
                    await self.store(effect.input_digest, INPUTS, data, wait=False)
                except MeshError as error:
                    self._feed(PayloadFetchFailed(effect.task_id, f"{error}"))
                    continue
                self._feed(PayloadStored(effect.task_id))

    def _model_of(self, task_id: TaskId) -> str | None:
        entry = self._task_entry(task_id)
        return None if entry is None else entry.spec.model_digest

    async def _fetch_payload(self, effect: fx.FetchPayload) -> None:
        try:
            # A holder keeps the model too: the task must survive its origin, which
            # may be the only node the client uploaded the model to (cached: fetched
            # once per model, not per task).
            model_digest = self._model_of(effect.task_id)
            if model_digest is not None:
                await self.obtain_model(model_digest, effect.from_nodes)
            fetched = await self.fetch_inputs(effect.input_digest, effect.from_nodes, durable=True)
            if fetched.owned:
                assert fetched.path is not None
                await trio.to_thread.run_sync(  # it syncs the directory: off the loop
                    self.payloads.install, fetched.path, effect.input_digest, INPUTS
                )
            elif fetched.data is not None:
                await self.store(effect.input_digest, INPUTS, fetched.data, wait=False)
        except Exception as error:  # every failure is reported to the core, never raised
            if not isinstance(error, MeshError):
                logger.exception("unexpected error fetching inputs of %s", effect.task_id)
            self._feed(PayloadFetchFailed(effect.task_id, f"{error}"))
            return
        self._feed(PayloadStored(effect.task_id))

    async def store(self, key: Any, kind: str, data: bytes, *, wait: bool) -> None:
        """Store a payload: small ones in the journal (synced by the group commit; with
        ``wait`` this returns once synced, without it a later record's sync covers it, as
        the holder's first task record does for fetched inputs), larger ones in a file,
        fsynced before this returns."""
        seq = self._write_payload(key, kind, data, None)
        if seq is None:
            await trio.to_thread.run_sync(self.payloads.put_bytes, key, kind, data)
        elif wait:
            await self._durable(seq)

    # --- models ------------------------------------------------------------------------

    async def obtain_model(self, digest: str, sources: Iterable[NodeId]) -> None:
        """Make sure model ``digest`` is in our cache, fetching it (verified) if not."""
        async with self._model_fetches[digest]:  # concurrent tasks fetch a model once
            if not self.models.has(digest):
                await self._fetch_model(digest, sources)

    async def _fetch_model(self, digest: str, sources: Iterable[NodeId]) -> None:
        candidates = self._live([*sources, *self.node.live_members()])
        errors = []
        for node_id in candidates:
            if node_id == self.node_id:
                continue
            address = self._address_of(node_id)
            if address is None:
                continue
            writer = self.models.writer(digest)
            try:
                with trio.fail_after(TRANSFER_TIMEOUT * 4):
                    async with open_rpc(
                        address,
                        self.authenticator,
                        max_frame_bytes=self.max_frame_bytes,
                    ) as rpc:
                        async for chunk in rpc.stream("get_model", digest=digest):
                            writer.write(chunk["data"])
                await trio.to_thread.run_sync(writer.commit)
                self._count("models_fetched")
                return
            except (MeshError, OSError, KeyError, TypeError, trio.TooSlowError) as error:
                writer.abort()
                errors.append(f"{node_id}: {error or type(error).__name__}")
        raise MeshError(
            f"model {digest[:12]} is on no reachable peer: " + ("; ".join(errors) or "none live")
        )

    # --- running -----------------------------------------------------------------------

    async def _run_task(self, effect: fx.RunTask, scope: trio.CancelScope) -> None:
        key = (effect.task_id, effect.attempt)
        spec = effect.spec
        outcome, reason, run_s = "transient_error", "cancelled", 0.0
        holders: tuple[NodeId, ...] = ()
        kept_attempt = effect.attempt
        """The attempt whose result ``holders`` keep: a newer one's, adopted, when they
        refused this one's (ResultPlane._push_result)."""
        try:
            with scope:
                # Cancellable (CancelTask) while fetching and while waiting for a slot
                # (a prefetched task); once on the device, the run finishes normally.
                self._fetching.add(key)
                fetched: Fetched | None = None
                try:
                    sources = [effect.task_id.origin, *effect.holders]
                    fetched = await self.fetch_inputs(
                        spec.input_digest, effect.holders, durable=False, arrays=spec.members == 1
                    )
                    await self.obtain_model(spec.model_digest, sources)

                    def on_slot() -> None:  # on the device now: no longer cancellable
                        self._fetching.discard(key)
                        self._feed(TaskStarted(effect.task_id, effect.attempt))  # stealing
                        runs_logger.debug("run %s attempt %d", effect.task_id, effect.attempt)

                    with self.models.pinned(spec.model_digest) as model_path:
                        if spec.members != 1:
                            blob = await fetched.read_bytes()
                            packed, run_s = await self._run_group(spec, model_path, blob, on_slot)
                            result = ResultSource.of_bytes(packed)
                        else:
                            tensors = await fetched.tensors()
                            fetched.discard()  # loaded: the scratch copy is not needed
                            fetched = None  # ``tensors`` is the one copy, freed with it
                            outputs, run_s = await self.executor.run(
                                spec.model_digest, model_path, tensors, on_slot=on_slot
                            )
                            # Freed in the release thread: a GiB's munmap on the loop
                            # stalled the node past its peers' suspicion timeout.
                            self.payloads.release.empty(tensors)
                            del tensors
                            result = await self._result_source(
                                effect.task_id, outputs, effect.attempt
                            )
                            del outputs
                finally:
                    self._fetching.discard(key)
                    if fetched is not None:
                        fetched.discard()
                holders, problems, kept_attempt = await self._push_result(
                    effect.task_id, effect.attempt, result, effect.holders
                )
                if holders:
                    outcome, reason = "ok", ""
                else:
                    reason = "the result could not be stored on any node: " + "; ".join(
                        problems or ["no live node"]
                    )
            if scope.cancelled_caught and self._leaving():
                return  # handed back by _leave, which feeds the TaskFinished
            if scope.cancelled_caught:
                return  # CancelTask: the attempt no longer matters
        except Exception as error:  # every failure of a run is reported, never raised
            if isinstance(error, InputsUnavailableError):
                outcome = "inputs_unavailable"  # never ran: the task waits for a holder
            else:
                outcome = "permanent_error" if is_permanent(error) else "transient_error"
            reason = f"{type(error).__name__}: {error}"
            if not isinstance(error, MeshError | OSError):
                logger.exception("unexpected error running %s", effect.task_id)
        finally:
            self.running.pop(key, None)
            if not self.running:
                self._idle.set()
        if outcome == "ok":
            self.completed += 1
        else:
            self.failed += 1
            logger.warning(
                "task %s attempt %d: %s (%s)", effect.task_id, effect.attempt, outcome, reason
            )
        self._feed(
            TaskFinished(
                effect.task_id,
                effect.attempt,
                outcome,  # type: ignore[arg-type]
                reason=reason,
                result_holders=tuple(holders),
                run_s=run_s,
                result_attempt=kept_attempt if kept_attempt != effect.attempt else None,
            )
        )

    async def _run_group(
        self, spec: TaskSpec, model_path: Path, blob: bytes, on_slot: Callable[[], None]
    ) -> tuple[bytes, float]:
        """Run the members of a task group in one thread hop; returns the group's result
        blob (per member: outputs or its permanent error) and the run time per member,
        which is what the published per-model latency estimate means for every task."""
        members = group_from_bytes(blob)
        if len(members) != spec.members:
            raise PermanentTaskError(
                f"the group's inputs hold {len(members)} members, its spec says {spec.members}"
            )
        outcomes, run_s = await self.executor.run_many(
            spec.model_digest, model_path, members, on_slot=on_slot
        )
        return group_result_bytes(outcomes), run_s / len(members)

    def _drop(self, task_id: TaskId, input_digest: str) -> None:
        self.payloads.delete(task_key(task_id), RESULT)
        refs = self.input_refs.get(input_digest)
        if refs is not None:
            refs.discard(task_id)
            if refs:
                return
            del self.input_refs[input_digest]
        if self.submitting[input_digest]:
            return  # a submission being acknowledged stored the same bytes
        self.payloads.delete(input_digest, INPUTS)
        self.warm.drop(input_digest)
