"""The state of one task: a join-semilattice, and its legal local transitions as data.

The lattice (design.md section 3) is

    PENDING < ASSIGNED(attempt, view, worker) < RETRYING(attempt) < ASSIGNED(attempt + 1) ...
            < FAILED(reason) < DONE

States are totally ordered by :attr:`TaskState.order_key`, so the join of two states is
simply the larger one: two leaders that assign the same task concurrently (a partition, a
rotation) end up agreeing on the one with the higher (attempt, view, worker) and a task can
never regress or vanish. ``RETRYING`` is the "attempt n failed transiently, waiting for
attempt n + 1" sub-state of ASSIGNED: it must sit above ASSIGNED(n) so the failure report
wins over the assignment it ends, and below ASSIGNED(n + 1) so the retry wins over it.

DONE is above FAILED: when a task both failed on one side of a partition (deadline, retries
exhausted) and succeeded on the other, the result exists, so the merge keeps it.

Every state carries an ``epoch`` that comes first in the order: the lattice is the
lexicographic product (epoch, state above). Epoch 0 is the only one a task normally sees.
The one transition out of DONE, ``LOSE_RESULT``, moves DONE(epoch e) to RETRYING(epoch
e + 1): the leader makes it when the result of an undelivered DONE task is on no live
node (every result holder died) while a holder of the inputs lives, so the task runs again
instead of leaving its client waiting on a result nobody can serve. It is still a move up
(the epoch grew), so replicas converge exactly as before: any state of epoch e + 1 beats
every state of epoch e, and within an epoch the join is unchanged. Delivery
is once per task id regardless (``table.py``'s ``delivered`` mark), so a client told
"failed" is not told again.

Local transitions (the ones a node makes itself, as opposed to merges) must appear in
:data:`TRANSITIONS` and must strictly increase the order key; anything else raises
:class:`~meshgpu.errors.TaskError`, a bug in the caller (as h11's ``_state.py`` does).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias

from meshgpu.core.types import NodeId
from meshgpu.errors import TaskError


class Phase(enum.Enum):
    """Coarse state of a task."""

    PENDING = "pending"
    ASSIGNED = "assigned"
    RETRYING = "retrying"
    FAILED = "failed"
    DONE = "done"

    @property
    def terminal(self) -> bool:
        """DONE and FAILED take no further local transition."""
        return self in (Phase.DONE, Phase.FAILED)


TASK_STATES: tuple[str, ...] = tuple(phase.value for phase in Phase)
"""The phases by name, as status output, ``meshgpu tasks --state`` and ``/mesh/tasks``
spell them."""


class Resolution(enum.Enum):
    """What a client is told about a task it asked after (``TaskResolved.state``): its
    terminal phase, or that its outcome was already delivered and collected."""

    DONE = "done"
    FAILED = "failed"
    COLLECTED = "collected"


class Cause(enum.Enum):
    """Why a node moves a task's state itself."""

    ASSIGN = "assign"  # the leader gives the task (again) to a worker
    COMPLETE = "complete"  # the worker ran it and stored the result on the holders
    RETRY = "retry"  # the attempt failed transiently; another attempt will follow
    FAIL = "fail"  # a permanent error, or transient failures exhausted the retry policy
    EXPIRE = "expire"  # the task's deadline passed before it finished
    LOSE_RESULT = "lose_result"  # DONE, undelivered, and every result holder is dead
    HAND_BACK = "hand_back"  # the worker leaves gracefully and gives the attempt back
    STEAL = "steal"  # the worker hands an attempt it has not started to an idle thief
    WAIT_FOR_INPUTS = "wait_for_inputs"  # no holder served the inputs: the attempt never ran


TRANSITIONS: dict[tuple[Phase, Cause], Phase] = {
    (Phase.PENDING, Cause.ASSIGN): Phase.ASSIGNED,
    (Phase.ASSIGNED, Cause.ASSIGN): Phase.ASSIGNED,  # reassignment: worker dead or timed out
    (Phase.RETRYING, Cause.ASSIGN): Phase.ASSIGNED,
    (Phase.ASSIGNED, Cause.COMPLETE): Phase.DONE,
    (Phase.RETRYING, Cause.COMPLETE): Phase.DONE,  # a superseded attempt still finished
    (Phase.ASSIGNED, Cause.RETRY): Phase.RETRYING,
    (Phase.ASSIGNED, Cause.HAND_BACK): Phase.RETRYING,  # no failure counted
    (Phase.ASSIGNED, Cause.WAIT_FOR_INPUTS): Phase.RETRYING,  # no failure counted
    (Phase.ASSIGNED, Cause.STEAL): Phase.ASSIGNED,  # made by the worker itself, unstarted
    (Phase.PENDING, Cause.FAIL): Phase.FAILED,  # e.g. no worker can ever meet the spec
    (Phase.ASSIGNED, Cause.FAIL): Phase.FAILED,
    (Phase.RETRYING, Cause.FAIL): Phase.FAILED,
    (Phase.PENDING, Cause.EXPIRE): Phase.FAILED,
    (Phase.ASSIGNED, Cause.EXPIRE): Phase.FAILED,
    (Phase.RETRYING, Cause.EXPIRE): Phase.FAILED,
    (Phase.DONE, Cause.LOSE_RESULT): Phase.RETRYING,  # into the next epoch
}
"""Every legal local transition: ``(from phase, cause) -> to phase``. FAILED has none, DONE
only ``LOSE_RESULT`` (which opens a new epoch); only a merge can lift FAILED to DONE."""

