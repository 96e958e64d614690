"""What the HTTP part (meshgpu/http/) may ask of this daemon: its :class:`Sources`.

The one place that knows both sides. An infer request becomes a mesh task through the
same path as a client's ``submit`` (submissions.py: a direct run when this node is idle,
the replicated table otherwise), and its outcome is collected like the client library
does (``ResultRequested``, the resolution, ``ResultCollected``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import trio

from meshgpu.core import effects as fx
from meshgpu.core.events import Event, ResultCollected, ResultRequested
from meshgpu.core.tasks import Resolution, TaskId, is_unsatisfiable
from meshgpu.core.types import Address, NodeId
from meshgpu.daemon.catalog import SHIPPED, shipped_digests
from meshgpu.daemon.groups import MemberId, parse_task_ref
from meshgpu.daemon.payloads import decode_tensors, encode_tensors, tensors_from_bytes
from meshgpu.daemon.status import DEADLINE_REASON
from meshgpu.errors import MeshError, PermanentTaskError, StorageError, TaskError
from meshgpu.http.app import (
    DeadlineExceeded,
    FailedForGood,
    InferOutcome,
    Sources,
    Unavailable,
)
from meshgpu.http.models import CatalogModel, ModelInfo, read_model_info

if TYPE_CHECKING:
    from meshgpu.core.node import Node
    from meshgpu.daemon.catalog import ModelCatalog
    from meshgpu.daemon.durability import GroupCommit
    from meshgpu.daemon.execution import Executor
    from meshgpu.daemon.handlers import ClientHandlers
    from meshgpu.daemon.modelstore import ModelStore
    from meshgpu.daemon.status import StatusReport
    from meshgpu.http.server import HttpServer
    from meshgpu.http.settings import HttpSettings

RESULT_TIMEOUT_S = 300.0
"""Longest an infer request waits for its task's outcome."""
EXPIRY_SLACK_S = 2.0
"""How long past its deadline a request waits for the mesh to expire its task (the
leader checks deadlines every ``tick_interval_s``, 0.1 s, and the failure then travels
to this node) before it answers 504 itself."""
TARGETS_TIMEOUT_S = 2.0
SHARED_GROUPS = 256
"""Coalesced groups whose decoded answers are kept for their members' requests."""


@dataclass(eq=False)
class _SharedGroup:
    """One coalesced group's member answers, decoded once for the requests waiting here."""

    ready: trio.Event = field(default_factory=trio.Event)
    answers: list[dict[str, Any]] | None = None
    taken: int = 0


class Transfers(Protocol):
    """What the HTTP side needs of the data plane: a model or a result brought here."""

    async def obtain_model(self, digest: str, sources: Iterable[NodeId]) -> None: ...

    async def obtain_result(
        self, task_id: TaskId, holders: Iterable[NodeId], attempt: int | None = None
    ) -> bytes: ...


class PeerCalls(Protocol):
    """One request to a peer's TCP API (:class:`~meshgpu.daemon.rpc.ConnectionPool`)."""

    async def call(
        self, address: Address, op: str, *, timeout: float, **fields: Any
    ) -> dict[str, Any]: ...


