"""How a daemon meets its peers: mDNS sightings and static ``--peer`` seeds.

Both end as ``PeerDiscovered`` events; what to do with a peer is the core's business.
Seeds are offered again every ``seed_interval`` while they are not live members, so a
mesh whose nodes all restarted finds itself again. Before a seed is first offered, it is
asked where it believes our node id lives (:func:`~meshgpu.daemon.identity.find_live_twin`):
a live node answering to our id elsewhere means this data dir was copied, and this node
refuses to go on. mDNS shows such a twin directly (a service with our node id and
another process's run token). The twin sees us too, so only the one that started later
(by the start times both announce) may yield, and only while it is a newcomer (as the
daemon's :class:`DuplicateIdentityGuard` decides for a twin's datagram); the other one
counts and logs the sighting and keeps serving.

:class:`PeerFinder` is the part: the wiring hands it the callables it uses (feed an
event, count, stop the node, the live members' addresses, ask a peer about a twin) and
runs it; every task it starts (the mDNS announcer, the seed loop, the twin checks) lives
in its own nursery.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import trio

from meshgpu.core.events import PeerDiscovered
from meshgpu.core.types import Address, NodeId
from meshgpu.daemon.discovery import Sighting, parse_peer, resolve_peer
from meshgpu.daemon.identity import DuplicateIdentityGuard, twin_message
from meshgpu.errors import ConfigError, DuplicateIdentityError

logger = logging.getLogger("meshgpu.daemon")

FindTwin = Callable[[Address], Awaitable[tuple[bool, Address | None, str | None]]]
"""Ask a peer where it believes our node id lives: (it answered, twin address, twin's
``dir_token``) as :func:`~meshgpu.daemon.identity.find_live_twin` returns them."""


class Discovery(Protocol):
    """What the finder needs of mDNS (:class:`~meshgpu.daemon.discovery.MdnsDiscovery`)."""

    async def run(self, deliver: Callable[[Sighting], None], /) -> None: ...


class PeerFinder:
    """Offers seeds and mDNS sightings to the node as ``PeerDiscovered``; stops a newcomer
    that finds a live twin of its id. Use ``await nursery.start(finder.run)``, then
    :meth:`find`."""

    def __init__(
        self,
        node_id: NodeId,
        address: Address,
        guard: DuplicateIdentityGuard,
        *,
        peers: Sequence[str],
        seed_interval: float,
        data_dir: Path,
        dir_token: str,
        feed: Callable[[Any], None],
        count: Callable[[str], None],
        request_stop: Callable[[BaseException], None],
        newcomer: Callable[[], bool],
        live_addresses: Callable[[], set[Address]],
        find_twin: FindTwin,
        ask_twin_token: Callable[[Address], Awaitable[str | None]],
    ) -> None:
        self.node_id = node_id
        self.address = address
        self.guard = guard
        self.peers = tuple(peers)
        self.seed_interval = seed_interval
        self.data_dir = data_dir
        self.dir_token = dir_token
        self._feed = feed
        self._count = count
        self._request_stop = request_stop
        self._newcomer = newcomer
        self._live_addresses = live_addresses
        self._find_twin = find_twin
        self._ask_twin_token = ask_twin_token
        self._twin_checked = False
        self._nursery: trio.Nursery | None = None
        self.discovery: Discovery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the nursery of the finder's tasks until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def find(self, mdns: Discovery | None = None) -> None:
        """Start offering the seeds, and mDNS sightings if ``mdns`` is given.

        Invoked by the wiring once the node serves (after :meth:`run` started)."""
        nursery = self._started()
        if mdns is not None:
            nursery.start_soon(self.find_by_mdns, mdns)
        nursery.start_soon(self.offer_seeds)

    def _started(self) -> trio.Nursery:
        if self._nursery is None:
            raise RuntimeError("run the peer finder before asking it to find")
        return self._nursery

    async def find_by_mdns(self, discovery: Discovery) -> None:
        """Announce the node by mDNS and feed every same-mesh sighting as ``PeerDiscovered``."""
        self.discovery = discovery
        nursery = self._started()
        checked: set[Address] = set()

        async def check_then_offer(sighting: Sighting) -> None:
            verdict = await self.refuse_if_twin(sighting.address)
            if verdict:
                return
            if verdict is False:
                checked.add(sighting.address)
            self._feed(PeerDiscovered(sighting.address, sighting.node_id))

        def sighted(sighting: Sighting) -> None:
            if sighting.twin:
                self.twin_announced(sighting.address, sighting.we_are_the_copy)
                return
            self._count("mdns_sightings")
            if sighting.address in checked or not self._newcomer():
                self._feed(PeerDiscovered(sighting.address, sighting.node_id))
            else:  # first contact while starting: make sure no live twin is out there
                nursery.start_soon(check_then_offer, sighting)

        try:
            await discovery.run(sighted)
        except DuplicateIdentityError as error:
            logger.error("%s", error)
            self._request_stop(error)
        except Exception as error:  # discovery failing must not stop the node
            self._count("mdns_failures")
            logger.error(
                "mDNS discovery failed (%r); use --peer HOST:PORT seeds or "
                "--interface to pick the LAN interface",
                error,
            )

    def twin_announced(self, where: Address, we_are_the_copy: bool) -> None:
        """mDNS shows another process announcing our node id at ``where``: a copied data dir.

        If we started later (``we_are_the_copy``) and are still a newcomer, we stop; the
        twin, which sees us too, keeps serving. Otherwise we keep serving, and log and count
        the sighting (``status`` shows ``duplicate_identity.sightings``).
        """
        guard = self.guard
        if we_are_the_copy:
            try:
                message = guard.observe(self.node_id, False, where, trio.current_time())
            except DuplicateIdentityError:
                self.twin_found(where)
                return
        else:  # the twin started after us: it is the newcomer and yields, we do not
            guard.sightings += 1
            guard.last_twin = where
            message = (
                f"another live node at {where[0]}:{where[1]} uses this node's id "
                f"{self.node_id} and started after this one (a copy of this data dir, or a "
                f"node started with --name {self.node_id} and a data dir of its own); it "
                "is told to stop, this one keeps serving"
            )
        if message is not None:
            self._count("duplicate_identity")
            logger.error("mDNS: %s", message)

    async def offer_seeds(self) -> None:
        """Offer static ``--peer`` seeds to the node, again whenever one is not a member.

        Before the first offer to a seed, ask it whether a live node already uses our id
        (a copied data dir): if one answers at another address, refuse to start. A seed
        that did not answer is asked again every round while this node is a newcomer.
        """
        seeds = []
        for text in self.peers:
            try:
                seeds.append(parse_peer(text, self.address[1]))
            except ConfigError as error:
                logger.error("ignoring seed: %s", error)
        checked: set[Address] = set()
        watch = SeedWatch()
        while seeds:
            known = self._live_addresses()
            for host, port in seeds:
                try:
                    address = await resolve_peer(host, port)
                except ConfigError as error:
                    logger.warning("%s", error)
                    continue
                if address == self.address:
                    continue
                if watch.offered(address, address in known, trio.current_time()):
                    self._count("seeds_unanswered")
                # Asked until it answers while we are new, even once it is a live member:
                # a seed too busy to answer the first time (a loaded machine) is reached by
                # gossip all the same, and would otherwise never be asked again.
                if address not in checked and self._newcomer():
                    verdict = await self.refuse_if_twin(address)
                    if verdict:
                        return
                    if verdict is False:
                        checked.add(address)
                if address in known:
                    continue
                self._feed(PeerDiscovered(address))
            await trio.sleep(self.seed_interval)

    async def refuse_if_twin(self, peer: Address) -> bool | None:
        """Ask ``peer`` whether a live node already uses our id; if one answers elsewhere,
        stop this node (it is the copy) and return True. False: no twin; None: the peer did
        not answer (ask again at the next contact).

        Only a newcomer asks: an established node that asked a new peer could hear of the
        copy that just joined, and must not be the one to yield.
        """
        reached, twin, token = await self._find_twin(peer)
        if twin is None:
            return False if reached else None
        self.stop_for_twin(twin, token)
        return True

    def twin_found(self, address: Address) -> None:
        """Invoked when this newcomer hears from a live node with its id at ``address``
        (gossip or mDNS): ask it which data dir it runs on, then stop (once)."""
        if self._twin_checked or self._nursery is None:
            return
        self._twin_checked = True
        self._nursery.start_soon(self.ask_then_stop_for_twin, address)

    def stop_for_twin(self, twin: Address, twin_token: str | None) -> None:
        """Stop this (newcomer) node: a live node at ``twin`` has its id. The message says
        which mix-up it is (:func:`~meshgpu.daemon.identity.twin_message`)."""
        error = DuplicateIdentityError(
            twin_message(self.node_id, self.data_dir, self.dir_token, twin, twin_token)
        )
        logger.error("%s", error)
        self._request_stop(error)

    async def ask_then_stop_for_twin(self, twin: Address) -> None:
        """:meth:`stop_for_twin` once the twin at ``twin`` said which data dir it runs on
        (a gossip datagram or an mDNS record carries no such thing)."""
        self.stop_for_twin(twin, await self._ask_twin_token(twin))


SEED_SILENT_S = 10.0
"""How long a seed may stay out of the member list before the daemon says so."""


class SeedWatch:
    """Notices a ``--peer`` seed that never becomes a member (a wrong address or port, a
    firewall, a daemon with another mesh key, none running): the daemon keeps offering it
    and says so once, instead of waiting in silence."""

    def __init__(self, silent_s: float = SEED_SILENT_S) -> None:
        self.silent_s = silent_s
        self._since: dict[Address, float] = {}
        self._warned: set[Address] = set()

    def offered(self, address: Address, member: bool, now: float) -> bool:
        """Record one round for the seed at ``address``; logs (and returns True) when it
        has just been silent for ``silent_s``, and logs when a reported seed joins."""
        if member:
            self._since.pop(address, None)
            if address in self._warned:
                self._warned.discard(address)
                logger.info("seed %s:%d answered; it is a member now", *address)
            return False
        since = self._since.setdefault(address, now)
        if now - since < self.silent_s or address in self._warned:
            return False
        self._warned.add(address)
        logger.warning(
            "seed %s:%d has not joined this node's mesh in %.0f s: is `meshgpu join` running "
            "there, on that port, with this mesh's key, and does the firewall let UDP and "
            "TCP through? (still trying)",
            *address,
            now - since,
        )
        return True