_RANK: dict[Phase, tuple[int, int]] = {
    Phase.PENDING: (0, 0),
    Phase.ASSIGNED: (1, 0),
    Phase.RETRYING: (1, 1),
    Phase.FAILED: (2, 0),
    Phase.DONE: (3, 0),
}

OrderKey: TypeAlias = tuple[int, int, int, int, int, tuple[bool, str], int, str]


@dataclass(frozen=True, slots=True)
class TaskState:
    """One point of the lattice.

    ``attempt`` counts assignments (1 for the first); ``failures`` counts attempts that
    failed transiently (what the retry policy's ``max_attempts`` limits); ``view`` is the
    leader's view when it assigned; ``worker`` the node assigned (or that finished it);
    ``reason`` says why a task is RETRYING or FAILED; ``epoch`` counts results lost
    after DONE (each one re-runs the task, see the module docstring).
    """

    phase: Phase = Phase.PENDING
    attempt: int = 0
    view: int = 0
    worker: NodeId | None = None
    failures: int = 0
    reason: str = ""
    epoch: int = 0

    @property
    def order_key(self) -> OrderKey:
        """Total order of the lattice; the join keeps the state with the larger key.

        Every field takes part (after the phase rank, attempt and sub-state that carry the
        meaning), so two different states never compare equal and the join is
        well-defined even for states no legal run would produce."""
        rank, sub = _RANK[self.phase]
        worker = (self.worker is not None, self.worker or "")
        return (self.epoch, rank, self.attempt, sub, self.view, worker, self.failures, self.reason)

    @property
    def terminal(self) -> bool:
        """DONE or FAILED."""
        return self.phase.terminal

    def __str__(self) -> str:
        if self.phase is Phase.PENDING:
            return "pending"
        text = f"{self.phase.value}(attempt {self.attempt}, view {self.view}, {self.worker})"
        return f"{text}: {self.reason}" if self.reason else text


PENDING = TaskState()


def join(a: TaskState, b: TaskState) -> TaskState:
    """The least upper bound of two states: the larger one (commutative, associative,
    idempotent because the order is total)."""
    return a if a.order_key >= b.order_key else b


def _checked(current: TaskState, cause: Cause, new: TaskState) -> TaskState:
    target = TRANSITIONS.get((current.phase, cause))
    if target is None or target is not new.phase:
        legal = sorted(k[1].value for k in TRANSITIONS if k[0] is current.phase)
        raise TaskError(
            f"illegal task transition {current.phase.value} --{cause.value}--> "
            f"{new.phase.value}: only {legal} "
            "are legal from there; this is a bug in the caller"
        )
    if new.order_key <= current.order_key:
        raise TaskError(
            f"task transition {current} -> {new} does not move up the lattice; "
            "this is a bug in the caller"
        )
    return new


def assign(current: TaskState, view: int, worker: NodeId) -> TaskState:
    """The leader of ``view`` gives the task to ``worker`` as the next attempt."""
    new = TaskState(
        Phase.ASSIGNED, current.attempt + 1, view, worker, current.failures, "", current.epoch
    )
    return _checked(current, Cause.ASSIGN, new)


def complete(current: TaskState, attempt: int, view: int, worker: NodeId) -> TaskState:
    """``worker`` finished ``attempt`` and stored the result on the holders."""
    new = TaskState(Phase.DONE, attempt, view, worker, current.failures, "", current.epoch)
    return _checked(current, Cause.COMPLETE, new)


def retry(current: TaskState, reason: str) -> TaskState:
    """The current attempt failed transiently; one more failure is counted."""
    new = TaskState(
        Phase.RETRYING,
        current.attempt,
        current.view,
        current.worker,
        current.failures + 1,
        reason,
        current.epoch,
    )
    return _checked(current, Cause.RETRY, new)


