"""Direct runs: a tiny task that reaches an idle node is run there at once, and the
answer to the ``submit`` is its result.

Why. On a warm loopback mesh the task table's bookkeeping for one task (journal it on
two holders with an fsync each, copy the inputs, the leader's assignment, the result
stored on the holders and reported back) cost 15-20 ms of submit-to-result for a model
that runs in 0.2 ms (docs/daemon.md, per-hop trace). When the node the client talks to
has a free slot, nothing of its own queued or running, and a run of the model on these
inputs is expected to take under ``DIRECT_RUN_S`` here (the fastest recent run here,
scaled by input bytes), that node is what any strategy would pick, and running the
task before the client is even acknowledged is both faster and no less safe:

* nothing accepted is at risk. A submission is *accepted* when the client gets its
  answer; here the answer is the result itself. If the node dies during the run, the
  client never got an answer and sends the submission again to the next peer (the
  client already does this for any ``submit`` cut off by a broken link), so the task
  runs again (at-least-once execution) and the caller still sees one result;
* nothing waits in the mesh: the task never enters the replicated table, so there is
  nothing to collect, hold or garbage-collect afterwards;
* a run that fails for a transient reason (a device error) is not retried here: the
  task is submitted to the table as if the direct path did not exist, and the mesh's
  retry rules take over. A permanent error (wrong input shape, a broken model) is the
  answer, as it would be from any worker.

What it is not: a way around the queue. No task of the table may be running, fetching
or waiting for a slot here, and none queued in the table; the run must be short
(``DIRECT_RUN_S``: a run expected to take longer goes through the table, where it is
acknowledged, replicated and visible in ``meshgpu tasks`` while it runs), the node must
meet the task's device requirements, and the session must already be loaded (a cold
model goes through the table; its first run there loads it). A model whose outputs'
size its inputs' shapes do not fix (a ``Tile`` whose repeats are an input) is never
expected to be short, so never run directly: such a run of a few input bytes produced a
1 GiB result here, which a submit's answer cannot carry, so the run was thrown away and
done again through the table (2-4 s and a GiB of memory on the entry node, on a loaded
2-core VM). A client that wants the
table's guarantees for every task (an acknowledgement with ``copies`` before the run,
the task visible mesh-wide) submits with ``direct=False``.

A few concurrent callers take direct runs too. Direct runs already under way here do not
close the path: a submission may wait for a slot behind them while at most
``DIRECT_WAITING_PER_SLOT`` per slot are admitted beyond the slots, and while its own
expected run plus the runs ahead of it (one expected run per ``slots`` of them, as if
none were batched together) stays under ``DIRECT_RUN_S``. Past that bound the submission
goes to the table (coalesced with its lane's other waiting submissions, coalescing.py).
Why: with one direct run at a time, eight callers of a tiny model on an idle node nearly
always find another caller's run on the executor, and each pays a table entry (about
23 ms of CPU across the mesh) for a run of a millisecond. Waiting runs of a model with a
free batch dimension run as one batch when the slot frees (batching.py), so a wait
behind them is usually one run, not several. Nothing of the guarantee changes: each
direct run is answered with its own outcome, or falls back to the table alone.

Rejected: choosing the worker at submit inside the core and still replicating (saves
only the leader's hop: the two fsyncs and the result's replication stay on the path);
answering direct runs before the run with a fake acknowledgement (the client would
hold an id the mesh has never heard of); direct runs without a bound on those waiting
(a burst of callers would queue here unacknowledged and unseen by the leader while other
nodes sit idle: past a few, the table spreads them); a bound on the count alone (eight
runs of a 10 ms model would wait up to 80 ms each).
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from meshgpu.core.load import DeviceCapabilities
from meshgpu.core.tasks import DeviceRequirements
from meshgpu.core.tasks.strategies import WorkerView, may_run_at_entry
from meshgpu.core.types import NodeId
from meshgpu.daemon.blobs import TensorBlob, tensor_nbytes
from meshgpu.daemon.execution import is_permanent
from meshgpu.daemon.payloads import encode_tensors

if TYPE_CHECKING:
    import numpy as np

    from meshgpu.daemon.api import Message
    from meshgpu.daemon.execution import Executor
    from meshgpu.daemon.modelstore import ModelStore

runs_logger = logging.getLogger("meshgpu.daemon.runs")
"""The run record (dataplane.py logs the table's runs to it; off unless turned on)."""

DIRECT_RUN_S = 0.02
"""A run expected to take longer than this (the model's fastest recent run here, scaled by
input bytes) is never run directly: the
table's bookkeeping (15-20 ms on loopback) is then a small part of the task's time, and a
longer unacknowledged run is a longer window in which the client has nothing."""

DIRECT_WAITING_PER_SLOT = 8
"""Direct runs admitted per slot beyond those running (module doc): a few concurrent
callers run directly, as many as one default batch (``batching.DEFAULT_BATCHING``)."""

HEADER_ALLOWANCE = 4096
"""More than a tensor's name, dtype and shape take in a payload (msgpack headers)."""

DIRECT_MARK = "/direct-"
"""What a direct run's id holds (``<node>/direct-<run token>-<n>``) and a table id
(``<node>/<sequence>``, digits only) never does."""


def is_direct_id(task_id: str) -> bool:
    """True for the id of a direct run (never in any task table)."""
    return DIRECT_MARK in task_id


class DirectRuns:
    """Decides whether a submission may run here at once, and runs it (invoked by the
    submissions, for each ``submit`` of one task).

    The wiring hands it the executor and the model store it runs with, and callables for
    what changes while the daemon runs: whether it leaves, whether the data plane has any
    attempt of the table here (``busy``), this node's devices as last measured, and the
    length of the core's queue."""

    def __init__(
        self,
        node_id: NodeId,
        executor: Executor,
        models: ModelStore,
        *,
        labels: tuple[tuple[str, str], ...],
        chunk: int,
        leaving: Callable[[], bool],
        busy: Callable[[], bool],
        capabilities: Callable[[], DeviceCapabilities],
        queue_length: Callable[[], int],
        count: Callable[[str], None],
    ) -> None:
        self.node_id = node_id
        self.executor = executor
        self.models = models
        self.labels = labels
        self.chunk = chunk
        self._leaving = leaving
        self._busy = busy
        self._capabilities = capabilities
        self._queue_length = queue_length
        self._count = count
        self._ids = itertools.count(1)
        self._run_token = secrets.token_hex(3)
        """Direct ids name the daemon's run: a restarted node (same node id) never hands
        out an id a client may still hold from before."""
        self.in_flight = 0
        """Direct runs admitted here and not yet answered (running or waiting for a slot)."""
        self.runs = 0
        self.fallbacks = 0
        """Direct runs that failed transiently and went to the table instead."""

    def allowed(
        self,
        request: Message,
        requirements: DeviceRequirements,
        tensors: dict[str, np.ndarray],
        deadline_s: float | None = None,
    ) -> bool:
        """True when the task of ``request`` may run here now (module doc: the rules);
        ``deadline_s``: its deadline, which the expected wait and run must meet (a direct
        run is never expired: a task that may not make its deadline goes to the table,
        whose leader fails it with the deadline named when it passes)."""
        if not request.get("direct", True) or self._leaving():
            return False
        executor = self.executor
        if self._busy() or executor.active > self.in_flight:
            return False  # a run of the table holds a slot here (or waits for one)
        slots = max(1, executor.slots)
        if self.in_flight >= slots * (1 + DIRECT_WAITING_PER_SLOT):
            return False
        expected = executor.expected_run_s(str(request.get("model_digest")), tensors)
        if expected is None:
            return False
        # Its own run after one run for every ``slots`` admitted before it.
        expected_wait_and_run = expected * (1 + self.in_flight // slots)
        if expected_wait_and_run > DIRECT_RUN_S:
            return False
        if deadline_s is not None and expected_wait_and_run > deadline_s:
            return False
        capabilities = self._capabilities()
        me = WorkerView(
            self.node_id,
            capacity=executor.slots,
            memory_total=capabilities.memory_total,
            device_types=capabilities.device_types,
            fp16=capabilities.fp16,
            labels=self.labels,
        )
        if not may_run_at_entry(me, requirements):
            return False
        return self._queue_length() == 0

    async def run(self, request: Message, tensors: dict[str, np.ndarray]) -> Message | None:
        """Run the task now; its outcome as a ``submit`` answer, or None when the run
        failed transiently and the caller should submit it to the table instead."""
        digest = str(request["model_digest"])
        self.in_flight += 1
        try:
            with self.models.pinned(digest) as model_path:
                outputs, _ = await self.executor.run(digest, model_path, tensors)
            # The exact size only near the limit: most answers are far below it, and
            # the blob's headers cost more than the run of a tiny model.
            near = tensor_nbytes(outputs) + HEADER_ALLOWANCE * len(outputs) > self.chunk
            if near and TensorBlob(outputs).size > self.chunk:
                # An answer is one frame: a result that needs ranges goes through the
                # table, where it is stored and fetched in ranges.
                self._count("direct_too_large")
                return None
            encoded = encode_tensors(outputs)
        except Exception as error:  # a failed run is an answer or a fallback, never raised
            if not is_permanent(error):
                self.fallbacks += 1
                self._count("direct_fallbacks")
                return None
            return self._answer("failed", None, f"{type(error).__name__}: {error}")
        finally:
            self.in_flight -= 1
        return self._answer("done", encoded, "")

    def _answer(self, state: str, outputs: Any, reason: str) -> Message:
        self.runs += 1
        self._count("direct_runs")
        node_id = self.node_id
        task_id = f"{node_id}{DIRECT_MARK}{self._run_token}-{next(self._ids)}"
        runs_logger.debug("run %s attempt %d", task_id, 0)
        return {
            "task_id": task_id,
            "direct": True,
            "state": state,
            "reason": reason,
            "worker": node_id,
            "outputs": outputs,
            "copies": 0,
            "replicas": 0,
        }
