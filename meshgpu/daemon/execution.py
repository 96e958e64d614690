"""Running models on this node's devices without blocking the trio loop.

Inference is blocking (OpenCL queue waits, onnxruntime's ``run``), so each run goes to a
worker thread through ``trio.to_thread.run_sync`` with a ``CapacityLimiter`` of the
node's ``slots``: at most ``slots`` runs at once, the loop keeps gossiping meanwhile.
Loading a model is also blocking (parsing, compiling kernels), so it happens in a thread
too, once per (model digest) while the session stays in a small cache.

One exception: a lone run (no other task waiting for a slot or running on this node)
expected to take under ``INLINE_RUN_S`` (the model's previous run here, scaled up by input
bytes) runs on the loop itself. Measured
on the 3-node loopback mesh (docs/daemon.md, per-hop trace), the hop to a worker thread
and back cost 0.7-6 ms on a loaded 2-core machine (two wake-ups, each waiting for a
core) around a 0.2-0.8 ms run; blocking the loop for under a millisecond delays nothing
the mesh times (gossip rounds and probe timeouts are hundreds of ms). Rejected: a
per-model setting (the measurement already says which models are tiny); inline runs of
locked (OpenCL) sessions, whose lock another thread may hold for a whole run; inline
runs while other tasks are on the node, where the thread lets the loop fetch and report
the next tasks during a run (with every fast run inline, the 0.7 ms model of
``bench/dispatch.py`` ran at 17-27 tasks/s against 24-30 before, within the noise but
not worth the risk). The first run of a session, and the one after a slow run, go to a
thread.

Sessions are shared between runs of the same model. onnxruntime's ``run`` is safe to
call from several threads; our OpenCL executor keeps one command queue per session, so
its runs are serialised with a per-session lock.

Runs of a model with a free batch dimension are batched (batching.py): runs waiting for
the device at once are concatenated along the first dimension into one run, up to the
model's ``max_batch`` rows, and the outputs split back per run.

The error classes decide retries (design, fault tolerance): a
:class:`~meshgpu.errors.PermanentTaskError` (bad model, bad input) fails the task at
once; anything else is transient and retried elsewhere.

A device problem is this node's, never the task's (design, "Devices are probed, not
trusted"): models are loaded with fallback allowed, so a device that failed its probe, or
kernels that fail to build or run for one model, make that model run on onnxruntime here
instead of failing the attempt and spending the task's retries on the next node with the
same driver. Such models are listed in :attr:`Executor.fallback_models` (the load vector
carries them to ``meshgpu status``), each logged once. Rejected: handing such a task back
(the leader, which knows nothing of this node's driver, would assign it here again) and
failing it transiently (every node of a lab with one driver image would fail it in turn).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import trio

from meshgpu.core.catalog import Batching
from meshgpu.daemon.batching import (
    DEFAULT_BATCHING,
    BatchCounts,
    BatchQueue,
    Request,
    Signature,
    Waiter,
    batch_dimension,
    concatenate,
    outputs_sized_by_inputs,
    rows_of,
    signature,
    split,
)
from meshgpu.daemon.synthetic import SyntheticSession, is_synthetic, service_seconds
from meshgpu.errors import PermanentTaskError

logger = logging.getLogger("meshgpu.daemon")

PREFETCH_PER_SLOT = 1
"""Assignments a node accepts beyond its slots, per slot. Such a task fetches its inputs
and model while the slots are busy and waits for one: without it a slot idled for the
whole round trip between finishing one task and receiving the next (result pushed,
leader told, next assignment gossiped, inputs fetched), which held one node at about
half its ideal throughput. One per slot hides that round trip; more would only queue
work on one node that another could start (and lose it to a crash later)."""

RECENT_RUNS = 8
"""Runs of a model whose fastest decides how long its next run is expected to take."""
INLINE_RUN_S = 0.001
"""A session whose last run took less than this runs its next one on the loop."""

_T = TypeVar("_T")

_THREAD_SAFE = frozenset({"onnxruntime", "synthetic"})
"""Backends whose sessions may run from several threads at once (no per-session lock)."""


BATCH_SAMPLES = 3
"""Runs of each kind (one row alone, batched) measured before batching is judged."""
BATCH_REPROBE_RUNS = 64
"""A model whose batches did not pay tries one batch again after this many runs alone
(the load, or the batches' sizes, may have changed)."""
_SPEED_WEIGHT = 0.3
"""Weight of the newest sample in the per-row averages."""


@dataclass
class RowSpeed:
    """Whether concatenating runs pays on this node's device for one model: the moving
    average of seconds per row of single-row runs alone and of batched runs. Devices are
    probed, not trusted: a CPU OpenCL device may run a batch of 16 slower per row than
    16 runs of one (larger activations, worse cache use), a GPU much faster."""

    single_s: float = 0.0
    singles: int = 0
    batched_s: float = 0.0
    batches: int = 0
    since_batch: int = 0
    sizes: set[int] = field(default_factory=set)
    """Row counts run once already: the first run of a shape builds its plan (kernels,
    buffers) and says nothing of the steady cost, so it is not a sample."""

    def alone(self, elapsed: float) -> None:
        """A run of one row, alone, took ``elapsed``."""
        self.since_batch += 1
        if self._first(1):
            return
        self.single_s = _average(self.single_s, elapsed, self.singles)
        self.singles += 1

    def batched(self, elapsed: float, rows: int) -> None:
        """A batched run of ``rows`` rows took ``elapsed``."""
        self.since_batch = 0
        if self._first(rows):
            return
        self.batched_s = _average(self.batched_s, elapsed / rows, self.batches)
        self.batches += 1

    def _first(self, rows: int) -> bool:
        if rows in self.sizes:
            return False
        self.sizes.add(rows)
        return True

    def may_batch(self) -> bool:
        """Batch now? Not before a few runs alone were measured (the yardstick); then
        yes until a few batches were, then while batches are faster per row, and once
        every ``BATCH_REPROBE_RUNS`` runs alone when they were not."""
        if self.singles < BATCH_SAMPLES:
            return False
        if self.batches < BATCH_SAMPLES or self.batched_s < self.single_s:
            return True
        return self.since_batch >= BATCH_REPROBE_RUNS

    @property
    def pays(self) -> bool | None:
        """Whether batches were faster per row (None: not measured yet)."""
        if self.singles < BATCH_SAMPLES or self.batches < BATCH_SAMPLES:
            return None
        return self.batched_s < self.single_s


def _average(current: float, sample: float, count: int) -> float:
    return sample if count == 0 else current + _SPEED_WEIGHT * (sample - current)


@dataclass
class _CachedSession:
    session: Any
    lock: threading.Lock | None
    recent_runs: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=RECENT_RUNS))
    """(seconds, input bytes) of the latest runs: they decide whether the next one may
    run inline, and whether a submission may run directly."""
    batch_axis: bool = False
    """The model's graph declares a free batch dimension (batching.batch_dimension)."""
    sized_by_inputs: bool = True
    """The model's outputs are as large as its inputs' shapes say
    (batching.outputs_sized_by_inputs): its runs' times scale with the input bytes."""

    def expected_s(self, input_bytes: int) -> float:
        """The fastest of the latest runs, each scaled up to ``input_bytes`` (never down:
        a small input still pays the run's fixed cost); ``inf`` before the first run, and
        for a model whose outputs' size its inputs' shapes do not fix (a ``Tile`` whose
        repeats are an input: 16 KiB of output from a run here, 1 GiB from the next one of
        the same input bytes, which ran directly and then could not be answered in one
        frame). A 1-row run of a model says little about a 200,000-row one, which must not
        run on the loop. The fastest, not the latest: a run's wall time only grows when the
        process loses its core mid-run (a loaded machine), and one such run sent every
        next run of a 0.2 ms model through a worker thread (two more wake-ups each)."""
        if not self.recent_runs or not self.sized_by_inputs:
            return math.inf
        return min(
            seconds * max(1.0, input_bytes / max(1, size)) for seconds, size in self.recent_runs
        )

    def ran(self, elapsed: float, input_bytes: int) -> None:
        self.recent_runs.append((elapsed, input_bytes))

    row_speed: RowSpeed = field(default_factory=lambda: RowSpeed())
    """Seconds per row of runs alone and of batched runs (whether batching pays here)."""