HANDED_BACK = "handed back"
"""Prefix of the reason of a RETRYING state made by :func:`hand_back` (a graceful leave, not
a failure: breakers and the adaptive model do not count it, the leader does not wait a
back-off)."""


def hand_back(current: TaskState, reason: str = "") -> TaskState:
    """The worker gives the current attempt back because it leaves the mesh gracefully. The
    task waits for its next attempt like a retry, but nothing failed: its retry budget is
    untouched (``failures`` stays)."""
    text = f"{HANDED_BACK} by {current.worker}" + (f": {reason}" if reason else "")
    return _uncounted_retry(current, Cause.HAND_BACK, text)


def _uncounted_retry(current: TaskState, cause: Cause, reason: str) -> TaskState:
    """ASSIGNED(n) -> RETRYING(n) for ``cause`` with ``failures`` unchanged: the attempt
    ends without a failure of the task (``hand_back``, ``wait_for_inputs``)."""
    new = TaskState(
        Phase.RETRYING,
        current.attempt,
        current.view,
        current.worker,
        current.failures,
        reason,
        current.epoch,
    )
    return _checked(current, cause, new)


def is_hand_back(state: TaskState) -> bool:
    """Whether ``state`` is a RETRYING made by :func:`hand_back`."""
    return state.phase is Phase.RETRYING and state.reason.startswith(HANDED_BACK)


WAITING_FOR_INPUTS = "waiting for inputs"
"""Prefix of the reason of a RETRYING state made by :func:`wait_for_inputs` (the attempt
never ran: not a failure of the task or of its worker)."""


def wait_for_inputs(current: TaskState, reason: str) -> TaskState:
    """No holder served the current attempt's inputs, so it never ran: the task waits for
    a holder to serve them again, its retry budget untouched (``failures`` stays). A
    holder that is restarting, paused or cut off for a moment is no fault of the task;
    how long it may wait is the leader's to bound (``leading.py``, ``input_wait_s``)."""
    text = f"{WAITING_FOR_INPUTS}: {reason}" if reason else WAITING_FOR_INPUTS
    return _uncounted_retry(current, Cause.WAIT_FOR_INPUTS, text)


def is_input_wait(state: TaskState) -> bool:
    """Whether ``state`` is a RETRYING made by :func:`wait_for_inputs`."""
    return state.phase is Phase.RETRYING and state.reason.startswith(WAITING_FOR_INPUTS)


STOLEN_FROM = "stolen from"
"""Prefix of the reason of an ASSIGNED state made by :func:`steal` (not a failure of the
worker it left: breakers and the adaptive model do not count it)."""


def steal(current: TaskState, view: int, thief: NodeId) -> TaskState:
    """The worker of ``current`` hands the attempt, which it has not started, to ``thief``
    as the next attempt (work stealing, ``stealing.py``). Only that worker makes this
    transition: it alone knows whether the attempt is on its device yet."""
    new = TaskState(
        Phase.ASSIGNED,
        current.attempt + 1,
        view,
        thief,
        current.failures,
        f"{STOLEN_FROM} {current.worker}",
        current.epoch,
    )
    return _checked(current, Cause.STEAL, new)


def is_steal(state: TaskState) -> bool:
    """Whether ``state`` is an ASSIGNED made by :func:`steal`."""
    return state.phase is Phase.ASSIGNED and state.reason.startswith(STOLEN_FROM)


def fail(current: TaskState, reason: str, *, count_failure: bool = True) -> TaskState:
    """The task fails for good with ``reason`` (permanent error, or retries exhausted)."""
    failures = current.failures + (1 if count_failure and current.attempt else 0)
    new = TaskState(
        Phase.FAILED, current.attempt, current.view, current.worker, failures, reason, current.epoch
    )
    return _checked(current, Cause.FAIL, new)


def expire(current: TaskState, reason: str = "deadline exceeded") -> TaskState:
    """The task's deadline passed before it finished."""
    new = TaskState(
        Phase.FAILED,
        current.attempt,
        current.view,
        current.worker,
        current.failures,
        reason,
        current.epoch,
    )
    return _checked(current, Cause.EXPIRE, new)


def lose_result(current: TaskState, reason: str) -> TaskState:
    """Every holder of a DONE task's undelivered result is dead: run it again, in the next
    epoch. The failure is not the task's, so its retry budget is untouched."""
    new = TaskState(
        Phase.RETRYING,
        current.attempt,
        current.view,
        current.worker,
        current.failures,
        reason,
        current.epoch + 1,
    )
    return _checked(current, Cause.LOSE_RESULT, new)
