"""Effects: what :meth:`meshgpu.core.node.Node.handle` asks its driver to do.

Effects are frozen dataclasses, executed by the driver in the order returned.
Notifications (``MemberChanged``, ``LeaderChanged``) change nothing in the world; drivers
log them, the simulator's invariant checkers read them, ``meshgpu status`` shows them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from meshgpu.core.fast_construct import fast_constructor
from meshgpu.core.types import Address, NodeId

if TYPE_CHECKING:
    from meshgpu.core.membership import MemberState
    from meshgpu.core.messages import Envelope
    from meshgpu.core.tasks.records import TaskRecord
    from meshgpu.core.tasks.spec import TaskId, TaskSpec
    from meshgpu.core.tasks.state import Resolution


@dataclass(frozen=True, slots=True)
class SendDatagram:
    """Send ``payload`` (an encoded message, already under the MTU) to ``destination``."""

    destination: Address
    payload: bytes
    decoded: Envelope | None = field(default=None, compare=False, repr=False)
    """``decode(payload)``, when the sending node keeps it (``NodeContext.keep_decoded``:
    the simulator, whose nodes share one process). A driver that delivers the datagram
    to a node of its own passes it on in ``DatagramReceived``, and the receiver skips
    decoding. Not part of the datagram: equality and repr ignore it."""


new_send_datagram = fast_constructor(SendDatagram)
"""``SendDatagram(destination, payload, decoded)``, fast: one per datagram sent."""


@dataclass(frozen=True, slots=True)
class MemberChanged:
    """This node's view of ``node_id`` changed state (alive, suspect, dead, left). The state
    crosses as the enum; drivers turn it into text only for logs, status and traces."""

    node_id: NodeId
    address: Address
    state: MemberState
    incarnation: int
    reason: str


new_member_changed = fast_constructor(MemberChanged)
"""``MemberChanged(...)``, fast: a forming mesh of n nodes makes n squared of them."""


@dataclass(frozen=True, slots=True)
class LeaderChanged:
    """This node now believes ``leader`` leads ``view``."""

    view: int
    leader: NodeId | None


# --- Task queue effects (meshgpu.core.tasks; docs/task-queue.md) -------------------------


@dataclass(frozen=True, slots=True)
class Persist:
    """Append ``record`` to this node's task journal and fsync it *before* executing the
    next effect (the acknowledgement that follows depends on it being durable). On restart
    the driver feeds every record back in one ``JournalReplayed``. Records for the same task
    id supersede each other (they only grow); a record with ``entry=None`` is a tombstone."""

    record: TaskRecord


@dataclass(frozen=True, slots=True)
class FetchPayload:
    """Become a holder of ``task_id``: pull the inputs (content-addressed by
    ``input_digest``) from any of ``from_nodes`` over the data plane, store and fsync them,
    then feed ``PayloadStored`` (or ``PayloadFetchFailed``)."""

    task_id: TaskId
    input_digest: str
    from_nodes: tuple[NodeId, ...]


@dataclass(frozen=True, slots=True)
class RunTask:
    """Run attempt ``attempt`` of ``task_id`` here: fetch the inputs from any of ``holders``
    and the model by ``spec.model_digest`` from any peer, run it, push the result to the
    holders, then feed ``TaskFinished`` with the same ``attempt``."""

    task_id: TaskId
    attempt: int
    spec: TaskSpec
    holders: tuple[NodeId, ...]


@dataclass(frozen=True, slots=True)
class CancelTask:
    """Advisory: attempt ``attempt`` of ``task_id`` no longer matters (the task finished
    elsewhere, failed, or expired). The driver may stop it; a ``TaskFinished`` for it is
    still accepted and ignored."""

    task_id: TaskId
    attempt: int


@dataclass(frozen=True, slots=True)
class TaskAccepted:
    """Answer the client of ``client_ref``: the task is ``task_id``, held (inputs included,
    journaled) by ``copies`` nodes. ``copies < replicas`` means fewer live nodes than asked
    for existed when the replication timeout ran out."""

    client_ref: str
    task_id: TaskId
    copies: int
    replicas: int


@dataclass(frozen=True, slots=True)
class TaskRejected:
    """Answer the client of ``client_ref``: the submission was refused, with ``reason``."""

    client_ref: str
    reason: str


@dataclass(frozen=True, slots=True)
class TaskResolved:
    """``task_id`` reached ``state`` (``DONE`` or ``FAILED``, with ``reason``): tell the
    client, whose result can be fetched from any of ``result_holders``. Emitted once per
    task id by the node the client is attached to (the origin, or one asked by
    ``ResultRequested``); once the client confirms with ``ResultCollected`` no node emits
    it again. Answering a ``ResultRequested`` for a task already delivered and collected,
    ``state`` is ``COLLECTED`` (no result is kept any more)."""

    task_id: TaskId
    state: Resolution
    reason: str
    result_holders: tuple[NodeId, ...]


@dataclass(frozen=True, slots=True)
class DropPayload:
    """The task's outcome was delivered: this holder may delete its stored inputs
    (``input_digest``) and result for ``task_id``."""

    task_id: TaskId
    input_digest: str


Effect = (
    SendDatagram
    | MemberChanged
    | LeaderChanged
    | Persist
    | FetchPayload
    | RunTask
    | CancelTask
    | TaskAccepted
    | TaskRejected
    | TaskResolved
    | DropPayload
)
"""Every effect :meth:`meshgpu.core.node.Node.handle` may return: a closed union, so a
driver that ``match``-es on it with ``assert_never`` is checked by mypy for an effect
nobody handles."""
