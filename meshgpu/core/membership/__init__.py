"""Membership: SWIM with the Lifeguard refinements, as one node component.

* :mod:`.state`: a member's state and its legal transitions, as data (``TRANSITIONS``);
* :mod:`.table`: the member table and the merge rules that apply the transitions;
* :mod:`.probe`: failure detection (probes, indirect probes, reconnection pings);
* :mod:`.dissemination`: gossip rounds, notices, push-pull, joining;
* :mod:`.wire`: the messages and updates on the wire;
* :mod:`.swim`: :class:`Swim`, the component that composes them and owns their timers.

Public names are re-exported here; the modules behind them may change freely.
"""

from meshgpu.core.membership.state import (
    ALIVE,
    DEAD,
    GONE_STATES,
    LEFT,
    LIVE_STATES,
    SUSPECT,
    TRANSITIONS,
    MemberInfo,
    MemberState,
    Needs,
    Rumour,
    transition,
)
from meshgpu.core.membership.swim import Swim
from meshgpu.core.membership.table import MemberTable, TableListener

__all__ = [
    "ALIVE",
    "DEAD",
    "GONE_STATES",
    "LEFT",
    "LIVE_STATES",
    "SUSPECT",
    "TRANSITIONS",
    "MemberInfo",
    "MemberState",
    "MemberTable",
    "Needs",
    "Rumour",
    "Swim",
    "TableListener",
    "transition",
]