class DaemonHttpSources:
    """The daemon side of the HTTP app's :class:`Sources`: the wiring hands it the parts
    an infer request passes through (the client ops' submissions and resolutions, the data
    plane, the executor, the stores) and callables for what changes while it runs."""

    def __init__(
        self,
        node_id: NodeId,
        node: Node,
        *,
        handlers: ClientHandlers,
        status: StatusReport,
        transfers: Transfers,
        executor: Executor,
        models: ModelStore,
        catalog: ModelCatalog,
        peers: PeerCalls,
        feed: Callable[[Event], None],
        ready: Callable[[], bool],
        leaving: Callable[[], bool],
    ) -> None:
        self.node_id = node_id
        self.node = node
        self.handlers = handlers
        self.status = status
        self.transfers = transfers
        self.executor = executor
        self.models = models
        self.catalog_part = catalog
        self.peers = peers
        self._feed = feed
        self._ready = ready
        self._leaving = leaving
        self._infos: dict[str, ModelInfo] = {}
        self._http_of: dict[tuple[str, int], str | None] = {}
        """(node id, incarnation) -> that member's HTTP ``host:port`` (None: no HTTP)."""
        self._group_answers: OrderedDict[TaskId, _SharedGroup] = OrderedDict()

    def executions_by_model(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(model name, version) -> (device runs, rows run) of this node's executor, by
        the catalog's names (a model no name holds: the first 12 digits of its digest,
        version "")."""
        named: dict[str, list[tuple[str, str]]] = {}
        for name, (digest, version) in self.catalog_part.names().items():
            named.setdefault(digest, []).append((name, str(version)))
        counts: dict[tuple[str, str], tuple[int, int]] = {}
        for digest, pair in self.executor.batch_counts.per_model.items():
            for key in named.get(digest, [(digest[:12], "")]):
                counts[key] = pair
        return counts

    def sources(self) -> Sources:
        return Sources(
            node_id=lambda: self.node_id,
            ready=lambda: self._ready() and not self._leaving(),
            status=self.status.snapshot,
            tasks=self.status.task_rows,
            catalog=self.catalog,
            model_info=self.model_info,
            infer=self.infer,
            load=self.load,
            unload=self.unload,
            # The executor's sessions, not a flag set by `load`: a model that ran here is
            # warm too, and a loaded one the session cache evicted is not.
            loaded=lambda model: self.executor.has_session(model.digest),
            targets=self.targets,
        )

    def catalog(self) -> Mapping[str, CatalogModel]:
        return {
            name: CatalogModel(name, str(version), digest)
            for name, (digest, version) in self.catalog_part.names().items()
        }

    async def _local_path(self, model: CatalogModel) -> Path:
        """The model's file in this node's store, fetched from a live member if need be."""
        models = self.models
        if not models.has(model.digest):
            shipped = SHIPPED.get(model.name)
            if shipped is not None and model.digest == shipped_digests().get(model.name):
                data = await trio.to_thread.run_sync(shipped.read_bytes)
                await trio.to_thread.run_sync(models.put, data, model.digest)
            else:
                await self.transfers.obtain_model(model.digest, ())
        path = models.path(model.digest)
        if path is None:
            raise StorageError(f"model {model.name!r} ({model.digest[:12]}) is not on this node")
        return path

    async def model_info(self, model: CatalogModel) -> ModelInfo:
        info = self._infos.get(model.digest)
        if info is None:
            path = await self._local_path(model)
            info = await trio.to_thread.run_sync(read_model_info, path)
            self._infos[model.digest] = info
        return info

    async def load(self, model: CatalogModel) -> None:
        """Warm the model on this node: its bytes here and its session loaded."""
        path = await self._local_path(model)
        await self.executor.session(model.digest, path)

    async def unload(self, model: CatalogModel) -> None:
        self.executor.drop_session(model.digest)

    async def infer(
        self,
        model: CatalogModel,
        feeds: dict[str, np.ndarray],
        placement: Mapping[str, list[str]] | None = None,
        deadline_s: float | None = None,
    ) -> InferOutcome:
        """Run one request as a mesh task: ``placement`` its ``require``/``prefer``
        labels, ``deadline_s`` its deadline (the task's ``deadline_s``, as the client's
        ``submit(deadline_s=...)`` and ``meshgpu submit --deadline`` set it: the leader
        fails a task not done in time, with the deadline named)."""
        if self._leaving():
            raise Unavailable(f"node {self.node_id} is leaving the mesh; send to another node")
        await self._local_path(model)
        request: dict[str, Any] = {"model_digest": model.digest, "inputs": encode_tensors(feeds)}
        request.update(placement or {})
        if deadline_s is not None:
            request["deadline_s"] = deadline_s
        started = time.perf_counter()
        try:
            answer = await self.handlers.submissions.submit(request)
        except TaskError as error:
            raise Unavailable(str(error)) from None
        if answer.get("direct"):
            if answer["state"] != "done":
                reason = str(answer["reason"])
                raise failure(f"the task failed on {answer['worker']}: {reason}", reason)
            return InferOutcome(
                decode_tensors(answer["outputs"]),
                answer["worker"],
                answer["task_id"],
                compute_s=time.perf_counter() - started,
            )
        ref = parse_task_ref(answer["task_id"])
        if isinstance(ref, MemberId):  # coalesced with concurrent requests (coalescing.py)
            try:
                return await self._member_outcome(ref, deadline_s)
            finally:
                self.handlers.collect(ref)
        try:
            outcome = await self._outcome(ref, deadline_s)
        finally:
            self.handlers.resolved.pop(ref, None)
            self._feed(ResultCollected(ref))
        return outcome

    async def _resolution_of(
        self, task_id: TaskId, deadline_s: float | None = None
    ) -> fx.TaskResolved:
        """The task's resolution, waited for ``RESULT_TIMEOUT_S`` at most, or until a
        little past its deadline (``EXPIRY_SLACK_S``) when it has one."""
        handlers = self.handlers
        self._feed(ResultRequested(task_id))
        wait_s = RESULT_TIMEOUT_S
        if deadline_s is not None:
            wait_s = min(wait_s, deadline_s + EXPIRY_SLACK_S)
        with trio.move_on_after(wait_s):
            while task_id not in handlers.resolved:
                await handlers.resolution()
        resolved = handlers.resolved.get(task_id)
        if resolved is None:
            if deadline_s is not None and wait_s < RESULT_TIMEOUT_S:
                raise DeadlineExceeded(
                    f"task {task_id}: {DEADLINE_REASON}: not done within {deadline_s:g} s "
                    "(the request's timeout parameter); the mesh fails it shortly"
                )
            raise DeadlineExceeded(
                f"task {task_id} was not done within {RESULT_TIMEOUT_S:.0f} s; it goes on in "
                "the mesh"
            )
        return resolved

    async def _member_outcome(
        self, member: MemberId, deadline_s: float | None = None
    ) -> InferOutcome:
        """The outcome of one member of a coalesced group, from the group's result
        (fetched and decoded once for the members waiting on it here)."""
        resolved = await self._resolution_of(member.group, deadline_s)
        shared = self._group_answers.get(member.group)
        if shared is None:
            shared = self._group_answers[member.group] = _SharedGroup()
            while len(self._group_answers) > SHARED_GROUPS:
                self._group_answers.popitem(last=False)
            try:
                shared.answers = await self.handlers._member_outcomes(
                    resolved,
                    [MemberId(member.group, i) for i in range(self._members(member))],
                    True,
                )
            finally:
                shared.ready.set()
        else:
            await shared.ready.wait()
        shared.taken += 1
        if shared.taken >= len(shared.answers or ()):
            self._group_answers.pop(member.group, None)
        if shared.answers is None or member.index >= len(shared.answers):
            raise Unavailable(f"task {member} has no answer here now; send it again")
        message = shared.answers[member.index]
        if message["state"] == "unavailable" or _unplaceable(message):
            raise Unavailable(f"task {member} {message['reason']}")
        if message["state"] != "done" or message["outputs"] is None:
            reason = str(message["reason"])
            raise failure(f"task {member} {message['state']}: {reason}", reason)
        return InferOutcome(decode_tensors(message["outputs"]), message["worker"], str(member))

    def _members(self, member: MemberId) -> int:
        entry = self.status.entry(member.group)
        return member.index + 1 if entry is None else entry.spec.members

    async def _outcome(self, task_id: TaskId, deadline_s: float | None = None) -> InferOutcome:
        handlers = self.handlers
        resolved = await self._resolution_of(task_id, deadline_s)
        message: dict[str, Any] = await handlers.outcome(resolved, True)
        if message["state"] == "unavailable" or _unplaceable(message):
            # done, its holders unreachable now; or no live node to run it: retry later
            raise Unavailable(f"task {task_id} {message['reason']}")
        if resolved.state is not Resolution.DONE or message["state"] != "done":
            reason = str(message["reason"])
            raise failure(f"task {task_id} {message['state']}: {reason}", reason)
        if message["outputs"] is not None:
            outputs = decode_tensors(message["outputs"])
        else:  # larger than one range: fetched whole from a result holder
            attempt = message.get("attempt")  # the attempt done names: its bytes only
            blob = await self.transfers.obtain_result(task_id, resolved.result_holders, attempt)
            outputs = tensors_from_bytes(blob)
        return InferOutcome(outputs, message["worker"], str(task_id))

    async def targets(self) -> list[str]:
        """``host:port`` of each live member's HTTP port, asked once per incarnation."""
        targets = []
        members = self.node.members()
        for node_id in sorted(self.node.live_members()):
            info = members.get(node_id)
            if info is None:
                continue
            key = (node_id, info.incarnation)
            if key not in self._http_of:
                try:
                    if node_id == self.node_id:
                        status = {"node": {"http": self.status.http_address()}}
                    else:
                        status = await self.peers.call(
                            info.address, "status", timeout=TARGETS_TIMEOUT_S
                        )
                except (MeshError, OSError, trio.TooSlowError):
                    continue  # asked again at the next discovery
                self._http_of[key] = _target(status["node"].get("http"), info.address[0])
            target = self._http_of[key]
            if target is not None:
                targets.append(target)
        return targets


