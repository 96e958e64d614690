"""One connection of the client to one daemon, and the record of a failover.

A :class:`Link` lives as long as its TCP connection: it remembers what that peer has
been asked (results streams, uploaded models) so that a new link to another peer starts
clean and asks again. :class:`Signal` is the client's wake-up bell.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from meshgpu.client.peers import Candidate
from meshgpu.daemon.rpc import RpcConnection


class Signal:
    """Wakes every waiter when something changed (an Event replaced after each fire)."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait(self) -> None:
        await self._event.wait()


@dataclass
class Link:
    """One live connection to one daemon."""

    rpc: RpcConnection
    candidate: Candidate
    node_id: str
    models: set[str] = field(default_factory=set)
    upload_locks: dict[str, trio.Lock] = field(default_factory=dict)
    requested: set[str] = field(default_factory=set)
    broken: trio.Event = field(default_factory=trio.Event)
    why: str = ""
    nursery: trio.Nursery | None = None

    def fail(self, why: str) -> None:
        if not self.broken.is_set():
            self.why = why
            self.broken.set()


@dataclass(frozen=True)
class Failover:
    """The client lost ``from_node`` and resumed on ``to_node`` after ``seconds``."""

    from_node: str
    to_node: str
    why: str
    seconds: float
