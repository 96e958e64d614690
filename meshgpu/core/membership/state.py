"""A member's state and how it may move: the state table as data.

Das, Gupta and Motivala, "SWIM: Scalable Weakly-consistent Infection-style Process Group
Membership Protocol" (2002), with memberlist's rules. Each update about a member (a
*rumour*: alive, suspect, dead, left) carries the member's incarnation; whether it moves
the member's state depends on the state this node holds and on how the rumour's
incarnation compares with the one it holds (:data:`TRANSITIONS`)::

    ALIVE          -> SUSPECT  on Suspect(inc >= ours)   (a probe failed somewhere)
    ALIVE/SUSPECT  -> ALIVE    on Alive(inc > ours)      (refutation)
    ALIVE/SUSPECT  -> DEAD     on Dead(inc >= ours)      (a suspicion timed out)
    ALIVE/SUSPECT/DEAD -> LEFT on Left(inc >= ours)      (it left on purpose)
    DEAD/LEFT      -> ALIVE    on Alive(inc > ours) only (stale gossip cannot revive)
    DEAD/LEFT      -> forgotten after ``dead_retention``

A rumour about an unknown member is taken only if it is ``Alive`` (a join). A ``Suspect``
of a member already suspect is a confirmation (Lifeguard), not a transition. With
Lifeguard on, a death *heard from another node* about a member held ALIVE moves it to
SUSPECT at its shortest timeout instead (hearsay; ``MemberTable.apply_dead``). Anything
said about *this* node with an incarnation at least ours is refuted by raising our
incarnation past it; incarnations only ever grow.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from meshgpu.core.fast_construct import fast_constructor
from meshgpu.core.membership.wire import MemberRecord, shared_member_record
from meshgpu.core.types import Address, NodeId


class MemberState(enum.Enum):
    """A member's state in this node's view."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


ALIVE = MemberState.ALIVE
SUSPECT = MemberState.SUSPECT
DEAD = MemberState.DEAD
LEFT = MemberState.LEFT
"""The states as module constants, for code on the per-datagram path: on Python 3.11
reading a member through its enum class (``MemberState.ALIVE``) is a descriptor call
(``bench/`` and docs/protocol.md, "Simulator speed")."""

LIVE_STATES = (ALIVE, SUSPECT)
GONE_STATES = (DEAD, LEFT)


class Rumour(enum.Enum):
    """What an update says about a member (the update types ``Alive``, ``Suspect``,
    ``Dead``, ``Left``)."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


class Needs(enum.Enum):
    """How the rumour's incarnation must compare with the one this node holds."""

    NEWER = ">"
    AT_LEAST = ">="


TRANSITIONS: dict[tuple[MemberState, Rumour], tuple[Needs, MemberState]] = {
    (ALIVE, Rumour.SUSPECT): (Needs.AT_LEAST, SUSPECT),
    (ALIVE, Rumour.ALIVE): (Needs.NEWER, ALIVE),
    (SUSPECT, Rumour.ALIVE): (Needs.NEWER, ALIVE),
    (ALIVE, Rumour.DEAD): (Needs.AT_LEAST, DEAD),
    (SUSPECT, Rumour.DEAD): (Needs.AT_LEAST, DEAD),
    (ALIVE, Rumour.LEFT): (Needs.AT_LEAST, LEFT),
    (SUSPECT, Rumour.LEFT): (Needs.AT_LEAST, LEFT),
    (DEAD, Rumour.LEFT): (Needs.AT_LEAST, LEFT),
    (DEAD, Rumour.ALIVE): (Needs.NEWER, ALIVE),
    (LEFT, Rumour.ALIVE): (Needs.NEWER, ALIVE),
}
"""Every legal move of another member's state: ``(held state, rumour) -> (what the
rumour's incarnation needs, new state)``. A pair that is not here changes nothing."""


def transition(
    held: MemberState, rumour: Rumour, incarnation: int, held_incarnation: int
) -> MemberState | None:
    """The state a rumour at ``incarnation`` moves a member held in ``held`` at
    ``held_incarnation`` to, or None if it changes nothing."""
    rule = TRANSITIONS.get((held, rumour))
    if rule is None:
        return None
    needs, target = rule
    if incarnation > held_incarnation or (
        needs is Needs.AT_LEAST and incarnation == held_incarnation
    ):
        return target
    return None


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """One member as this node sees it (immutable; replaced on every change)."""

    node_id: NodeId
    address: Address
    state: MemberState
    incarnation: int
    state_since: float
    reason: str

    def to_record(self) -> MemberRecord:
        """The push-pull form of this entry."""
        # _value_, not .value: the enum's value property is a slow descriptor
        state = self.state._value_
        return shared_member_record(self.node_id, self.address, state, self.incarnation)


new_member_info = fast_constructor(MemberInfo)
"""``MemberInfo(...)``, fast: each member a node learns is one (n squared as a mesh of n
forms)."""