def _permanent_error_names() -> frozenset[str]:
    """The class names of the errors that fail a task for good (PermanentTaskError and
    every subclass: InputError, ModelError, UnsupportedOperatorError)."""
    names, classes = set(), [PermanentTaskError]
    while classes:
        cls = classes.pop()
        names.add(cls.__name__)
        classes.extend(cls.__subclasses__())
    return frozenset(names)


def failure(message: str, reason: str) -> MeshError:
    """What a failed task is answered as, by its ``reason``: a deadline that passed
    (DEADLINE_REASON, as the leader's expiry writes it) is DeadlineExceeded (504); a
    permanent error where it ran, which workers report as ``<error class>: <message>``
    (dataplane.py, direct.py, execution.py), is FailedForGood (400); any other reason
    (a device error after its retries, a result that could not be stored) is a
    TaskError (500)."""
    if reason.startswith(DEADLINE_REASON):
        return DeadlineExceeded(message)
    if reason.split(":", 1)[0] in _permanent_error_names():
        return FailedForGood(message)
    return TaskError(message)


def _unplaceable(message: Mapping[str, Any]) -> bool:
    """The task failed because no live node carries its required labels (the leader's
    placement check): the mesh cannot run it now, which says nothing against the
    request, so the HTTP answer is 503 (docs/http-api.md), not a failed task's 500."""
    return message["state"] == "failed" and is_unsatisfiable(str(message["reason"] or ""))


