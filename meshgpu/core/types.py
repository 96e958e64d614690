"""Small shared types of the core: node ids and addresses."""

from __future__ import annotations

from typing import TypeAlias

NodeId: TypeAlias = str
"""A node's stable identity: made once, kept in its data dir (e.g. ``"n-3f9a1c2b"``)."""

Address: TypeAlias = tuple[str, int]
"""Where a node's gossip socket listens: ``(host, udp_port)``."""