def input_bytes(feeds: Mapping[str, np.ndarray]) -> int:
    """Bytes of a run's inputs (what its time is scaled by)."""
    return sum(int(getattr(array, "nbytes", 0)) for array in feeds.values())


class Executor:
    """Loads and runs models for assigned tasks, ``slots`` at a time."""

    def __init__(
        self,
        slots: int,
        *,
        backend: str = "auto",
        device: str | None = None,
        cache_size: int = 8,
        batching_for: Callable[[str], Batching | None] | None = None,
    ) -> None:
        self.slots = slots
        self.batching_for = batching_for or (lambda digest: None)
        """Model digest -> its batching settings from the catalog (None: the default
        for a graph with a free batch dimension)."""
        self.limiter = trio.CapacityLimiter(slots)
        self.backend = backend
        self.device = device
        if is_synthetic(device):
            service_seconds(device)  # a malformed one fails at start
        self.cache_size = cache_size
        self._sessions: OrderedDict[str, _CachedSession] = OrderedDict()
        self._loading: dict[str, trio.Event] = {}
        self.active = 0
        self.busy_seconds = 0.0
        """Thread time spent running models (for the utilisation in the load vector)."""
        self.inline_runs = 0
        """Runs done on the loop rather than in a worker thread (module doc)."""
        self.fallback_models: dict[str, str] = {}
        """Model digest -> why it runs on onnxruntime although OpenCL was asked for."""
        self.batch_counts = BatchCounts()
        self._queues: dict[tuple[str, Signature], BatchQueue] = {}
        self._unbatched: set[str] = set()
        """Models whose outputs turned out not to be batch-major: they run alone."""

    @property
    def capacity(self) -> int:
        """Tasks this node accepts at once: running ones plus the prefetch queue."""
        return self.slots * (1 + PREFETCH_PER_SLOT)

    @property
    def free_slots(self) -> int:
        return max(0, self.slots - self.active)

    def expected_run_s(self, digest: str, feeds: Mapping[str, np.ndarray]) -> float | None:
        """How long a run of model ``digest`` on ``feeds`` is expected to take here (the
        fastest recent run, scaled by input bytes; ``inf`` when the model's outputs are
        not sized by its inputs' shapes); None when its session is not loaded or has not
        run yet."""
        cached = self._sessions.get(digest)
        if cached is None or not cached.recent_runs:
            return None
        return cached.expected_s(input_bytes(feeds))

    def has_session(self, digest: str) -> bool:
        """Model ``digest`` is loaded here (its session cached): warm, ready to run."""
        return digest in self._sessions

    def drop_session(self, digest: str) -> None:
        """Let model ``digest``'s session go (a run holding it finishes with it); the next
        run loads it again."""
        self._sessions.pop(digest, None)

    async def session(self, digest: str, model_path: Path) -> _CachedSession:
        """The cached session of model ``digest``, loading it (in a thread) if needed."""
        while digest not in self._sessions:
            loading = self._loading.get(digest)
            if loading is not None:
                await loading.wait()
                continue
            self._loading[digest] = event = trio.Event()
            try:
                session, batch_axis = await trio.to_thread.run_sync(self._load, model_path)
                lock = None if session.backend in _THREAD_SAFE else threading.Lock()
                proto = getattr(getattr(session, "model", None), "proto", None)
                self._sessions[digest] = _CachedSession(
                    session,
                    lock,
                    batch_axis=batch_axis,
                    sized_by_inputs=proto is None or outputs_sized_by_inputs(proto),
                )
                self._note_fallback(digest, session)
                while len(self._sessions) > self.cache_size:
                    self._sessions.popitem(last=False)
            finally:
                del self._loading[digest]
                event.set()
        self._sessions.move_to_end(digest)
        return self._sessions[digest]

    def _load(self, model_path: Path) -> tuple[Any, bool]:
        """The session, and whether its graph declares a free batch dimension."""
        if is_synthetic(self.device):
            return SyntheticSession(self.device, model_path), False
        from meshgpu import inference

        session = inference.load(
            model_path,
            backend=self.backend,  # type: ignore[arg-type]
            device=self.device,
            allow_fallback=True,  # a device problem is this node's, not the task's
        )
        model = getattr(session, "model", None)
        proto = getattr(model, "proto", None)
        return session, proto is not None and batch_dimension(proto)

    def batching_of(
        self, digest: str, cached: _CachedSession, members: Sequence[Mapping[str, Any]]
    ) -> Batching | None:
        """The batching settings ``members`` (one run's feeds each) may run under, or None
        when they run alone: the graph has no free batch dimension, the model turned out
        not batch-major, batching is off for it (``max_batch`` 1), or a member's feeds
        disagree on their rows, exceed ``max_batch`` or differ from the others'."""
        if not cached.batch_axis or digest in self._unbatched or not members:
            return None
        batching = self.batching_for(digest) or DEFAULT_BATCHING
        if batching.max_batch < 2 or not cached.row_speed.may_batch():
            return None
        for feeds in members:
            rows = rows_of(feeds)
            if rows is None or rows > batching.max_batch:
                return None
        if len(members) > 1:
            first = signature(members[0])
            if any(signature(feeds) != first for feeds in members[1:]):
                return None
        return batching

    def _note_fallback(self, digest: str, session: Any) -> None:
        """Record (and log once) a model that runs on onnxruntime although this node was
        asked for OpenCL (``auto`` or ``opencl``): at load, or after a run switched it."""
        if (
            self.backend == "onnxruntime"
            or getattr(session, "backend", None) != "onnxruntime"
            or digest in self.fallback_models
        ):
            return
        reason = str(getattr(session, "backend_reason", ""))
        self.fallback_models[digest] = reason
        logger.warning("model %s runs on onnxruntime on this node: %s", digest[:12], reason)

    async def run(
        self,
        digest: str,
        model_path: Path,
        feeds: Mapping[str, np.ndarray],
        on_slot: Callable[[], None] | None = None,
    ) -> tuple[dict[str, np.ndarray], float]:
        """Run the model on ``feeds`` in a worker thread (on the loop if the run is
        expected to take under ``INLINE_RUN_S``), batched with other runs of the model
        when it has a free batch dimension; returns (outputs, seconds: this run's share
        of its batch). ``on_slot`` is called once the run is on the device (until then,
        a prefetched task is only waiting, and cancelling it loses nothing)."""
        self.active += 1
        try:
            cached = await self.session(digest, model_path)
            batching = self.batching_of(digest, cached, [feeds])
            if batching is not None:
                (request,), run_s = await self._batched(digest, cached, batching, [feeds], on_slot)
                if request.error is not None:
                    raise request.error
                assert request.outputs is not None
                return request.outputs, run_s
            return await self._in_slot(
                digest,
                cached,
                lambda cached: self._run_blocking(cached, dict(feeds)),
                input_bytes(feeds),
                [rows_of(feeds) or 1],
                on_slot,
            )
        finally:
            self.active -= 1

    async def run_many(
        self,
        digest: str,
        model_path: Path,
        members: Sequence[Mapping[str, np.ndarray]],
        on_slot: Callable[[], None] | None = None,
    ) -> tuple[list[dict[str, np.ndarray] | str], float]:
        """Run the model once per member of a task group, one after the other in ONE
        thread hop (one slot), or in batches when the model has a free batch dimension;
        returns (per member: its outputs, or the reason of its permanent error; seconds
        for the whole group). A member's :class:`~meshgpu.errors.PermanentTaskError`
        fails that member alone; any other error is raised, so the whole group is
        retried (at-least-once execution). The inline rule of :meth:`run` applies to the
        whole group's expected time (the expected per-member time times the member
        count)."""
        self.active += 1
        try:
            cached = await self.session(digest, model_path)
            batching = self.batching_of(digest, cached, members)
            if batching is None:
                return await self._in_slot(
                    digest,
                    cached,
                    lambda cached: self._run_members(cached, members),
                    input_bytes(members[0]) if members else 0,
                    [rows_of(feeds) or 1 for feeds in members],
                    on_slot,
                )
            requests, run_s = await self._batched(digest, cached, batching, members, on_slot)
            outcomes: list[dict[str, np.ndarray] | str] = []
            for request in requests:
                if request.error is None:
                    assert request.outputs is not None
                    outcomes.append(request.outputs)
                elif isinstance(request.error, PermanentTaskError):
                    outcomes.append(f"{type(request.error).__name__}: {request.error}")
                else:
                    raise request.error
            return outcomes, run_s
        finally:
            self.active -= 1

    async def _in_slot(
        self,
        digest: str,
        cached: _CachedSession,
        work: Callable[[_CachedSession], tuple[_T, float]],
        member_bytes: int,
        member_rows: list[int],
        on_slot: Callable[[], None] | None,
    ) -> tuple[_T, float]:
        """Run ``work`` on the model's session in one slot: on the loop when it is alone
        on the node and expected to take under ``INLINE_RUN_S`` (one run of
        ``member_bytes`` per entry of ``member_rows``), else in a worker thread."""
        members = len(member_rows)
        async with self.limiter:
            if on_slot is not None:
                on_slot()
            expected = cached.expected_s(member_bytes) * members
            if self._may_run_inline(cached, expected):
                result, elapsed = work(cached)
                self.inline_runs += 1
            else:
                result, elapsed = await trio.to_thread.run_sync(work, cached)
        cached.ran(elapsed / max(1, members), member_bytes)
        if member_rows == [1]:
            cached.row_speed.alone(elapsed)
        self._note_fallback(digest, cached.session)
        self.busy_seconds += elapsed
        for rows in member_rows:
            self.batch_counts.count(digest, 1, rows)
        return result, elapsed

    def _may_run_inline(self, cached: _CachedSession, expected_s: float) -> bool:
        return self.active == 1 and cached.lock is None and expected_s < INLINE_RUN_S

    async def _batched(
        self,
        digest: str,
        cached: _CachedSession,
        batching: Batching,
        members: Sequence[Mapping[str, np.ndarray]],
        on_slot: Callable[[], None] | None,
    ) -> tuple[list[Request], float]:
        """Queue ``members`` (one run's feeds each) for batching and return once each is
        answered (outputs or error), with the seconds that are their share of the
        batches that ran them. Whoever gets a slot runs the oldest waiting runs of the
        queue (batching.py), its own or others'; a caller whose runs another batch took
        stops waiting for a slot (its wait is cancelled) and waits for their answers."""
        key = (digest, signature(members[0]))
        queue = self._queues.get(key)
        if queue is None or queue.batching != batching:
            queue = self._queues[key] = BatchQueue(batching)
        waiter = Waiter(on_slot)
        waiter.requests = [Request(feeds, rows_of(feeds) or 1, waiter) for feeds in members]
        waiter.open_requests = len(members)
        queue.add(waiter.requests)
        try:
            while not waiter.finished.is_set():
                if all(request.taken for request in waiter.requests):
                    await waiter.finished.wait()
                    break
                with trio.CancelScope() as slot_wait:
                    waiter.slot_wait = slot_wait
                    await self.limiter.acquire_on_behalf_of(waiter)
                waiter.slot_wait = None
                if slot_wait.cancelled_caught:
                    continue  # another batch took every run of this caller
                try:
                    if all(request.taken for request in waiter.requests):
                        continue
                    batch = await queue.gather()
                    if batch:
                        await self._run_batch(digest, cached, batch)
                finally:
                    self.limiter.release_on_behalf_of(waiter)
        finally:
            queue.remove_untaken(waiter.requests)
            if not queue.waiting and self._queues.get(key) is queue:
                # Forget an idle queue (clients may send any number of shapes); a caller
                # still holding it only answers its own runs from it.
                del self._queues[key]
        return waiter.requests, sum(request.run_s for request in waiter.requests)

    async def _run_batch(self, digest: str, cached: _CachedSession, batch: list[Request]) -> None:
        """Run one gathered batch (in a worker thread, or inline under the rule of
        :meth:`run` when it holds one small run) and answer each of its runs."""
        feeds_bytes = sum(input_bytes(request.feeds) for request in batch)
        expected = cached.expected_s(feeds_bytes)
        if len(batch) == 1 and self._may_run_inline(cached, expected):
            together, elapsed = self._run_batch_blocking(cached, digest, batch)
            self.inline_runs += 1
        else:
            # Shielded: these runs are on the device now (their callers were told), and
            # other callers wait for them; a cancelled caller's answer is just not read.
            with trio.CancelScope(shield=True):
                together, elapsed = await trio.to_thread.run_sync(
                    self._run_batch_blocking, cached, digest, batch
                )
        for request in batch:
            request.run_s = elapsed / len(batch)
            request.waiter.answered()
        self._note_fallback(digest, cached.session)
        self.busy_seconds += elapsed
        if together:
            cached.ran(elapsed, feeds_bytes)
            rows = sum(r.rows for r in batch)
            if len(batch) > 1:
                paid = cached.row_speed.pays
                cached.row_speed.batched(elapsed, rows)
                if cached.row_speed.pays is False and paid is not False:
                    logger.info(
                        "model %s: batches run slower per row than runs alone on this "
                        "device (%.2f against %.2f ms); it runs unbatched here, trying a "
                        "batch again every %d runs",
                        digest[:12],
                        cached.row_speed.batched_s * 1e3,
                        cached.row_speed.single_s * 1e3,
                        BATCH_REPROBE_RUNS,
                    )
            elif rows == 1:
                cached.row_speed.alone(elapsed)
            self.batch_counts.count(digest, len(batch), rows)
        else:
            self.batch_counts.batch_fallbacks += 1
            for request in batch:
                self.batch_counts.count(digest, 1, request.rows)

    def _run_batch_blocking(
        self, cached: _CachedSession, digest: str, batch: list[Request]
    ) -> tuple[bool, float]:
        """Run ``batch`` as one concatenated run; if that fails or its outputs are not
        batch-major, run each member alone so each gets its own outputs or error.
        Returns whether it ran as one run, and the seconds taken."""
        started = time.perf_counter()
        if len(batch) > 1:
            parts = None
            try:
                outputs, _ = self._run_blocking(
                    cached, concatenate([request.feeds for request in batch])
                )
                parts = split(outputs, [request.rows for request in batch])
                if parts is None:
                    self._unbatched.add(digest)
                    logger.warning(
                        "model %s: outputs of a batched run are not batch-major; "
                        "it runs unbatched on this node from now on",
                        digest[:12],
                    )
            except Exception:  # a bad member or a device error: each runs alone below
                parts = None
            if parts is not None:
                for request, part in zip(batch, parts, strict=True):
                    request.outputs = part
                return True, time.perf_counter() - started
        for request in batch:
            try:
                request.outputs = self._run_blocking(cached, dict(request.feeds))[0]
            except Exception as error:
                request.error = error
        return len(batch) == 1, time.perf_counter() - started

    def _run_members(
        self, cached: _CachedSession, members: Sequence[Mapping[str, np.ndarray]]
    ) -> tuple[list[dict[str, np.ndarray] | str], float]:
        started = time.perf_counter()
        outcomes: list[dict[str, np.ndarray] | str] = []
        for feeds in members:
            try:
                outcomes.append(self._run_blocking(cached, dict(feeds))[0])
            except PermanentTaskError as error:
                outcomes.append(f"{type(error).__name__}: {error}")
        return outcomes, time.perf_counter() - started

    def _run_blocking(
        self, cached: _CachedSession, feeds: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], float]:
        started = time.perf_counter()
        if cached.lock is None:
            outputs = cached.session.run(feeds)
        else:
            with cached.lock:
                outputs = cached.session.run(feeds)
        return dict(outputs), time.perf_counter() - started


def is_permanent(error: BaseException) -> bool:
    """True when retrying cannot help (the task fails at once, with the reason)."""
    return isinstance(error, PermanentTaskError)