def _target(http: Any, member_host: str) -> str | None:
    if not isinstance(http, dict):
        return None
    bind = http.get("bind")
    host = member_host if bind in (None, "0.0.0.0", "::") else bind
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{http['port']}"


def build_http_server(
    sources_part: DaemonHttpSources,
    settings: HttpSettings,
    *,
    daemon_bind: str,
    commit: GroupCommit,
    changed: Callable[[], trio.Event],
    counters: dict[str, int] | None = None,
) -> HttpServer:
    """The daemon's HTTP part: its app over this daemon's sources, and the server (the
    group commit's syncs feed its fsync histogram; ``changed`` wakes the dashboard;
    the connection bounds count in ``counters``)."""
    from meshgpu.http.app import build_app
    from meshgpu.http.dashboard import Dashboard
    from meshgpu.http.metrics import InferenceStats, fsync_histogram, new_registry
    from meshgpu.http.server import HttpServer
    from meshgpu.http.settings import checked_bind
    from meshgpu.http.tokens import TokenTable

    host = checked_bind(settings, daemon_bind)
    tokens = None if settings.tokens is None else TokenTable.load(settings.tokens)
    stats = InferenceStats(sources_part.executions_by_model)
    registry = new_registry(sources_part.status.snapshot, stats)
    commit.on_sync = fsync_histogram(registry).observe
    sources = sources_part.sources()

    async def wait_changed() -> None:
        await changed().wait()

    dashboard = Dashboard(
        sources.status, lambda: sources.tasks(None), sources.catalog, stats, wait_changed
    )
    app = build_app(
        sources,
        stats,
        registry,
        tokens=tokens,
        max_body_bytes=settings.max_body_bytes,
        dashboard=dashboard,
    )
    return HttpServer(app, host, settings, background=[dashboard.run], counters=counters)
