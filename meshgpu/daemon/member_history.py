"""What the mesh told this node about its members and leaders, for logs and ``status``.

Executes the two notification effects (``MemberChanged``, ``LeaderChanged``): it logs
them, remembers each member's last change (who left when, and why: ``status`` shows it)
and calls ``on_change`` so that waiters on the ``wait`` op wake. Member states arrive as
:class:`~meshgpu.core.membership.MemberState` and become text here, in the log and the
status record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from meshgpu.core.effects import LeaderChanged, MemberChanged
from meshgpu.core.membership import ALIVE
from meshgpu.core.types import NodeId

logger = logging.getLogger("meshgpu.daemon")


class MemberHistory:
    """The last change of every member this node heard of, and the change notifications."""

    def __init__(
        self, on_change: Callable[[], None], wall_clock: Callable[[], float] = time.time
    ) -> None:
        self.on_change = on_change
        self._wall_clock = wall_clock
        self.members: dict[NodeId, dict[str, Any]] = {}
        """node id -> its last change as ``status`` shows it (JSON-ready)."""

    def member_changed(self, effect: MemberChanged) -> None:
        """Invoked by the effect queue for each ``MemberChanged``: remember and log it."""
        state = effect.state.value
        self.members[effect.node_id] = {
            "node_id": effect.node_id,
            "address": list(effect.address),
            "state": state,
            "reason": effect.reason,
            "incarnation": effect.incarnation,
            "at": self._wall_clock(),
        }
        self.on_change()
        log = logger.info if effect.state is ALIVE else logger.warning
        log("member %s at %s:%d is %s (%s)", effect.node_id, *effect.address, state, effect.reason)

    def leader_changed(self, effect: LeaderChanged) -> None:
        """Invoked by the effect queue for each ``LeaderChanged``: log it."""
        logger.info("view %d: leader is %s", effect.view, effect.leader)
        self.on_change()
