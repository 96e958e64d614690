"""Where a worker stores the result of a run before it reports the attempt ``ok``
(docs/daemon.md, "Storing the result is part of finishing the task").

The daemon's data plane (daemon/results.py) moves the bytes; these functions decide,
round by round, which nodes to push to and when the result is kept well enough to stop.
A round pushes to its targets at once; while no node but the worker confirmed the
result, it then goes to further live members one at a time (any node may hold a result:
the core unions ``result_holders``). Up to ``PUSH_ROUNDS`` rounds, ``retry_delay`` apart;
a result no node took fails the attempt.
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


def round_targets(
    named: Iterable[NodeId], current: Iterable[NodeId], me: NodeId, stored: Collection[NodeId]
) -> set[NodeId]:
    """The nodes a round pushes to at once, less those that confirmed already: the
    holders ``RunTask`` named (those known at assignment), the table's current holders
    (replication may have added one since), and the worker itself, which keeps a copy too
    (a task assigned before its replication finished would otherwise have its result on
    the origin alone)."""
    return (set(named) | set(current) | {me}) - set(stored)


def needs_another_holder(stored: Collection[NodeId], me: NodeId) -> bool:
    """No node but the worker confirmed: another live member should take a copy."""
    return not set(stored) - {me}


def kept(stored: Collection[NodeId], me: NodeId, others_live: bool) -> bool:
    """The result is kept well enough to stop pushing: a node other than the worker
    confirmed it, or the worker keeps its own copy and no other live member could take
    one (losing the worker would lose the result of a task marked done)."""
    return not needs_another_holder(stored, me) or (bool(stored) and not others_live)
