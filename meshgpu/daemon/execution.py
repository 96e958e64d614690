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
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import trio

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

INLINE_RUN_S = 0.001
"""A session whose last run took less than this runs its next one on the loop."""

_T = TypeVar("_T")

_THREAD_SAFE = frozenset({"onnxruntime", "synthetic"})
"""Backends whose sessions may run from several threads at once (no per-session lock)."""


@dataclass
class _CachedSession:
    session: Any
    lock: threading.Lock | None
    last_run_s: float = math.inf
    """How long the latest run took (decides whether the next one may run inline)."""
    last_input_bytes: int = 0
    """The input bytes of that run: a run on more bytes is expected to take longer."""

    def expected_s(self, input_bytes: int) -> float:
        """The latest run's time scaled up to ``input_bytes`` (never down: a small input
        still pays the run's fixed cost); ``inf`` before the first run. A 1-row run of a
        model says little about a 200,000-row one, which must not run on the loop."""
        if self.last_run_s == math.inf:
            return math.inf
        return self.last_run_s * max(1.0, input_bytes / max(1, self.last_input_bytes))

    def ran(self, elapsed: float, input_bytes: int) -> None:
        self.last_run_s, self.last_input_bytes = elapsed, input_bytes


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
    ) -> None:
        self.slots = slots
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

    @property
    def capacity(self) -> int:
        """Tasks this node accepts at once: running ones plus the prefetch queue."""
        return self.slots * (1 + PREFETCH_PER_SLOT)

    @property
    def free_slots(self) -> int:
        return max(0, self.slots - self.active)

    def expected_run_s(self, digest: str, feeds: Mapping[str, np.ndarray]) -> float | None:
        """How long a run of model ``digest`` on ``feeds`` is expected to take here (the
        latest run, scaled by input bytes); None when its session is not loaded or has
        not run yet."""
        cached = self._sessions.get(digest)
        if cached is None or cached.last_run_s == math.inf:
            return None
        return cached.expected_s(input_bytes(feeds))

    async def session(self, digest: str, model_path: Path) -> _CachedSession:
        """The cached session of model ``digest``, loading it (in a thread) if needed."""
        while digest not in self._sessions:
            loading = self._loading.get(digest)
            if loading is not None:
                await loading.wait()
                continue
            self._loading[digest] = event = trio.Event()
            try:
                session = await trio.to_thread.run_sync(self._load, model_path)
                lock = None if session.backend in _THREAD_SAFE else threading.Lock()
                self._sessions[digest] = _CachedSession(session, lock)
                self._note_fallback(digest, session)
                while len(self._sessions) > self.cache_size:
                    self._sessions.popitem(last=False)
            finally:
                del self._loading[digest]
                event.set()
        self._sessions.move_to_end(digest)
        return self._sessions[digest]

    def _load(self, model_path: Path) -> Any:
        if is_synthetic(self.device):
            return SyntheticSession(self.device, model_path)
        from meshgpu import inference

        return inference.load(
            model_path,
            backend=self.backend,  # type: ignore[arg-type]
            device=self.device,
            allow_fallback=True,  # a device problem is this node's, not the task's
        )

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
        expected to take under ``INLINE_RUN_S``); returns (outputs, seconds).
        ``on_slot`` is called once a slot is taken (until then, a prefetched task is
        only waiting, and cancelling it loses nothing)."""
        return await self._in_slot(
            digest,
            model_path,
            lambda cached: self._run_blocking(cached, dict(feeds)),
            input_bytes(feeds),
            1,
            on_slot,
        )

    async def run_many(
        self,
        digest: str,
        model_path: Path,
        members: Sequence[Mapping[str, np.ndarray]],
        on_slot: Callable[[], None] | None = None,
    ) -> tuple[list[dict[str, np.ndarray] | str], float]:
        """Run the model once per member of a task group, one after the other in ONE
        thread hop (one slot); returns (per member: its outputs, or the reason of its
        permanent error; seconds for the whole group). A member's
        :class:`~meshgpu.errors.PermanentTaskError` fails that member alone; any other
        error is raised, so the whole group is retried (at-least-once execution). The
        inline rule of :meth:`run` applies to the whole group's expected time (the
        expected per-member time times the member count)."""
        return await self._in_slot(
            digest,
            model_path,
            lambda cached: self._run_members(cached, members),
            input_bytes(members[0]) if members else 0,
            len(members),
            on_slot,
        )

    async def _in_slot(
        self,
        digest: str,
        model_path: Path,
        work: Callable[[_CachedSession], tuple[_T, float]],
        member_bytes: int,
        members: int,
        on_slot: Callable[[], None] | None,
    ) -> tuple[_T, float]:
        """Run ``work`` on the model's session in one slot: on the loop when it is alone
        on the node and expected to take under ``INLINE_RUN_S`` (``members`` runs of
        ``member_bytes`` each), else in a worker thread."""
        self.active += 1
        try:
            cached = await self.session(digest, model_path)
            async with self.limiter:
                if on_slot is not None:
                    on_slot()
                expected = cached.expected_s(member_bytes) * members
                if self.active == 1 and cached.lock is None and expected < INLINE_RUN_S:
                    result, elapsed = work(cached)
                    self.inline_runs += 1
                else:
                    result, elapsed = await trio.to_thread.run_sync(work, cached)
            cached.ran(elapsed / max(1, members), member_bytes)
            self._note_fallback(digest, cached.session)
            self.busy_seconds += elapsed
            return result, elapsed
        finally:
            self.active -= 1

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
