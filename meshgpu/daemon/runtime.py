"""The daemon: one trio nursery that drives a :class:`~meshgpu.core.node.Node`.

The daemon holds no protocol logic. It turns the world into events (datagrams, timer
ticks, mDNS sightings, client submissions, finished transfers and runs) and executes the
node's effects, in order, with real sockets, disks and devices:

=====================  ==============================================================
effect                 what the daemon does
=====================  ==============================================================
SendDatagram           seal (auth/) and send on the UDP socket
Persist                append to the journal; a committer task fsyncs (group commit, in
                       a worker thread); datagrams and acknowledgements after a task's
                       first record wait until it is synced (durability.py)
FetchPayload/RunTask   start a data-plane task (dataplane.py); the effect queue moves on
CancelTask             cancel that attempt if it is still fetching
TaskAccepted/Rejected  answer the waiting ``submit`` request
TaskResolved           hand the outcome to ``results`` waiters (handlers.py)
DropPayload            delete that task's stored inputs and result
MemberChanged etc.     log; remembered for ``status`` (who left when, and why)
=====================  ==============================================================

This module is the daemon's lifecycle and its wiring: it opens the data dir, binds, builds
the node and the parts that serve it, hands each part what it uses (docs/architecture.md,
"The parts and their contracts"; no other daemon module knows the :class:`Daemon`), runs
them in one nursery and stops them. The effect executor is ``effect_queue.py``, the
gossip socket ``datagrams.py``.

Tasks in the nursery: the parts that own a nursery of their own (the peer connections,
the data plane's transfers and runs, the peer finder, the TCP server), the effect
executor (and its gated half), the UDP receiver, the timer (sleeps until
``node.next_deadline()``, woken early when a handled event moved the deadline), the load
reporter and the keyring exchange. Stopping
(SIGINT/SIGTERM or ``request_stop``) refuses new submissions, lets running tasks finish
for up to ``drain_timeout`` and hands the rest back (a transient failure, so the leader
reassigns them), then sends the leave and closes everything.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
import time
from typing import Any

import trio

from meshgpu.core.events import (
    CatalogRestored,
    Event,
    JournalReplayed,
    LeaveRequested,
    LoadChanged,
    TaskFinished,
)
from meshgpu.core.load import DeviceCapabilities, LoadVector
from meshgpu.core.membership import LIVE_STATES
from meshgpu.core.node import Node
from meshgpu.core.types import Address, NodeId
from meshgpu.daemon.api import ApiServer
from meshgpu.daemon.auth import Authenticator, Keyring
from meshgpu.daemon.catalog import ModelCatalog
from meshgpu.daemon.catalog_file import CatalogFile, CatalogKeeper
from meshgpu.daemon.datagrams import (
    ENVELOPE_MAX_OVERHEAD,
    UDP_MTU_BUDGET,
    GossipSocket,
    bind_sockets,
)
from meshgpu.daemon.dataplane import DataPlane
from meshgpu.daemon.direct import DirectRuns
from meshgpu.daemon.discovery import (
    MdnsDiscovery,
    interface_address,
    local_ipv4_addresses,
    parse_advertise,
    resolve_peer,
)
from meshgpu.daemon.durability import GroupCommit
from meshgpu.daemon.effect_queue import EffectHandlers, EffectQueue
from meshgpu.daemon.execution import Executor
from meshgpu.daemon.handlers import ClientHandlers
from meshgpu.daemon.identity import (
    INCARNATION_RESERVE,
    DataDirLock,
    DuplicateIdentityGuard,
    IdentityStore,
    NodeIdentity,
    ask_twin_token,
    find_live_twin,
)
from meshgpu.daemon.journal import Journal
from meshgpu.daemon.keyring_exchange import KeyringExchange
from meshgpu.daemon.member_history import MemberHistory
from meshgpu.daemon.modelstore import ModelStore
from meshgpu.daemon.node_driver import NodeDriver
from meshgpu.daemon.payloads import PayloadStore
from meshgpu.daemon.peer_finding import PeerFinder
from meshgpu.daemon.peer_ops import PeerOps
from meshgpu.daemon.rpc import ConnectionPool
from meshgpu.daemon.settings import DaemonSettings
from meshgpu.daemon.status import (
    LoadMeter,
    StatusReport,
    core_queue_length,
    device_capabilities,
    http_address,
    queued_tasks,
    task_entry,
    usable_device_labels,
)
from meshgpu.daemon.submissions import Submissions
from meshgpu.daemon.warmup import preload_inference
from meshgpu.errors import DuplicateIdentityError, StorageError

logger = logging.getLogger("meshgpu.daemon")
REJECTION_PULSE_S = 0.1
"""Refused datagrams and frames wake ``wait`` (and the dashboard) at most this often."""


class Daemon:
    """A running meshgpu node; use ``await nursery.start(daemon.run)``."""

    def __init__(self, settings: DaemonSettings) -> None:
        self.settings = settings
        self.counters: dict[str, int] = {}
        self.history = MemberHistory(self._observed_change)
        self.member_history: dict[NodeId, dict[str, Any]] = self.history.members
        self.leaving = False
        self.load_meter: LoadMeter | None = None
        self.stopped_because: BaseException | None = None
        self._incarnation_unsaved = False
        """The last incarnation write failed (logged once, not on every retry)."""
        self._incarnation_stored = 0
        """The incarnation ``identity.json`` holds: this run may announce up to it
        without a write (identity.INCARNATION_RESERVE)."""
        self.address: Address = ("0.0.0.0", 0)
        """Where peers reach this node: gossiped, announced by mDNS (``--advertise``)."""
        self.listen_address: Address = ("0.0.0.0", 0)
        """Where this node listens, as reached from this machine (``daemon.json``)."""
        self.started_wall = time.time()
        self._stop = trio.Event()
        self._starting: trio.CancelScope | None = None
        """The scope of the daemon's start while it runs (a fatal stop cancels it)."""
        self.generation = 0
        """Counts membership and leader changes (``status`` and the ``wait`` op use it)."""
        self.changed = trio.Event()
        """Replaced (after being set) whenever something observable changes."""
        self.observed = trio.Event()
        """Replaced (after being set) whenever a member or the leader changes: the
        dashboard's wake (refused input sets ``changed``, not this)."""
        self._rejected = trio.Event()
        """Set when a datagram or frame was refused (:meth:`_pulse_rejections`)."""
        self.ready = trio.Event()
        """Set once the daemon listens and serves (just before ``task_status.started``)."""
        self.capabilities = DeviceCapabilities()
        """This node's devices as last measured (empty until the load reporter ran)."""
        self.usable_devices: tuple[str, ...] = ()
        """The devices this node runs on that passed their probe (as the load carries them)."""

    # --- lifecycle ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED) -> None:
        settings = self.settings
        with DataDirLock(settings.data_dir):
            self.identity_store = IdentityStore(settings.data_dir)
            identity = self.identity_store.start(settings.name, reserve=INCARNATION_RESERVE)
            self._incarnation_stored = identity.incarnation + INCARNATION_RESERVE
            self.node_id: NodeId = identity.node_id
            self.dir_token = identity.dir_token
            self.journal = await trio.to_thread.run_sync(
                Journal.open, settings.data_dir / "journal"
            )
            try:
                await self._run(identity.incarnation, task_status)
            finally:
                self.journal.close()

    async def _run(self, incarnation: int, task_status: trio.TaskStatus[Daemon]) -> None:
        settings = self.settings
        self.keyring = Keyring.for_node(settings.data_dir, settings.key, self.node_id)
        """The mesh keys this node holds, kept in its data dir (auth/keyring.py)."""
        self.keyring.subscribe(self.pulse)  # ``status`` shows it: wake the waiters
        self.authenticator = Authenticator(
            self.keyring,
            self.node_id,
            mesh=settings.mesh,
            verify_incoming=settings.encrypt_verify_incoming,
            verify_outgoing=settings.encrypt_verify_outgoing,
            max_clock_skew=settings.max_clock_skew,
        )
        self.models = ModelStore(settings.data_dir / "models", settings.model_cache_bytes)
        self.payloads = PayloadStore(settings.data_dir / "payloads", self.journal)
        self.executor = Executor(
            settings.slots,
            backend=settings.backend,
            device=settings.device,
            batching_for=lambda digest: self.model_catalog.batching_for(digest),
        )
        # Before the node exists: the imports hold the GIL for a second or more, which
        # inside the first task starved the loop into false suspicions (warmup.py).
        preload_inference(settings.backend, settings.device)
        self.guard = DuplicateIdentityGuard(
            self.node_id, trio.current_time(), grace=settings.duplicate_grace
        )
        pin = interface_address(settings.interface) if settings.interface else None
        bind = pin if pin is not None and settings.bind == "0.0.0.0" else settings.bind
        raw, udp, listeners = await bind_sockets(bind, settings.port)
        self.datagrams = GossipSocket(
            raw,
            udp,
            self.authenticator,
            self.guard,
            feed=self.feed,
            count=self.count,
            rejected=self._on_rejected,
            twin_found=lambda address: self.peer_finder.twin_found(address),
        )
        port = udp.getsockname()[1]
        local = pin or (bind if bind != "0.0.0.0" else local_ipv4_addresses()[0])
        self.listen_address = (local, port)
        if settings.advertise:
            # Behind NAT or a port forward: gossip the outside address (as memberlist's
            # AdvertiseAddr/AdvertisePort); every peer, on the LAN too, uses that one.
            self.address = await resolve_peer(*parse_advertise(settings.advertise, port))
        else:
            self.address = self.listen_address
        config = dataclasses.replace(
            settings.mesh_config,
            max_datagram_bytes=min(settings.mesh_config.max_datagram_bytes, UDP_MTU_BUDGET)
            - ENVELOPE_MAX_OVERHEAD,
        )
        self.node = Node(
            self.node_id,
            self.address,
            config,
            random.Random(),
            trio.current_time(),
            incarnation=incarnation,
        )
        self.peer_finder = PeerFinder(
            self.node_id,
            self.address,
            self.guard,
            peers=settings.peers,
            seed_interval=settings.seed_interval,
            data_dir=settings.data_dir,
            dir_token=self.dir_token,
            feed=self.feed,
            count=self.count,
            request_stop=self.request_stop,
            newcomer=lambda: self.newcomer,
            live_addresses=self._live_addresses,
            find_twin=lambda peer: find_live_twin(
                self.node_id, self.address, peer, self.authenticator
            ),
            ask_twin_token=lambda twin: ask_twin_token(twin, self.authenticator),
        )
        """Seeds and mDNS sightings to the node; the newcomer's twin checks."""
        self.model_catalog = ModelCatalog(self.node_id, self.node.catalog, self.models, self.feed)
        """The catalog the API and the HTTP port show and change (``catalog.py``)."""
        self.peers = ConnectionPool(self.authenticator, max_frame_bytes=settings.max_frame_bytes)
        node = self.node
        leaving = lambda: self.leaving  # noqa: E731 (read when asked: it changes)
        lookup = functools.partial(task_entry, node)
        self.dataplane = DataPlane(
            self.node_id,
            node,
            self.peers,
            self.payloads,
            self.models,
            self.executor,
            self.authenticator,
            max_frame_bytes=settings.max_frame_bytes,
            task_entry=lookup,
            feed=self.feed,
            count=self.count,
            write_payload=self.write_payload,
            durable=self.durable,
            leaving=leaving,
        )
        """Transfers and runs, each a task in the data plane's nursery (``dataplane.py``)."""
        self.status = StatusReport(
            self.node_id,
            node,
            settings,
            address=self.address,
            work=self.dataplane,
            executor=self.executor,
            counters=self.counters,
            authenticator=self.authenticator,
            guard=self.guard,
            member_history=self.member_history,
            leaving=leaving,
            generation=lambda: self.generation,
            usable_devices=lambda: self.usable_devices,
            mdns_counters=lambda: getattr(self.peer_finder.discovery, "counters", {}),
            http=lambda: http_address(self.http),
            started_wall=self.started_wall,
            refresh_counters=lambda: self.datagrams.refresh_counters(self.counters),
        )
        """The ``status`` and ``tasks`` answers (``status.py``)."""
        direct = DirectRuns(
            self.node_id,
            self.executor,
            self.models,
            labels=settings.labels,
            chunk=self.dataplane.chunk,
            leaving=leaving,
            busy=lambda: bool(self.dataplane.running),
            capabilities=lambda: self.capabilities,
            queue_length=lambda: core_queue_length(node),
            count=self.count,
        )
        submissions = Submissions(
            self.node_id,
            self.dataplane,
            self.payloads,
            self.models,
            direct,
            task_entry=lookup,
            feed=self.feed,
            count=self.count,
            leaving=leaving,
        )
        self.handlers = ClientHandlers(
            self.node_id,
            self.dir_token,
            status=self.status,
            submissions=submissions,
            results=self.dataplane,
            payloads=self.payloads,
            models=self.models,
            catalog=self.model_catalog,
            members=node.members,
            changed=lambda: self.changed,
            feed=self.feed,
            early=self.dataplane.early,
        )
        """The TCP API's client ops (``handlers.py``, submissions in ``submissions.py``)."""
        self.peer_ops = PeerOps(
            self.node_id,
            payloads=self.payloads,
            models=self.models,
            results=self.dataplane,
            resolved=self.handlers.resolved.get,
            task_entry=lookup,
            relays=self.dataplane.relays,
            warm=self.dataplane.warm,
            early=self.dataplane.early,
        )
        """The TCP API's data-plane ops for peers and large uploads (``peer_ops.py``)."""
        self.keyring_exchange = KeyringExchange(
            self.keyring,
            self.authenticator,
            self.node_id,
            self._live_member_addresses,
            self.count,
        )
        """``meshgpu keyring`` ops and the exchanges that converge the keyring."""
        self.api = ApiServer(
            {**self.handlers.table(), **self.peer_ops.table(), **self.keyring_exchange.table()},
            self.authenticator,
            self.counters,
            max_frame_bytes=settings.max_frame_bytes,
            max_connections=settings.api_max_connections,
            idle_timeout_s=settings.api_idle_timeout_s,
            max_connections_per_client=settings.api_max_connections_per_client,
            handshake_timeout_s=settings.api_handshake_timeout_s,
        )
        self.api.on_reject = self._on_rejected
        self.commit = GroupCommit(self.journal, self.count, self.storage_failed)
        self.effects = EffectQueue(
            EffectHandlers(
                send_datagram=lambda send: self.datagrams.send(send.destination, send.payload),
                persist=lambda persist: self.commit.persist(persist.record),
                member_changed=self.history.member_changed,
                leader_changed=self.history.leader_changed,
                data_plane=self.dataplane.execute,
                clients=self.handlers.execute,
            ),
            self.commit,
            self.count,
            self.storage_failed,
        )
        """The node's effects, executed in order (``effect_queue.py``)."""
        self.driver = NodeDriver(
            self.node,
            self.effects,
            self.count,
            self._save_incarnation,
            before_tick=self.datagrams.take_queued,
        )
        """The one caller of ``node.handle`` and the node's timer (``node_driver.py``)."""
        self.http = None
        if settings.http is not None:  # the web stack is imported only when it serves
            from meshgpu.daemon.http_sources import DaemonHttpSources, build_http_server

            sources = DaemonHttpSources(
                self.node_id,
                node,
                handlers=self.handlers,
                status=self.status,
                transfers=self.dataplane,
                executor=self.executor,
                models=self.models,
                catalog=self.model_catalog,
                peers=self.peers,
                feed=self.feed,
                ready=self.ready.is_set,
                leaving=leaving,
            )
            self.http = build_http_server(
                sources,
                settings.http,
                daemon_bind=settings.bind,
                commit=self.commit,
                changed=lambda: self.observed,
                counters=self.counters,
            )
        """The HTTP port (meshgpu/http/, wired by http_sources.py), if one is served."""
        records = self.commit.replay()
        if self.journal.torn_bytes:
            logger.warning(
                "journal had a torn tail of %d bytes (a crash mid-write); cut and kept aside",
                self.journal.torn_bytes,
            )
        for record in records:
            if record.entry is not None:
                self.dataplane.note_inputs(record.task_id, record.entry.spec.input_digest)
        swept = self.payloads.sweep_inline(
            {r.entry.spec.input_digest for r in records if r.entry is not None},
            {(r.task_id.origin, r.task_id.sequence) for r in records if r.entry is not None},
        )
        if swept:
            logger.info("dropped %d stored payloads of tasks no longer held", swept)
        self.feed(JournalReplayed(tuple(records)))
        self.catalog_keeper = CatalogKeeper(
            CatalogFile(settings.data_dir), lambda: self.node.model_catalog.updates
        )
        restored = self.catalog_keeper.restored()
        if restored:
            self.feed(CatalogRestored(restored))
        try:
            async with trio.open_nursery() as nursery:
                # A fatal stop (request_stop with a cause: a twin met while starting, a
                # full disk) cancels the rest of the start: a refused process exits
                # without starting mDNS, HTTP and the rest, only to stop them again.
                self._starting = starting = trio.CancelScope()
                if self.stopped_because is not None:
                    starting.cancel()
                with starting:
                    await self._start_parts(nursery, listeners, pin, len(records), task_status)
                self._starting = None
                await self._stop.wait()
                if self.stopped_because is None:
                    await self._leave()
                # else: a full disk or a twin identity. A twin must not gossip a leave
                # (it would mark the real owner of the id as left); a node that cannot
                # journal must not send anything more. Both just stop.
                nursery.cancel_scope.cancel()
        finally:
            udp.close()
            self.catalog_keeper.save_if_changed()
            # Keep the highest incarnation reached (refutations raise it while running);
            # a twin leaves the copied identity as it found it.
            if not isinstance(self.stopped_because, DuplicateIdentityError):
                incarnation = max(incarnation, self.node.incarnation)
                try:
                    self.identity_store.save(
                        NodeIdentity(self.node_id, incarnation, self.dir_token)
                    )
                except StorageError as error:
                    logger.error("%s", error)
        if self.stopped_because is not None:
            raise self.stopped_because

    async def _start_parts(
        self,
        nursery: trio.Nursery,
        listeners: list[trio.SocketListener],
        pin: str | None,
        replayed: int,
        task_status: trio.TaskStatus[Daemon],
    ) -> None:
        """Start the daemon's parts in ``nursery``, in order, then say it serves (invoked
        by :meth:`run`, in a scope a fatal stop cancels)."""
        settings = self.settings
        await nursery.start(self.peers.run)
        await nursery.start(self.dataplane.run)
        nursery.start_soon(self.peer_ops.sweep_uploads)
        nursery.start_soon(self.effects.run)
        nursery.start_soon(self.commit.run)
        await nursery.start(self.peer_finder.run)
        nursery.start_soon(self.datagrams.receive)
        nursery.start_soon(self._pulse_rejections)
        nursery.start_soon(self.driver.run_timers)
        await nursery.start(self.handlers.submissions.coalescer.run)
        await nursery.start(self.api.serve_listeners, listeners)
        self.peer_finder.find(
            MdnsDiscovery(
                settings.mesh,
                self.node_id,
                self.address[1],
                [self.address[0]],
                interface=pin,
            )
            if settings.mdns
            else None
        )
        nursery.start_soon(self._report_load)
        nursery.start_soon(self.catalog_keeper.run)
        await nursery.start(self.keyring_exchange.run)
        if self.http is not None:
            await nursery.start(self.http.run)
        self._announce(replayed)
        self.ready.set()
        task_status.started(self)

    def request_stop(self, because: BaseException | None = None) -> None:
        """Leave gracefully (from a signal handler task, a test, or a fatal error: that
        one also cancels what is left of the start, :meth:`run`)."""
        if because is not None and self.stopped_because is None:
            self.stopped_because = because
            if self._starting is not None:
                self._starting.cancel()
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """A stop was requested (``request_stop``): the node leaves, or stops at once."""
        return self._stop.is_set()

    def _announce(self, replayed: int) -> None:
        settings = self.settings
        host, port = self.address
        logger.info(
            "meshgpu node %s (incarnation %d) in mesh %r: gossip udp %s:%d, api tcp %s:%d",
            self.node_id,
            self.node.incarnation,
            settings.mesh,
            host,
            port,
            host,
            port,
        )
        primary = self.keyring.primary
        if primary is None:
            logger.warning(
                "NO MESH KEY: this mesh is OPEN; anyone who can reach port %d can join it, "
                "read tasks and submit work. Make a key with `meshgpu keygen` and start every "
                "node with --key-file",
                port,
            )
        else:
            logger.info(
                "mesh key set (fingerprint %s, %d key(s) installed): traffic is encrypted "
                "and authenticated",
                primary.fingerprint,
                len(self.keyring.installed()),
            )
            if not (settings.encrypt_verify_incoming and settings.encrypt_verify_outgoing):
                logger.warning(
                    "MIGRATING TO ENCRYPTION: %s; %s (docs/operations.md, migrating an open mesh)",
                    "sending encrypted"
                    if settings.encrypt_verify_outgoing
                    else "sending WITHOUT encryption",
                    "refusing traffic without the key"
                    if settings.encrypt_verify_incoming
                    else "accepting traffic without the key too",
                )
        if self.http is not None and self.http.urls:
            server = self.http
            logger.info(
                "HTTP API (Open Inference Protocol, /mesh, /metrics, dashboard) on %s%s",
                ", ".join(server.urls),
                ""
                if settings.http is not None and settings.http.tokens is not None
                else ": no API tokens, so loopback only (--api-tokens FILE to serve the network)",
            )
        if replayed:
            logger.info("resumed %d task records from the journal", replayed)

    async def _leave(self) -> None:
        """Hand back or finish running work, tell the mesh we leave, flush the effects.

        Returns as soon as nothing runs here, bounded by ``drain_timeout``: the load
        gossiped from now offers no free slot (the leader stops assigning here), the
        tasks not on a device yet (fetching, or prefetched for a busy slot) are handed
        back at once, an assignment that still arrives is not started and is handed
        back with the rest at the end (dataplane.py); only the runs on a device are
        waited for."""
        self.leaving = True
        if self.load_meter is not None:
            self.feed(LoadChanged(self.load_meter.measure()))
        waiting = self.dataplane.hand_back_waiting()
        for task_id, attempt in waiting:
            self.feed(TaskFinished(task_id, attempt, "handed_back", reason="worker left"))
        logger.info(
            "leaving: %d task(s) not started handed back, waiting for %d on a device "
            "(at most %.0f s)",
            len(waiting),
            len(self.dataplane.running) - len(waiting),
            self.settings.drain_timeout,
        )
        with trio.move_on_after(self.settings.drain_timeout):
            await self.dataplane.wait_idle()
        for task_id, attempt in self.dataplane.hand_back():
            self.feed(TaskFinished(task_id, attempt, "handed_back", reason="worker left"))
        self.feed(LeaveRequested())
        with trio.move_on_after(2.0):
            await self.flushed()
        # Let the timer loop send the leave's gossip for a few rounds (best effort).
        await trio.sleep(3 * self.settings.mesh_config.gossip_interval)

    # --- events in, effects out --------------------------------------------------

    def feed(self, event: Event) -> None:
        """Hand ``event`` to the node now; its effects are queued for the executor."""
        self.driver.feed(event)

    def _save_incarnation(self, incarnation: int) -> bool:
        """The node raised its incarnation (a refutation): it must be on disk before any
        datagram announcing it leaves, so a restart after SIGKILL starts above it
        (``IdentityStore.start`` adds one to what is stored). Up to what is stored
        already (reserved ahead) nothing is written; past it, the next block is written
        now, fsynced, on the loop: once per ``INCARNATION_RESERVE`` refutations (the
        write at each one held the loop while a GiB's copies kept the disk busy, when
        the node was being suspected already). A twin never writes the copied
        identity. Returns whether the incarnation is on disk."""
        if isinstance(self.stopped_because, DuplicateIdentityError):
            return False
        if incarnation <= self._incarnation_stored:
            return True
        reserved = incarnation + INCARNATION_RESERVE
        try:
            self.identity_store.save(NodeIdentity(self.node_id, reserved, self.dir_token))
            self._incarnation_stored = reserved
        except StorageError as error:
            if not self._incarnation_unsaved:
                logger.error("%s; trying again each second while the node serves", error)
            self._incarnation_unsaved = True
            return False
        if self._incarnation_unsaved:
            logger.info("incarnation %d written to %s", incarnation, self.identity_store.path)
        self._incarnation_unsaved = False
        return True

    async def flushed(self) -> None:
        """Wait until every queued effect has been executed (gated ones included)."""
        await self.effects.flushed()

    async def durable(self, seq: int) -> None:
        """Wait until journal record ``seq`` (and everything written before it) is synced."""
        await self.commit.durable(seq)

    def write_payload(
        self, key: Any, kind: str, data: bytes, attempt: int | None = None
    ) -> int | None:
        """Store a small payload in the journal (no fsync); a full disk stops the node
        like a failed ``Persist`` (acknowledging what is not on disk would break the
        contract). Returns the sequence number to wait for, or None if too large. A
        result's ``attempt`` goes in its record (PayloadStore.put_inline)."""
        try:
            seq = self.payloads.put_inline(key, kind, data, attempt)
        except StorageError as error:
            self.storage_failed(error)
            raise
        self.commit.wrote(seq)
        return seq

    def storage_failed(self, error: StorageError) -> None:
        """The journal cannot be written: acknowledging what is not on disk would break
        the contract, so execute nothing more and stop, as if crashed (the mesh declares
        us dead)."""
        logger.error("%s; this node stops rather than acknowledge unjournaled work", error)
        self.effects.clear()
        self.request_stop(error)

    # --- timers, discovery, seeds, load -----------------------------------------------

    async def _report_load(self) -> None:
        """Feed ``LoadChanged`` whenever what we measure changes (checked every interval)."""
        backend, device = self.settings.backend, self.settings.device
        labels: tuple[str, ...] = ()
        try:
            capabilities = await trio.to_thread.run_sync(device_capabilities, backend, device)
            labels = await trio.to_thread.run_sync(usable_device_labels, backend, device)
        except Exception as error:  # a broken driver must not stop gossip
            logger.error("cannot list devices (%r); advertising no capabilities", error)
            capabilities = DeviceCapabilities()
        self.capabilities, self.usable_devices = capabilities, labels
        node = self.node
        meter = self.load_meter = LoadMeter(
            capabilities,
            labels,
            self.settings.labels,
            executor=self.executor,
            work=self.dataplane,
            queued=lambda: queued_tasks(node),
            leaving=lambda: self.leaving,
            direct_runs=lambda: self.handlers.submissions.direct.in_flight,
        )
        last: LoadVector | None = None
        while True:
            load = meter.measure()
            if load != last:
                self.feed(LoadChanged(load))
                last = load
            await trio.sleep(self.settings.load_interval)

    def _live_member_addresses(self) -> dict[NodeId, Address]:
        """The live members other than this node, with their addresses."""
        return {
            node_id: info.address
            for node_id, info in self.node.members().items()
            if info.state in LIVE_STATES and node_id != self.node_id
        }

    def _live_addresses(self) -> set[Address]:
        """The addresses of the members the node holds live (the seed loop skips them)."""
        return {info.address for info in self.node.members().values() if info.state in LIVE_STATES}

    @property
    def newcomer(self) -> bool:
        """Still within ``duplicate_grace`` of starting: the node that yields to a twin."""
        return trio.current_time() - self.guard.started < self.settings.duplicate_grace

    def count(self, name: str) -> None:
        """Add one to daemon counter ``name`` (shown by ``status``)."""
        self.counters[name] = self.counters.get(name, 0) + 1

    def _observed_change(self) -> None:
        """A member or the leader changed: ``status`` and ``wait`` see a new generation."""
        self.generation += 1
        self.observed.set()
        self.observed = trio.Event()
        self.pulse()

    def _on_rejected(self) -> None:
        """A datagram or frame was refused: wake the ``wait`` callers (their condition
        may be a counter), if any waits; with none, a barrage of garbage wakes no task
        (a caller that begins to wait later reads the counters as they are then)."""
        if self.changed.statistics().tasks_waiting:
            self._rejected.set()

    async def _pulse_rejections(self) -> None:
        """Wake the waiters once per burst of refused datagrams or frames (their counters
        and refused peers are in ``status``), at most every ``REJECTION_PULSE_S``: a
        flood of garbage woke them once per datagram, and each wake resampled the
        dashboard (the whole status and task table) on the event loop, long enough to
        miss the 100 ms probe deadline."""
        while True:
            await self._rejected.wait()
            self._rejected = trio.Event()
            self.pulse()
            await trio.sleep(REJECTION_PULSE_S)

    def pulse(self) -> None:
        """Wake everything waiting for a change (the ``wait`` op)."""
        self.changed.set()
        self.changed = trio.Event()
