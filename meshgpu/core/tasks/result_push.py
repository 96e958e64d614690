"""Where a worker stores the result of a run before it reports the attempt ``ok``
(docs/daemon.md, "Storing the result is part of finishing the task").

The daemon's data plane (daemon/results.py) moves the bytes; these functions decide,
round by round, which nodes to push to and when the result is kept well enough to stop.
A round pushes to its targets at once; while no node but the worker confirmed the
result, it then goes to further live members one at a time (any node may hold a result:
the core unions ``result_holders``). The worker keeps a copy of its own only while
fewer than ``RESULT_COPIES`` other live holders take one. Up to ``PUSH_ROUNDS`` rounds,
``retry_delay`` apart; a result no node took fails the attempt.

Execution is at-least-once: after a false suspicion two attempts of one task may run and
push at once, and a nondeterministic model gives them different bytes; and an attempt
whose result the holders installed may never be recorded ``done`` (the leader died with
the report), so the task runs again. A holder keeps one attempt's result per task, the
newest it was pushed (``takes_result``): an older attempt's push is refused, a newer
one's is installed over it, whole (an install is one rename). A reader names the attempt
the task's ``done`` names, and a holder serves that attempt's bytes or a newer one's
(``serves_result``): a newer attempt's copy is a whole result of the task too. Rejected:
the first installed attempt kept for good (an attempt whose report was lost left every
holder refusing every later attempt, and the task failed after its retries: the leader
killed mid-stream did it); a result kept per attempt (every attempt's copy on every
holder's disk, and a key that every reader, sweep and delete would have to enumerate).
A refused attempt adopts the newer result it was refused for (its report names that
attempt and the nodes keeping it), and a reader of several ranges pins the attempt the
first range names and starts again when a later one names another (docs/daemon.md,
"One attempt's result per holder").
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from meshgpu.core.types import NodeId

PUSH_ROUNDS = 3
"""Rounds of pushes a result gets before its task fails for want of a place to keep it."""
PUSH_RETRY_S = 1.0
"""Wait before the second round of pushes (twice that before the third)."""


def retry_delay(round_number: int) -> float:
    """Seconds to wait before round ``round_number`` (0 for the first)."""
    return PUSH_RETRY_S * round_number


RESULT_COPIES = 2
"""The copies of a result a worker makes before its attempt is ``ok`` when the nodes are
there: the worker's own copy counts, but it writes one only when fewer than this many
other live holders will take one."""


def keeps_own_copy(others: Collection[NodeId], holder: bool = False) -> bool:
    """Whether the worker writes its own copy of the result from the start: it is one of
    the task's holders (``holder``: with replicas=3 and the worker one of them, two other
    live holders would otherwise leave the result two copies of three), or fewer than
    ``RESULT_COPIES`` live holders other than itself (``others``) will take one. A
    worker that is no holder of a task with two live holders writing a third copy to the
    same disks made a 1 GiB result's storing take half as long again (docs/daemon.md,
    "Where a 1 GiB result's time goes"); if the holders then do not confirm,
    ``owes_own_copy`` has the worker write its copy after all."""
    return holder or len(others) < RESULT_COPIES


def owes_own_copy(stored: Collection[NodeId], me: NodeId) -> bool:
    """After a round without the worker's own copy: fewer than ``RESULT_COPIES`` other
    nodes confirmed, so the worker writes its copy too (the copies a result had before
    the worker skipped its own: the worker's and another's)."""
    return len(set(stored) - {me}) < RESULT_COPIES


def round_targets(
    named: Iterable[NodeId],
    current: Iterable[NodeId],
    me: NodeId,
    stored: Collection[NodeId],
    own_copy: bool = True,
) -> set[NodeId]:
    """The nodes a round pushes to at once, less those that confirmed already: the
    holders ``RunTask`` named (those known at assignment), the table's current holders
    (replication may have added one since), and, with ``own_copy``
    (``keeps_own_copy``), the worker itself, which keeps a copy too (a task assigned
    before its replication finished would otherwise have its result on the origin
    alone)."""
    mine = {me} if own_copy else set()
    return (set(named) | set(current) | mine) - set(stored)


def needs_another_holder(stored: Collection[NodeId], me: NodeId) -> bool:
    """No node but the worker confirmed: another live member should take a copy."""
    return not set(stored) - {me}


def kept(stored: Collection[NodeId], me: NodeId, others_live: bool) -> bool:
    """The result is kept well enough to stop pushing: a node other than the worker
    confirmed it, or the worker keeps its own copy and no other live member could take
    one (losing the worker would lose the result of a task marked done)."""
    return not needs_another_holder(stored, me) or (bool(stored) and not others_live)


def takes_result(installed: int | None, pushed: int | None) -> bool:
    """Whether a holder installs attempt ``pushed``'s result of a task of which it
    holds attempt ``installed``'s (None: none, or one of an unknown attempt, a copy
    written before attempts were recorded): the same or a newer attempt's result is
    installed (the same push again has the same bytes); an older one's never replaces
    a newer one's."""
    return installed is None or pushed is None or pushed >= installed


def serves_result(installed: int | None, asked: int | None) -> bool:
    """Whether a holder of attempt ``installed``'s result answers a read of attempt
    ``asked``'s (None: a reader that names none, or a copy of an unknown attempt): the
    attempt asked for or a newer one's, never an older attempt's."""
    return asked is None or installed is None or installed >= asked
