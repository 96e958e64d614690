"""Events: what a driver feeds into :meth:`meshgpu.core.node.Node.handle`.

The core is sans-IO (as in h11): a driver (the trio daemon or the simulator) turns the
outside world into these frozen dataclasses and calls ``effects = node.handle(event, now)``.
``now`` is seconds on the driver's monotonic clock; the core never reads a clock itself.

Contract for drivers:

* Call ``node.handle(Tick(), now)`` whenever ``now >= node.next_deadline()``.
* Feed every received datagram as :class:`DatagramReceived`, even garbage: the core
  decodes, rejects and counts; it never raises on bad bytes.
* Execute the returned effects *in order* (a ``Persist`` before the ``SendDatagram`` that
  acknowledges it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from meshgpu.core.fast_construct import fast_constructor
from meshgpu.core.types import Address, NodeId

if TYPE_CHECKING:
    from meshgpu.core.catalog import Batching, CatalogUpdate
    from meshgpu.core.load import LoadVector
    from meshgpu.core.messages import Envelope
    from meshgpu.core.tasks.records import TaskRecord
    from meshgpu.core.tasks.spec import TaskId, TaskSpec


@dataclass(frozen=True, slots=True)
class Tick:
    """A timer the node asked for (via ``next_deadline``) has come due."""


@dataclass(frozen=True, slots=True)
class DatagramReceived:
    """Raw bytes arrived on the gossip socket from ``source``."""

    source: Address
    payload: bytes
    decoded: Envelope | None = field(default=None, compare=False, repr=False)
    """The sender's ``SendDatagram.decoded``, which equals ``decode(payload)``: a driver
    that runs the sending node too (the simulator) may pass it, and the node takes it
    instead of decoding the payload. A network driver leaves it None."""


new_datagram_received = fast_constructor(DatagramReceived)
"""``DatagramReceived(source, payload, decoded)``, fast: a driver makes one per datagram."""


@dataclass(frozen=True, slots=True)
class PeerDiscovered:
    """mDNS or a static ``--peer`` seed says a meshgpu node may be listening at ``address``."""

    address: Address
    node_id: NodeId | None = None


@dataclass(frozen=True, slots=True)
class LeaveRequested:
    """The operator asked this node to leave the mesh gracefully."""


@dataclass(frozen=True, slots=True)
class LoadChanged:
    """This node's load changed; the core stamps the next version and gossips it
    (``load.version`` as given is ignored: versions are the node's own counter)."""

    load: LoadVector


# --- Task queue events (meshgpu.core.tasks; docs/task-queue.md) --------------------------
# The core moves only task metadata; the driver moves tensors, models and results over its
# own TCP data plane (design.md "Data plane") and reports back with these events.

TaskOutcome = Literal[
    "ok", "transient_error", "permanent_error", "handed_back", "inputs_unavailable"
]
"""How an attempt ended, as the worker's driver saw it: ``ok`` (result stored on at least
one holder), ``transient_error`` (device error, out of memory: retried elsewhere),
``permanent_error`` (bad model, bad input shape: failed at once, no retry),
``handed_back`` (the node is leaving gracefully and gave the attempt up: assigned again
elsewhere without counting against the task's retry limit) or ``inputs_unavailable``
(no holder served the inputs, so the attempt never ran: the task waits for a holder,
without counting against its retry limit, up to ``TaskConfig.input_wait_s``;
docs/task-queue.md, "Waiting for the inputs")."""


@dataclass(frozen=True, slots=True)
class SubmitTask:
    """A client submitted ``spec`` to this node (which becomes the task's origin).

    Precondition: the driver has already stored the inputs locally, content-addressed by
    ``spec.input_digest`` (the origin is the first holder). ``client_ref`` is the driver's
    own correlation key; it comes back in ``TaskAccepted`` / ``TaskRejected``.
    ``copies_at``: other nodes the driver already gave a checked, durable copy of the
    inputs (a large upload relayed as it arrived, docs/daemon.md "Relayed uploads"):
    asked first to hold the task, so the replication finds the copies where they are.
    """

    client_ref: str
    spec: TaskSpec
    copies_at: tuple[NodeId, ...] = ()


@dataclass(frozen=True, slots=True)
class PayloadStored:
    """After a ``FetchPayload``: the inputs of ``task_id`` are now stored (and fsynced) here."""

    task_id: TaskId


@dataclass(frozen=True, slots=True)
class PayloadFetchFailed:
    """After a ``FetchPayload``: no listed node could supply the inputs; this node will not
    hold the task (the origin picks another holder or acknowledges with fewer copies)."""

    task_id: TaskId
    reason: str


@dataclass(frozen=True, slots=True)
class TaskFinished:
    """After a ``RunTask`` on the worker: the attempt ended.

    For ``ok`` the driver has already pushed the result to the nodes in ``result_holders``
    (those that confirmed storing it). ``run_s`` is the measured execution time, used for
    the worker's published latency estimate. ``result_attempt``: the attempt whose result
    ``result_holders`` keep when it is not ``attempt`` (they refused this attempt's
    result for a newer attempt's, which the worker adopts: the task's DONE names that
    attempt, so a reader is never sent to holders of none); None for ``attempt``'s.
    """

    task_id: TaskId
    attempt: int
    outcome: TaskOutcome
    reason: str = ""
    result_holders: tuple[NodeId, ...] = ()
    run_s: float = 0.0
    result_attempt: int | None = None


@dataclass(frozen=True, slots=True)
class TaskStarted:
    """After a ``RunTask`` on the worker: ``attempt`` is on the device now (it took a
    device slot; before, a prefetched attempt only waited and could be given up at no
    cost). With work stealing on, the core marks the attempt started in the table: from
    then on no idle worker takes it over (docs/task-queue.md, "Work stealing"). Fed once
    per attempt; ignored with stealing off."""

    task_id: TaskId
    attempt: int


@dataclass(frozen=True, slots=True)
class ResultRequested:
    """A client (typically one whose entry node died) asks this node for ``task_id``'s
    outcome; answered with ``TaskResolved`` once the task is terminal and undelivered."""

    task_id: TaskId


@dataclass(frozen=True, slots=True)
class ResultCollected:
    """The client confirmed it received ``task_id``'s outcome: mark it delivered, mesh-wide."""

    task_id: TaskId


@dataclass(frozen=True, slots=True)
class JournalReplayed:
    """At start-up, before any other task event: the records this node's journal holds
    (every ``Persist`` it executed before it stopped, oldest first)."""

    records: tuple[TaskRecord, ...]


@dataclass(frozen=True, slots=True)
class CatalogChange:
    """Set model ``name`` of the catalog to ``digest`` (sha256 of its ONNX bytes), or
    remove it (``digest`` None); replicated to every node (catalog.py). ``batching``: the
    model's dynamic batching settings (None: the workers' default for its graph)."""

    name: str
    digest: str | None
    batching: Batching | None = None


@dataclass(frozen=True, slots=True)
class CatalogRestored:
    """The catalog updates this node held when it last stopped (read back from its data
    dir by the driver at start): kept like updates gossiped by a peer, so the last writer
    still wins against whatever the mesh holds now."""

    updates: tuple[CatalogUpdate, ...]


Event = (
    Tick
    | DatagramReceived
    | PeerDiscovered
    | LeaveRequested
    | LoadChanged
    | SubmitTask
    | PayloadStored
    | PayloadFetchFailed
    | TaskFinished
    | TaskStarted
    | ResultRequested
    | ResultCollected
    | JournalReplayed
    | CatalogChange
    | CatalogRestored
)
"""Every event a driver may feed to :meth:`meshgpu.core.node.Node.handle`: a closed union,
so a driver that ``match``-es on it with ``assert_never`` is checked by mypy for
exhaustiveness."""

TaskEvent = (
    SubmitTask
    | PayloadStored
    | PayloadFetchFailed
    | TaskFinished
    | TaskStarted
    | ResultRequested
    | ResultCollected
    | JournalReplayed
)
"""The events of the task queue (handled by :class:`meshgpu.core.tasks.TaskComponent`)."""
