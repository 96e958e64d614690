"""The trio client: one connection to one peer, with failover to any other.

Use it as ``async with AsyncClient(peer) as client``. Inside, one supervisor task holds
a connection (a *link*) to one daemon and, while it lives, three link tasks:

* a watchdog that asks ``status`` every ``status_interval`` seconds: it learns the
  member list (where to fail over to) and notices a peer that stopped answering;
* the result requester: one ``results`` stream per batch of newly submitted task ids;
* the acknowledger: ``collected`` for every outcome the client has stored, so the mesh
  can drop inputs and results.

When the link breaks (the peer was killed, the watchdog timed out, the peer is leaving)
the supervisor connects to the next candidate (alive members first, see
:func:`~meshgpu.client.peers.failover_order`), re-requests every task id still without
an outcome and re-sends unsent acknowledgements. Results are pulled by task id from any
node, so nothing is lost with the entry node. Outcomes are kept per task id once, so the
caller sees each exactly once however often the mesh sends it.

A ``submit`` cut off by a broken link is sent again to the next peer. If the first peer
had journaled it before dying, that copy runs too (at-least-once execution, as the design
allows) but the caller gets one handle and one result; the orphan's result stays in the
mesh uncollected. Rejected: deduplicating submissions mesh-wide by a client-chosen key,
which would need a change to the task table's spec.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import trio

from meshgpu.client.batches import (
    BatchedSubmission,
    check_label,
    new_submission_id,
    prepare_inputs,
    resolve_max_task_bytes,
    submit_fields,
)
from meshgpu.client.handles import AsyncTaskHandle, Outcome, client_not_open
from meshgpu.client.link import Failover, Link, Signal
from meshgpu.client.mapping import MapSubmission
from meshgpu.client.models import ModelBlob
from meshgpu.client.outcomes import EarlyFetch, OutcomeStreams
from meshgpu.client.peers import (
    PEER_ENV,
    Address,
    Candidate,
    browse_mdns,
    failover_order,
    initial_candidates,
    key_refusal,
    no_daemon_error,
)
from meshgpu.daemon.auth import Authenticator, MeshKey, load_mesh_key
from meshgpu.daemon.blobs import TensorBlob, chunk_bytes
from meshgpu.daemon.direct import is_direct_id
from meshgpu.daemon.framing import DEFAULT_MAX_FRAME_BYTES
from meshgpu.daemon.rpc import open_rpc
from meshgpu.errors import (
    ClientError,
    ConfigError,
    IncompatibleDaemonError,
    MeshKeyError,
    RequestFailedError,
    TaskFailedError,
)

logger = logging.getLogger("meshgpu.client")

SUBMITS_IN_FLIGHT = 64
"""Submissions waiting for their acknowledgement at once (one client shared by many
threads: a web service's workers). Concurrent submissions of one model and options are
coalesced by the entry node into one table entry (docs/task-queue.md, "Coalescing at the
entry node"), so those in flight together cost about one replication and one fsync per
holder, not one each; the bound (64, the most the entry node puts in one coalesced
group) still keeps submissions of many different shapes from queueing more copies and
fsyncs than a loaded machine replicates before its timeout (8 before coalescing)."""


class AsyncClient(BatchedSubmission, OutcomeStreams, MapSubmission):
    """A client of a meshgpu mesh for trio code (the sync :class:`Client` wraps it).

    ``peer``: ``"HOST:PORT"``, a (host, port) pair or a list of them; None finds one
    (``MESHGPU_PEER``, a local daemon, then mDNS). ``key_file``: the mesh key (else
    ``MESHGPU_KEY``; none for an open mesh).
    """

    def __init__(
        self,
        peer: str | Address | Iterable[str | Address] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        *,
        key: MeshKey | None = None,
        mesh: str | None = None,
        connect_timeout: float = 3.0,
        status_interval: float = 2.0,
        failover_timeout: float = 60.0,
        mdns_timeout: float = 2.0,
        environ: Mapping[str, str] | None = None,
        max_task_bytes: int | None = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        environ = os.environ if environ is None else environ
        self.max_task_bytes = resolve_max_task_bytes(max_task_bytes, environ)
        """Largest inputs of one task this client sends (checked before sending)."""
        self.max_frame_bytes = max_frame_bytes
        self.chunk_bytes = chunk_bytes(max_frame_bytes)
        """Payloads larger than this travel in ranges of this size."""
        self.key = key if key is not None else load_mesh_key(_path(key_file), environ)
        self.name = f"client-{secrets.token_hex(6)}"
        self._authenticator = Authenticator(self.key, self.name, mesh=mesh)
        peers: str | Address | list[str | Address] | None
        if peer is None or isinstance(peer, str | tuple):
            peers = peer
        else:
            try:
                peers = list(peer)
            except TypeError:  # a bare port (17946) was "'int' object is not iterable"
                raise ConfigError(
                    f"peer {peer!r} must be 'HOST:PORT', a (host, port) pair or a list of them"
                ) from None
        self._seeds = initial_candidates(peers, environ)
        self._may_browse = peer is None and not environ.get(PEER_ENV)
        self.mesh = mesh
        self.connect_timeout = connect_timeout
        self.status_interval = status_interval
        self.failover_timeout = failover_timeout
        self.mdns_timeout = mdns_timeout
        self.members: list[dict[str, Any]] = []
        self.failovers: list[Failover] = []
        self.duplicates = 0
        """Outcomes received again for a task that already had one (dropped)."""
        self._handles: dict[str, AsyncTaskHandle] = {}
        self._unresolved: set[str] = set()
        self._fresh: list[str] = []
        self._to_ack: set[str] = set()
        self._group_left: dict[str, int] = {}
        self._group_taken: dict[str, list[str]] = {}
        self._abandoned: dict[str, str | None] = {}
        self._early: dict[str, EarlyFetch] = {}
        self.unanswered = 0
        """Submissions a stopped ``map`` cut off unanswered: the mesh may have accepted
        them (their ids are unknown; ``meshgpu tasks`` shows their labels)."""
        self.unanswered_labels: list[str | None] = []
        """The labels of those ``unanswered`` submissions, one per task."""
        self.flush_timeout = 2.0
        """Longest ``async with`` waits at its end to send outstanding acknowledgements
        (an interrupted command lowers it: Ctrl-C must stop within a second)."""
        self._link: Link | None = None
        self._link_changed = Signal()
        self._work = Signal()
        self._fatal: ClientError | None = None
        self._nursery: trio.Nursery | None = None
        self._nursery_manager: Any = None
        self._closed = False
        """Left its ``async with``: every call is refused (they waited for ever)."""
        self._submit_slots = trio.CapacityLimiter(SUBMITS_IN_FLIGHT)

    # --- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> AsyncClient:
        try:
            trio.lowlevel.current_trio_token()
        except RuntimeError:
            # asyncio (or no loop): trio's nursery failed with an AttributeError of its
            # internals ("'RunContext' object has no attribute 'runner'").
            raise ClientError(
                "AsyncClient runs under trio (trio.run); from asyncio or plain threads use "
                "the blocking meshgpu.Client (in a coroutine: await asyncio.to_thread(...))"
            ) from None
        self._closed = False
        for task_id in self._unresolved:  # asked for again once a peer answers
            self._handles[task_id].reopen()
        self._nursery_manager = trio.open_nursery()
        self._nursery = await self._nursery_manager.__aenter__()
        try:
            await self._nursery.start(self._supervise)
        except BaseException:
            await self._close_nursery()
            raise
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self._nursery is not None
        try:
            if self._to_ack and self._fatal is None:
                with trio.move_on_after(self.flush_timeout):  # best effort: tell the mesh
                    while self._to_ack and self._fatal is None:
                        await self._work.wait()
        finally:
            # Always, even when the flush is cancelled from outside (a second Ctrl-C):
            # a client nursery left open kept its tasks running after the caller went
            # on, and trio failed at exit ("Nursery stack corrupted", TrioInternalError).
            await self._close_nursery()
        # The caller's own exception, if any, propagates as it is (not in a group).

    async def _close_nursery(self) -> None:
        assert self._nursery is not None
        self._closed = True
        for task_id in self._unresolved:
            self._handles[task_id].orphan()
        self._nursery.cancel_scope.cancel()
        await self._nursery_manager.__aexit__(None, None, None)

    @property
    def peer(self) -> tuple[str, Address] | None:
        """The node id and address the client talks to now (None while failing over)."""
        link = self._link
        return None if link is None else (link.node_id, link.candidate.address)

    # --- the public API --------------------------------------------------------------

    async def submit(
        self,
        model: Any,
        inputs: Mapping[str, Any],
        *,
        priority: str = "normal",
        replicas: int = 2,
        deadline_s: float | None = None,
        device_type: str | None = None,
        min_memory: int = 0,
        fp16: bool = False,
        require: Any = None,
        prefer: Any = None,
        direct: bool = True,
        watch: bool = True,
        label: str | None = None,
    ) -> AsyncTaskHandle:
        """Submit one task; returns once the mesh acknowledged it (journaled on
        ``copies`` nodes). ``model``: a path, ``"digits"``, bytes or a ModelProto.

        An idle peer may run a tiny task at once and answer with its result instead
        (a *direct run*, docs/daemon.md): the handle is then already done and ``copies``
        is 0. ``direct=False`` always goes through the replicated task table.

        ``watch=False`` (implies ``direct=False``): only submit. This client neither
        fetches the result nor marks it collected, so it waits in the mesh for a later
        ``attach`` (``meshgpu submit --no-wait``); the handle never resolves here.
        ``label``: a name for the task, shown by ``meshgpu tasks`` (the CLI gives the
        input file's name)."""
        blob = ModelBlob.of(model)
        fields = submit_fields(
            blob, priority, replicas, deadline_s, device_type, min_memory, fp16, require, prefer
        )
        if label is not None:
            fields["label"] = check_label(label)
        if not direct or not watch:
            fields["direct"] = False
        fields["submission"] = new_submission_id()  # the same on every resend
        prepared = prepare_inputs(inputs, self.max_task_bytes, self.chunk_bytes, blob)
        if isinstance(prepared, TensorBlob):  # larger than a request: uploaded in ranges
            reply = await self._submit_request(
                blob, "submit", upload=prepared, **{**fields, "direct": False}
            )
        else:
            reply = await self._submit_request(blob, "submit", inputs=prepared, **fields)
        if not watch:
            handle = AsyncTaskHandle(
                reply["task_id"], reply.get("copies", 0), reply.get("replicas", 0)
            )
        elif reply.get("direct"):
            handle = AsyncTaskHandle(str(reply["task_id"]))
            handle.resolve(Outcome.from_message(reply))
            handle = self._track(handle)
        else:
            handle = self._handle_of(reply)
        handle.label = label
        return handle

    async def _submit_request(
        self,
        blob: ModelBlob,
        op: str,
        upload: TensorBlob | None = None,
        sent_on: list[Any] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """One ``submit``/``submit_batch`` request, retried on another peer when the link
        breaks, the peer leaves or its disk is full, and after re-uploading an evicted
        model. ``upload``: inputs too large for the request, uploaded in ranges to the
        peer first (again on each retry) and named by their digest. ``sent_on``: each
        link the request goes out on is appended to it."""
        full: list[str] = []
        uploads_left = 3
        while True:
            link = await self._current_link()
            try:
                await link.ensure_model(blob)
                if upload is not None:
                    fields["input_digest"] = await link.upload_inputs(
                        upload, self.chunk_bytes, replicas=int(fields.get("replicas", 2))
                    )
                async with self._submit_slots:
                    if sent_on is not None:
                        sent_on.append(link)
                    return await link.rpc.call(op, **fields)
            except RequestFailedError as error:
                if "leaving the mesh" in str(error):
                    link.fail(str(error))
                    continue
                if "upload it first" in str(error):  # evicted from its cache since
                    link.models.discard(blob.digest)
                    continue
                if "upload them first" in str(error) and uploads_left:  # dropped since
                    uploads_left -= 1
                    continue
                if error.kind == "DiskFullError" and await self._leave_full_peer(full):
                    continue
                raise
            except ClientError as error:
                link.fail(str(error))

    async def _leave_full_peer(self, full: list[str]) -> bool:
        """The peer we talk to refused work because its disk is full: move to another
        live one (the refused tasks were never accepted, so sending them again there
        duplicates nothing). False, and the refusal stands, once every live member has
        refused for that reason during this request, or as many refusals came as there
        are live members (``full``: the refusals so far; the failover order may offer a
        full peer again)."""
        link = await self._current_link()
        full.append(link.node_id)
        live = {str(m.get("node_id")) for m in self.members if m.get("state") == "alive"}
        if not live - set(full) or len(full) >= len(live):
            return False
        logger.warning("%s cannot store inputs (disk full); moving to another peer", link.node_id)
        link.fail(f"{link.node_id}'s disk is full")
        return True

    def _handle_of(self, reply: dict[str, Any], deferred: bool = False) -> AsyncTaskHandle:
        return self._track(
            AsyncTaskHandle(
                reply["task_id"],
                reply.get("copies", 0),
                reply.get("replicas", 0),
                deferred=deferred,
            )
        )

    def attach(self, task_id: str, *, acknowledge: bool = True) -> AsyncTaskHandle:
        """A handle for a task submitted earlier (e.g. ``meshgpu submit --no-wait``).
        ``acknowledge=False``: the mesh keeps the result until the caller calls
        :meth:`collected` (``meshgpu collect`` does once the file is written)."""
        handle = self._handles.get(task_id)
        if handle is not None:
            return handle
        if is_direct_id(task_id):
            # Never sent: the mesh does not know a direct run's id (its result was the
            # submit's answer), and one bad id would spoil a whole results request.
            handle = AsyncTaskHandle(task_id)
            error = TaskFailedError(
                task_id,
                "a direct run's result was in the answer to its submit and is not kept in "
                "the mesh; submit with direct=False to collect a result later by id",
            )
            handle.resolve(Outcome(task_id, "failed", None, error=error))
            self._handles[task_id] = handle
            return handle
        handle = AsyncTaskHandle(task_id, deferred=not acknowledge)
        handle.attached = True
        return self._track(handle)

    async def status(self) -> dict[str, Any]:
        """The entry peer's ``status`` (members, leader, view, queue, counters)."""
        status = await self._call("status")
        self.members = list(status.get("members", []))
        return status

    async def tasks(self, state: str | None = None) -> list[dict[str, Any]]:
        """The entry peer's task table rows, optionally only those in ``state``."""
        fields = {} if state is None else {"state": state}
        return list((await self._call("tasks", **fields))["tasks"])

    async def catalog_model(self, name: str) -> ModelBlob:
        """The mesh catalog's model ``name`` (``meshgpu models add``), to submit like a
        file: its bytes as the peer holds them, checked against the catalog's sha256.
        A ConfigError names the catalog's models when ``name`` is none of them, and says
        so when the peer does not hold the bytes yet (a node fetches a catalog model
        when it first runs it)."""
        models = list((await self._call("catalog"))["models"])
        entry = next((model for model in models if model.get("name") == name), None)
        if entry is None:
            names = ", ".join(str(model.get("name")) for model in models) or "none"
            raise ConfigError(f"the mesh's catalog has no model {name!r} (its models: {names})")
        digest = str(entry["digest"])
        while True:
            link = await self._current_link()
            data = bytearray()
            try:
                async for answer in link.rpc.stream("get_model", digest=digest):
                    data += answer["data"]
                break
            except RequestFailedError as error:
                raise ConfigError(
                    f"catalog model {name!r} ({digest[:12]}) is not on {link.node_id} yet "
                    f"({error}); run it once over HTTP (POST /v2/models/{name}/infer) or "
                    "give its .onnx file"
                ) from None
            except ClientError as error:
                link.fail(str(error))
        blob = ModelBlob(bytes(data), hashlib.sha256(data).hexdigest(), name)
        if blob.digest != digest:
            raise ConfigError(
                f"catalog model {name!r}: {link.node_id} sent bytes of sha256 "
                f"{blob.digest[:12]}, not the catalog's {digest[:12]}"
            )
        link.models.add(digest)  # the peer has it: no has_model to ask
        return blob

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """Any other API op (docs/client-api.md), retried on another peer if the link
        breaks: the answer's fields, less the request id the protocol matched it by
        (``status --json`` printed it as the status's ``"id"``)."""
        answer = await self._call(op, **fields)
        return {name: value for name, value in answer.items() if name != "id"}

    # --- requests over the current link ----------------------------------------------

    async def _current_link(self) -> Link:
        if self._nursery is None or self._closed:
            raise client_not_open(self._nursery is not None)
        while True:
            if self._fatal is not None:
                raise self._fatal
            link = self._link
            if link is not None and not link.broken.is_set():
                return link
            await self._link_changed.wait()

    async def _call(self, op: str, **fields: Any) -> dict[str, Any]:
        while True:
            link = await self._current_link()
            try:
                return await link.rpc.call(op, **fields)
            except RequestFailedError:
                raise
            except ClientError as error:
                link.fail(str(error))

    # --- the supervisor and its link tasks ---------------------------------------------

    async def _supervise(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        started = False
        browsed = False
        lost: tuple[Candidate, str, str, float] | None = None  # what failed, why, when
        tried: list[str] = []
        key_refusals: list[MeshKeyError | IncompatibleDaemonError] = []
        while True:
            exclude = [] if lost is None else [lost[0].address]
            candidates = failover_order(self.members, self._seeds, exclude)
            served = None
            for candidate in candidates:
                served = await self._serve(candidate, lost, task_status if not started else None)
                if isinstance(served, Link):
                    started = True
                    lost = (candidate, served.node_id, served.why, trio.current_time())
                    tried.clear()
                    key_refusals.clear()
                    break
                if isinstance(served, MeshKeyError | IncompatibleDaemonError):
                    key_refusals.append(served)
                    served = str(served)
                tried.append(f"{candidate}: {served}")
            if isinstance(served, Link):
                continue
            if not started and not browsed and self._may_browse:
                browsed = True
                found = await trio.to_thread.run_sync(browse_mdns, self.mdns_timeout, self.mesh)
                self._seeds = [*self._seeds, *found]
                if found:
                    continue
                tried.append(f"mDNS: no daemon answered within {self.mdns_timeout} s")
            if not started:
                # A daemon that answered with another key or protocol version is the one
                # to fix, whatever the other candidates (a default port with nothing on
                # it) said.
                raise key_refusals[0] if key_refusals else no_daemon_error(tried)
            assert lost is not None
            if trio.current_time() - lost[3] > self.failover_timeout:
                self._give_up(
                    f"lost node {lost[1]} ({lost[2]}) and no other peer answered within "
                    f"{self.failover_timeout} s; tried " + "; ".join(tried[-6:])
                )
                return
            await trio.sleep(0.2)

    async def _serve(
        self,
        candidate: Candidate,
        lost: tuple[Candidate, str, str, float] | None,
        task_status: trio.TaskStatus[None] | None,
    ) -> Link | MeshKeyError | IncompatibleDaemonError | str:
        """Connect to ``candidate`` and serve the link until it breaks. Returns the broken
        link, or why no link was made (a MeshKeyError when keys do not match)."""
        link: Link | None = None
        try:
            async with open_rpc(
                candidate.address,
                self._authenticator,
                connect_timeout=self.connect_timeout,
                max_frame_bytes=self.max_frame_bytes,
            ) as rpc:
                with trio.fail_after(self.connect_timeout * 2):
                    pong = await rpc.call("ping")
                    status = await rpc.call("status")
                if self.mesh is not None and status.get("node", {}).get("mesh") != self.mesh:
                    return f"in mesh {status.get('node', {}).get('mesh')!r}, not {self.mesh!r}"
                self.members = list(status.get("members", []))
                link = Link(rpc, candidate, str(pong.get("node_id")))
                if lost is not None:
                    self.failovers.append(
                        Failover(lost[1], link.node_id, lost[2], trio.current_time() - lost[3])
                    )
                    logger.warning(
                        "lost %s (%s); now talking to %s", lost[1], lost[2], link.node_id
                    )
                if task_status is not None:
                    task_status.started()
                await self._run_link(link)
        except (ClientError, trio.TooSlowError) as error:
            if link is None:
                refusal = key_refusal(error, candidate, self.key)
                return refusal if refusal is not None else str(error) or "timed out"
            link.fail(str(error) or "timed out")
        return link if link is not None else "no answer"

    async def _run_link(self, link: Link) -> None:
        self._link = link
        self._link_changed.fire()
        try:
            async with trio.open_nursery() as nursery:
                link.nursery = nursery
                nursery.start_soon(self._watch, link)
                nursery.start_soon(self._request_results, link)
                nursery.start_soon(self._acknowledge, link)
                await link.broken.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._link = None
            self._link_changed.fire()

    async def _watch(self, link: Link) -> None:
        """Refresh the member list; a peer that does not answer in time is dropped."""
        while True:
            await trio.sleep(self.status_interval)
            try:
                with trio.fail_after(max(5.0, 3 * self.status_interval)):
                    status = await link.rpc.call("status")
            except (ClientError, trio.TooSlowError) as error:
                link.fail(str(error) or "status timed out")
                return
            self.members = list(status.get("members", []))
            if status.get("node", {}).get("leaving"):
                link.fail(f"node {link.node_id} is leaving the mesh")
                return


def _path(value: str | os.PathLike[str] | None) -> Path | None:
    return None if value is None else Path(value)
