"""The ops of the TCP API: what clients and peer daemons can ask of a daemon.

Each op is one method ``op_<name>(request, responder) -> final response fields``; the
shapes are documented in docs/client-api.md. Client ops turn into core events
(``SubmitTask``, ``ResultRequested``, ``ResultCollected``) and wait for the effects that
answer them (``TaskAccepted``/``TaskRejected``, ``TaskResolved``). The peers' ops, which
serve the data plane from this node's stores, are peer_ops.py; the submission path, with
its waiting state, is submissions.py.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import msgpack
import trio

from meshgpu.core import effects as fx
from meshgpu.core.events import Event, ResultCollected, ResultRequested
from meshgpu.core.membership import MemberInfo
from meshgpu.core.tasks import Resolution, TaskId
from meshgpu.core.types import NodeId
from meshgpu.daemon.api import Handler, Message, Responder, request_field, request_seconds
from meshgpu.daemon.auth.envelope import Buffer
from meshgpu.daemon.framing import unpack
from meshgpu.daemon.groups import (
    MEMBER_RESULT,
    MemberId,
    member_answers,
    member_result_key,
    parse_task_ref,
)
from meshgpu.daemon.modelstore import ModelWriter, check_digest
from meshgpu.daemon.payloads import (
    group_result_from_bytes,
    tensors_from_bytes,
)
from meshgpu.daemon.results import task_key
from meshgpu.daemon.submissions import MAX_BATCH, Submissions
from meshgpu.errors import DecodeError, MeshError, TaskError

if TYPE_CHECKING:
    from meshgpu.daemon.catalog import ModelCatalog
    from meshgpu.daemon.early_results import EarlyResults
    from meshgpu.daemon.modelstore import ModelStore
    from meshgpu.daemon.payloads import PayloadStore
    from meshgpu.daemon.status import StatusReport


class ResultStore(Protocol):
    """What the ops need of the data plane: store a result pushed here, and read one back
    (here or from a live result holder) in ranges of at most ``chunk`` bytes."""

    @property
    def chunk(self) -> int: ...

    async def store_result(self, key: Any, data: bytes, attempt: int | None) -> None: ...

    async def result_head(
        self, task_id: TaskId, holders: Iterable[NodeId], attempt: int | None = None
    ) -> tuple[Buffer | None, int]: ...

    async def result_range(
        self,
        task_id: TaskId,
        holders: Iterable[NodeId],
        offset: int,
        length: int,
        *,
        attempt: int | None = None,
    ) -> tuple[Buffer, int, int | None]: ...

    async def obtain_result(
        self, task_id: TaskId, holders: Iterable[NodeId], attempt: int | None = None
    ) -> bytes: ...


class ClientHandlers:
    """The API ops of one daemon, and the state that connects answers to waiters.

    The wiring hands it the stores it serves from, the status report, the submissions,
    the catalog, the data plane's results (:class:`ResultStore`), and callables: feed the
    node an event, the members the node knows, and the event that the next observable
    change sets (``changed``, for the ``wait`` op). :meth:`execute` is invoked by the
    effect queue for the effects that answer clients."""

    def __init__(
        self,
        node_id: NodeId,
        dir_token: str,
        *,
        status: StatusReport,
        submissions: Submissions,
        results: ResultStore,
        payloads: PayloadStore,
        models: ModelStore,
        catalog: ModelCatalog,
        members: Callable[[], Mapping[NodeId, MemberInfo]],
        changed: Callable[[], trio.Event],
        feed: Callable[[Event], None],
        early: EarlyResults | None = None,
    ) -> None:
        self.node_id = node_id
        self.early = early
        """Large results being stored here, which a ``results`` stream with ``early``
        announces as ``storing`` (early_results.py)."""
        self.dir_token = dir_token
        self.status = status
        self.results = results
        self.payloads = payloads
        self.models = models
        self.catalog = catalog
        self._members = members
        self._changed = changed
        self._feed = feed
        self.resolved: dict[TaskId, fx.TaskResolved] = {}
        self._resolution = trio.Event()
        self._uploads: dict[tuple[str | None, str], ModelWriter] = {}
        self._collected_members: dict[TaskId, set[int]] = {}
        """Member indices named in ``collected`` per group not yet collected whole."""
        self._spilled: dict[TaskId, set[tuple[str, int, int, int]]] = {}
        """Members' outputs stored here for ranged fetches (``_spill_if_large``), per
        group, dropped when the group is collected."""
        self.submissions = submissions

    def table(self) -> dict[str, Handler]:
        return {
            name.removeprefix("op_"): getattr(self, name)
            for name in dir(self)
            if name.startswith("op_")
        }

    # --- effects that answer clients ----------------------------------------------

    def execute(self, effect: Any) -> None:
        if isinstance(effect, fx.TaskAccepted | fx.TaskRejected):
            self.submissions.answer(effect)
        elif isinstance(effect, fx.TaskResolved):
            self.resolved[effect.task_id] = effect
            self._resolution.set()
            self._resolution = trio.Event()

    async def resolution(self) -> None:
        """Wait until the next task is resolved (any task)."""
        await self._resolution.wait()

    # --- client ops --------------------------------------------------------------------

    async def op_ping(self, request: Message, responder: Responder) -> Message:
        """Who answers: the node id, and the token of its data dir (a node that shares
        our id tells a copied data dir from a second node of the same name by it)."""
        return {"node_id": self.node_id, "dir_token": self.dir_token}

    async def op_status(self, request: Message, responder: Responder) -> Message:
        return self.status.snapshot()

    async def op_member(self, request: Message, responder: Responder) -> Message:
        """What this node knows of one member (used by a starting node to spot a twin)."""
        info = self._members().get(request_field(request, "node_id", str))
        if info is None:
            return {"known": False}
        return {
            "known": True,
            "address": list(info.address),
            "state": info.state.value,
            "incarnation": info.incarnation,
        }

    async def op_wait(self, request: Message, responder: Responder) -> Message:
        """Answer with the status once it satisfies the request (for tests and the demo).

        ``alive``: at least that many live members; ``after_generation``: a membership or
        leader change after that generation; ``counter``: ``[group, name, at_least]``.
        Re-checked whenever something changes; fails after ``timeout`` seconds.
        """
        alive = request.get("alive")
        generation = request.get("after_generation")
        counter = request.get("counter")
        timeout = request_seconds(request, "timeout", 30.0)

        def satisfied(status: Message) -> bool:
            live = sum(1 for m in status["members"] if m["state"] in ("alive", "suspect"))
            if isinstance(alive, int) and live < alive:
                return False
            if isinstance(generation, int) and status["generation"] <= generation:
                return False
            if isinstance(counter, list) and len(counter) == 3:
                group, name, at_least = counter
                if status["counters"].get(group, {}).get(name, 0) < at_least:
                    return False
            return True

        with trio.move_on_after(timeout):
            while True:
                changed = self._changed()
                status = self.status.snapshot()
                if satisfied(status):
                    return status
                await changed.wait()
        raise TaskError(f"condition not reached within {timeout} s: {request}")

    async def op_tasks(self, request: Message, responder: Responder) -> Message:
        state = request.get("state")
        return {"tasks": self.status.task_rows(state if isinstance(state, str) else None)}

    async def op_has_model(self, request: Message, responder: Responder) -> Message:
        digest = check_digest(request_field(request, "digest", str))
        return {"has": self.models.has(digest)}

    async def op_put_model(self, request: Message, responder: Responder) -> Message:
        """Upload a model, whole or in chunks (``more: true`` on all but the last)."""
        digest = check_digest(request_field(request, "digest", str))
        data = request_field(request, "data", (bytes, memoryview))
        more = bool(request.get("more", False))
        slot = (responder.peer, digest)
        if self.models.has(digest) and slot not in self._uploads:
            return {"digest": digest, "stored": False}
        writer = self._uploads.get(slot)
        if writer is None:
            writer = self._uploads[slot] = self.models.writer(digest)
        try:
            writer.write(data)
            if more:
                return {"digest": digest, "received": writer.size}
            del self._uploads[slot]
            await trio.to_thread.run_sync(writer.commit)
        except MeshError:
            self._uploads.pop(slot, None)
            raise
        return {"digest": digest, "stored": True}

    async def op_catalog(self, request: Message, responder: Responder) -> Message:
        """The model catalog: name -> digest and version (the shipped models included)."""
        return {"models": self.catalog.rows()}

    async def op_catalog_set(self, request: Message, responder: Responder) -> Message:
        """Name a model of this node's store in the mesh-wide catalog (upload it first),
        with optional batching settings (``max_batch``, ``max_delay_ms``)."""
        from meshgpu.daemon.catalog import batching_of_request

        max_batch, max_delay_us = batching_of_request(
            request.get("max_batch"), request.get("max_delay_ms")
        )
        return await self.catalog.set(
            request_field(request, "name", str),
            request_field(request, "digest", str),
            max_batch,
            max_delay_us,
        )

    async def op_catalog_remove(self, request: Message, responder: Responder) -> Message:
        return self.catalog.remove(request_field(request, "name", str))

    async def op_submit(self, request: Message, responder: Responder) -> Message:
        """One task (submissions.py): acknowledged, or run at once (direct.py)."""
        return await self.submissions.submit(request)

    async def op_submit_batch(self, request: Message, responder: Responder) -> Message:
        """Many tasks in one request (submissions.py)."""
        return await self.submissions.submit_batch(request)

    async def op_settle_submissions(self, request: Message, responder: Responder) -> Message:
        """What became of submissions a client cut off unanswered (submissions.py)."""
        ids = request_field(request, "submissions", list)
        if len(ids) > MAX_BATCH or not all(isinstance(i, str) for i in ids):
            raise DecodeError(f"'submissions' is a list of at most {MAX_BATCH} id strings")
        wait_s = request.get("wait_s", 0.0)
        if isinstance(wait_s, bool) or not isinstance(wait_s, int | float):
            raise DecodeError(f"'wait_s' is a number of seconds, got {wait_s!r}")
        return await self.submissions.settle(ids, float(wait_s))

    async def op_results(self, request: Message, responder: Responder) -> Message:
        """Stream one response per task id as each is resolved (done or failed). A member
        id of a task group (groups.py) is answered from its group's result, fetched once
        for all the members asked for in the same burst."""
        wanted: dict[TaskId, set[TaskId | MemberId]] = defaultdict(set)
        for text in request_field(request, "task_ids", list):
            ref = parse_task_ref(text)
            wanted[ref.group if isinstance(ref, MemberId) else ref].add(ref)
        include = bool(request.get("outputs", True))
        timeout = request_seconds(request, "timeout", math.inf)
        early = self.early if include and request.get("early") else None
        announced: set[tuple[TaskId, int | None]] = set()
        for task_id in wanted:
            if task_id not in self.resolved:
                self._feed(ResultRequested(task_id))
        with trio.move_on_after(timeout):
            while wanted:
                ready = [task_id for task_id in wanted if task_id in self.resolved]
                if early is not None:
                    await self._announce_storing(early, wanted, announced, responder)
                if not ready:
                    if early is None:
                        await self._resolution.wait()
                    else:
                        await _either(self._resolution, early.started)
                    continue
                outcomes = []
                for task_id in ready:
                    refs = wanted.pop(task_id)
                    members = sorted(ref for ref in refs if isinstance(ref, MemberId))
                    if members:
                        outcomes.extend(
                            await self._member_outcomes(self.resolved[task_id], members, include)
                        )
                    if task_id in refs:
                        outcomes.append(await self.outcome(self.resolved[task_id], include))
                await responder.partials(outcomes)  # one write for the burst
        pending = sorted(str(ref) for refs in wanted.values() for ref in refs)
        return {"task_id": None, "pending": pending}

    async def _announce_storing(
        self,
        early: EarlyResults,
        wanted: Mapping[TaskId, set[TaskId | MemberId]],
        announced: set[tuple[TaskId, int | None]],
        responder: Responder,
    ) -> None:
        """Tell a ``results`` stream with ``early`` which of its tasks' results started to
        arrive here (``storing``, with their size): the client may fetch them with
        ``get_result`` and ``early`` while they are stored, and holds them until the
        task's ``done`` of the same attempt comes (early_results.py); a newer attempt's
        push is announced again."""
        storing = []
        for task_id in wanted:
            if task_id in self.resolved or task_id not in wanted[task_id]:
                continue
            key = task_key(task_id)
            size, attempt = early.size(key), early.attempt(key)
            if size is not None and (task_id, attempt) not in announced:
                announced.add((task_id, attempt))
                storing.append(
                    {
                        "task_id": str(task_id),
                        "state": "storing",
                        "result_bytes": size,
                        "attempt": attempt,
                    }
                )
        if storing:
            await responder.partials(storing)

    async def _member_outcomes(
        self, resolved: fx.TaskResolved, members: list[MemberId], include: bool
    ) -> list[Message]:
        """The answers for ``members`` of one resolved group: its result blob is fetched
        once (even without ``include``: a member may have failed alone in it)."""
        group = await self.outcome(resolved, include=False)
        results: list[dict[str, Any]] | None = None
        attempt = self.status.attempt_of(resolved.task_id)
        if group["state"] == "done":
            try:
                blob = await self.results.obtain_result(
                    resolved.task_id, resolved.result_holders, attempt
                )
                results = group_result_from_bytes(blob)
                del blob
            except MeshError as error:
                group["state"] = "unavailable"
                group["reason"] = f"done, but the result cannot be fetched now: {error}"
        answers = member_answers(group, results, members, include)
        for member, answer in zip(members, answers, strict=True):
            if answer.get("outputs") is not None:
                await self._spill_if_large(member, answer, attempt)
        return answers

    async def _spill_if_large(self, member: MemberId, answer: Message, attempt: int | None) -> None:
        """A member whose outputs are larger than a range is answered as a large result
        is: its outputs are stored here (``MEMBER_RESULT``) and the answer names their
        size (``result_bytes``) and ``attempt``; the client fetches them with
        ``get_result`` on the member id, in ranges (peer_ops.py). A ``results`` frame
        then never carries more than a range of any member's outputs."""
        encoded = answer["outputs"]
        ordered = {name: encoded[name] for name in sorted(encoded)}
        if sum(len(tensor.get("data", b"")) for tensor in ordered.values()) <= self.results.chunk:
            return
        data = msgpack.packb(ordered, use_bin_type=True)
        key = member_result_key(member, attempt)
        try:
            await trio.to_thread.run_sync(self.payloads.put_bytes, key, MEMBER_RESULT, data)
        except MeshError as error:
            answer.update(
                state="unavailable",
                outputs=None,
                reason=f"done, but the result cannot be fetched now: {error}",
            )
            return
        self._spilled.setdefault(member.group, set()).add(key)
        answer.update(outputs=None, result_bytes=len(data), attempt=attempt)

    async def outcome(self, resolved: fx.TaskResolved, include: bool) -> Message:
        """The answer for one resolved task: its state, reason and worker, and with
        ``include`` its outputs (fetched from a result holder if need be)."""
        message: Message = {
            "task_id": str(resolved.task_id),
            "state": resolved.state.value,
            "reason": self.status.task_reason(resolved.task_id, resolved.reason),
            "worker": self.status.worker_of(resolved.task_id),
            "outputs": None,
        }
        if resolved.state is Resolution.DONE and include:
            try:
                attempt = self.status.attempt_of(resolved.task_id)
                blob, size = await self.results.result_head(
                    resolved.task_id, resolved.result_holders, attempt
                )
                if blob is None:
                    # Larger than one range: the client fetches it with get_result,
                    # or delivers what it fetched early of the same attempt.
                    message["result_bytes"] = size
                    message["attempt"] = attempt
                else:
                    tensors_from_bytes(blob)  # never hand a client a corrupt result
                    message["outputs"] = unpack(blob)
            except MeshError as error:
                message["state"] = "unavailable"
                message["reason"] = f"done, but the result cannot be fetched now: {error}"
        return message

    async def op_collected(self, request: Message, responder: Responder) -> Message:
        """The client has these outcomes: mark them delivered mesh-wide. For a task group
        the client sends the group's id once it holds every member's outcome. A member id
        is accepted too: it counts towards its group (in this daemon's memory only), and
        the group is collected once every member was named; a restart forgets the count,
        so clients should send the group id (the client library does)."""
        refs = [parse_task_ref(text) for text in request_field(request, "task_ids", list)]
        for ref in refs:
            self.collect(ref)
        return {"collected": len(refs)}

    def collect(self, ref: TaskId | MemberId) -> None:
        """A client holds the outcome of ``ref``: mark a task delivered; count a member
        towards its group (``op_collected``)."""
        if isinstance(ref, MemberId):
            if not self._member_collected(ref):
                return
            ref = ref.group
        self._collected_members.pop(ref, None)
        for key in self._spilled.pop(ref, ()):
            self.payloads.release.unlink(self.payloads.path(key, MEMBER_RESULT))
        self.resolved.pop(ref, None)
        self._feed(ResultCollected(ref))

    def _member_collected(self, member: MemberId) -> bool:
        """Count ``member`` collected; True once every member of its group is."""
        entry = self.status.entry(member.group)
        if entry is None:
            return False
        seen = self._collected_members.setdefault(member.group, set())
        seen.add(member.index)
        return len(seen) >= entry.spec.members


async def _either(first: trio.Event, second: trio.Event) -> None:
    """Wait until either event is set."""
    async with trio.open_nursery() as nursery:

        async def wait(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(wait, first)
        nursery.start_soon(wait, second)
