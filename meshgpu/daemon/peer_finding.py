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
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from meshgpu.core.events import PeerDiscovered
from meshgpu.core.membership import LIVE_STATES
from meshgpu.core.types import Address
from meshgpu.daemon.discovery import MdnsDiscovery, Sighting, parse_peer, resolve_peer
from meshgpu.daemon.identity import ask_twin_token, find_live_twin, twin_message
from meshgpu.errors import ConfigError, DuplicateIdentityError

if TYPE_CHECKING:
    from meshgpu.daemon.runtime import Daemon

logger = logging.getLogger("meshgpu.daemon")


async def find_peers_by_mdns(daemon: Daemon, advertised: str, pin: str | None) -> None:
    """Announce the node by mDNS and feed every same-mesh sighting as ``PeerDiscovered``."""
    discovery = MdnsDiscovery(
        daemon.settings.mesh, daemon.node_id, daemon.address[1], [advertised], interface=pin
    )
    daemon.discovery = discovery

    checked: set[Address] = set()

    async def check_then_offer(sighting: Sighting) -> None:
        verdict = await refuse_if_twin(daemon, sighting.address)
        if verdict:
            return
        if verdict is False:
            checked.add(sighting.address)
        daemon.feed(PeerDiscovered(sighting.address, sighting.node_id))

    def sighted(sighting: Sighting) -> None:
        if sighting.twin:
            twin_announced(daemon, sighting.address, sighting.we_are_the_copy)
            return
        daemon.count("mdns_sightings")
        if sighting.address in checked or not daemon.newcomer:
            daemon.feed(PeerDiscovered(sighting.address, sighting.node_id))
        else:  # first contact while starting: make sure no live twin is out there
            assert daemon._nursery is not None
            daemon._nursery.start_soon(check_then_offer, sighting)

    try:
        await discovery.run(sighted)
    except DuplicateIdentityError as error:
        logger.error("%s", error)
        daemon.request_stop(error)
    except Exception as error:  # discovery failing must not stop the node
        daemon.count("mdns_failures")
        logger.error(
            "mDNS discovery failed (%r); use --peer HOST:PORT seeds or "
            "--interface to pick the LAN interface",
            error,
        )


def twin_announced(daemon: Daemon, where: Address, we_are_the_copy: bool) -> None:
    """mDNS shows another process announcing our node id at ``where``: a copied data dir.

    If we started later (``we_are_the_copy``) and are still a newcomer, we stop; the
    twin, which sees us too, keeps serving. Otherwise we keep serving, and log and count
    the sighting (``status`` shows ``duplicate_identity.sightings``).
    """
    guard = daemon.guard
    if we_are_the_copy:
        try:
            message = guard.observe(daemon.node_id, False, where, trio.current_time())
        except DuplicateIdentityError:
            daemon.twin_found(where)
            return
    else:  # the twin started after us: it is the newcomer and yields, we do not
        guard.sightings += 1
        guard.last_twin = where
        message = (
            f"another live node at {where[0]}:{where[1]} uses this node's id "
            f"{daemon.node_id} and started after this one (a copy of this data dir, or a "
            f"node started with --name {daemon.node_id} and a data dir of its own); it "
            "is told to stop, this one keeps serving"
        )
    if message is not None:
        daemon.count("duplicate_identity")
        logger.error("mDNS: %s", message)


async def offer_seed_peers(daemon: Daemon) -> None:
    """Offer static ``--peer`` seeds to the node, again whenever one is not a member.

    Before the first offer to a seed, ask it whether a live node already uses our id
    (a copied data dir): if one answers at another address, refuse to start.
    """
    seeds = []
    for text in daemon.settings.peers:
        try:
            seeds.append(parse_peer(text, daemon.address[1]))
        except ConfigError as error:
            logger.error("ignoring seed: %s", error)
    checked: set[Address] = set()
    watch = SeedWatch()
    while seeds:
        known = {
            info.address for info in daemon.node.members().values() if info.state in LIVE_STATES
        }
        for host, port in seeds:
            try:
                address = await resolve_peer(host, port)
            except ConfigError as error:
                logger.warning("%s", error)
                continue
            if address == daemon.address:
                continue
            if watch.offered(address, address in known, trio.current_time()):
                daemon.count("seeds_unanswered")
            if address in known:
                continue
            if address not in checked and daemon.newcomer:
                verdict = await refuse_if_twin(daemon, address)
                if verdict:
                    return
                if verdict is False:
                    checked.add(address)
            daemon.feed(PeerDiscovered(address))
        await trio.sleep(daemon.settings.seed_interval)


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


async def refuse_if_twin(daemon: Daemon, peer: Address) -> bool | None:
    """Ask ``peer`` whether a live node already uses our id; if one answers elsewhere,
    stop this node (it is the copy) and return True. False: no twin; None: the peer did
    not answer (ask again at the next contact).

    Only a newcomer asks (see ``Daemon.newcomer``): an established node that asked a new
    peer could hear of the copy that just joined, and must not be the one to yield.
    """
    reached, twin, token = await find_live_twin(
        daemon.node_id, daemon.address, peer, daemon.authenticator
    )
    if twin is None:
        return False if reached else None
    stop_for_twin(daemon, twin, token)
    return True


def stop_for_twin(daemon: Daemon, twin: Address, twin_token: str | None) -> None:
    """Stop this (newcomer) node: a live node at ``twin`` has its id. The message says
    which mix-up it is (:func:`~meshgpu.daemon.identity.twin_message`)."""
    error = DuplicateIdentityError(
        twin_message(daemon.node_id, daemon.settings.data_dir, daemon.dir_token, twin, twin_token)
    )
    logger.error("%s", error)
    daemon.request_stop(error)


async def ask_then_stop_for_twin(daemon: Daemon, twin: Address) -> None:
    """:func:`stop_for_twin` once the twin at ``twin`` said which data dir it runs on
    (a gossip datagram or an mDNS record carries no such thing)."""
    stop_for_twin(daemon, twin, await ask_twin_token(twin, daemon.authenticator))
