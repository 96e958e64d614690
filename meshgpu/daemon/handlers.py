"""The ops of the TCP API: what clients and peer daemons can ask of a daemon.

Each op is one method ``op_<name>(request, responder) -> final response fields``; the
shapes are documented in docs/client-api.md. Client ops turn into core events
(``SubmitTask``, ``ResultRequested``, ``ResultCollected``) and wait for the effects that
answer them (``TaskAccepted``/``TaskRejected``, ``TaskResolved``); peer ops serve the data
plane from this node's stores. The submission path, with its waiting state, is submissions.py.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import trio

from meshgpu.core import effects as fx
from meshgpu.core.events import Event, ResultCollected, ResultRequested
from meshgpu.core.membership import MemberInfo
from meshgpu.core.tasks import Resolution, TaskId
from meshgpu.core.types import NodeId
from meshgpu.daemon.api import Handler, Message, Responder, request_field
from meshgpu.daemon.blobs import BlobWriter, read_layout
from meshgpu.daemon.dataplane import INPUTS, MODEL_CHUNK_BYTES
from meshgpu.daemon.framing import unpack
from meshgpu.daemon.groups import MemberId, member_answers, parse_task_ref
from meshgpu.daemon.modelstore import ModelWriter, check_digest
from meshgpu.daemon.payloads import (
    check_result_bytes,
    group_result_from_bytes,
    tensors_from_bytes,
)
from meshgpu.daemon.results import RESULT, task_key
from meshgpu.daemon.submissions import MAX_BATCH, Submissions
from meshgpu.errors import DecodeError, MeshError, StorageError, TaskError

if TYPE_CHECKING:
    from meshgpu.daemon.catalog import ModelCatalog
    from meshgpu.daemon.modelstore import ModelStore
    from meshgpu.daemon.payloads import PayloadStore
    from meshgpu.daemon.status import StatusReport


UPLOAD_IDLE_S = 120.0
"""An upload in ranges that has not moved for this long is dropped (its sender is gone)."""


def _task_id(text: Any) -> TaskId:
    if not isinstance(text, str):
        raise DecodeError("task ids are strings like 'n-1a2b3c4d/42'")
    return TaskId.parse(text)


class ResultStore(Protocol):
    """What the ops need of the data plane: store a result pushed here, and read one back
    (here or from a live result holder) in ranges of at most ``chunk`` bytes."""

    @property
    def chunk(self) -> int: ...

    async def store(self, key: Any, kind: str, data: bytes, *, wait: bool) -> None: ...

    async def result_head(
        self, task_id: TaskId, holders: Iterable[NodeId]
    ) -> tuple[bytes | None, int]: ...

    async def result_range(
        self, task_id: TaskId, holders: Iterable[NodeId], offset: int, length: int
    ) -> tuple[bytes, int]: ...

    async def obtain_result(self, task_id: TaskId, holders: Iterable[NodeId]) -> bytes: ...


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
    ) -> None:
        self.node_id = node_id
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
        self.submissions = submissions
        self._ranges_in: dict[tuple[Any, ...], _Upload] = {}
        """Uploads in ranges (put_inputs, put_result) being received, and when each
        last moved."""

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
        timeout = float(request.get("timeout", 30.0))

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
        data = request_field(request, "data", bytes)
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

    async def op_results(self, request: Message, responder: Responder) -> Message:
        """Stream one response per task id as each is resolved (done or failed). A member
        id of a task group (groups.py) is answered from its group's result, fetched once
        for all the members asked for in the same burst."""
        wanted: dict[TaskId, set[TaskId | MemberId]] = defaultdict(set)
        for text in request_field(request, "task_ids", list):
            ref = parse_task_ref(text)
            wanted[ref.group if isinstance(ref, MemberId) else ref].add(ref)
        include = bool(request.get("outputs", True))
        timeout = request.get("timeout")
        for task_id in wanted:
            if task_id not in self.resolved:
                self._feed(ResultRequested(task_id))
        with trio.move_on_after(float(timeout) if timeout is not None else float("inf")):
            while wanted:
                ready = [task_id for task_id in wanted if task_id in self.resolved]
                if not ready:
                    await self._resolution.wait()
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

    async def _member_outcomes(
        self, resolved: fx.TaskResolved, members: list[MemberId], include: bool
    ) -> list[Message]:
        """The answers for ``members`` of one resolved group: its result blob is fetched
        once (even without ``include``: a member may have failed alone in it)."""
        group = await self.outcome(resolved, include=False)
        results: list[dict[str, Any]] | None = None
        if group["state"] == "done":
            try:
                blob = await self.results.obtain_result(resolved.task_id, resolved.result_holders)
                results = group_result_from_bytes(blob)
            except MeshError as error:
                group["state"] = "unavailable"
                group["reason"] = f"done, but the result cannot be fetched now: {error}"
        return member_answers(group, results, members, include)

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
                blob, size = await self.results.result_head(
                    resolved.task_id, resolved.result_holders
                )
                if blob is None:
                    # Larger than one range: the client fetches it with get_result.
                    message["result_bytes"] = size
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

    # --- peer (data plane) ops -----------------------------------------------------------

    async def op_get_inputs(self, request: Message, responder: Responder) -> Message:
        """``digest``: one input payload (``data``), or with ``offset`` and ``length`` one
        range of it and its ``size`` (transfers.py); or ``digests``: those of them held
        in memory (``blobs``, by digest; a missing one is fetched alone by the asker)."""
        if "digests" in request:
            digests = request_field(request, "digests", list)
            if len(digests) > MAX_BATCH:
                raise DecodeError(f"at most {MAX_BATCH} digests per request")
            blobs = {}
            for digest in digests:
                data = self.payloads.get_memory(check_digest(str(digest)), INPUTS)
                if data is not None:
                    blobs[digest] = data
            return {"blobs": blobs}
        digest = check_digest(request_field(request, "digest", str))
        answer = await self._range(request, digest, INPUTS)
        if answer is None:
            raise StorageError(f"inputs {digest[:12]} are not on node {self.node_id}")
        return answer

    async def _range(self, request: Message, key: Any, kind: str) -> Message | None:
        """The range of a stored payload a request asks for (``offset``, ``length``; the
        whole payload without them, if it fits a range), or None if it is not here."""
        payloads, chunk = self.payloads, self.results.chunk
        offset = request.get("offset")
        length = request.get("length", chunk)
        if offset is not None and not (
            isinstance(offset, int) and isinstance(length, int) and offset >= 0 and length > 0
        ):
            raise DecodeError("'offset' and 'length' are a range: integers, >= 0 and > 0")
        data = payloads.get_memory(key, kind)
        if data is not None:
            start = offset or 0
            return {"data": data[start : start + min(length, chunk)], "size": len(data)}

        def read() -> tuple[bytes | None, int | None]:
            size = payloads.size(key, kind)
            if size is None:
                return None, None
            if offset is None and size > chunk:
                raise DecodeError(
                    f"the {kind} payload is {size} bytes, more than one frame carries: ask "
                    "for it in ranges ('offset' and 'length')"
                )
            return payloads.read_range(key, kind, offset or 0, min(length, chunk)), size

        data, size = await trio.to_thread.run_sync(read)
        if data is None:
            return None
        return {"data": data, "size": size}

    async def op_get_model(self, request: Message, responder: Responder) -> Message:
        digest = check_digest(request_field(request, "digest", str))
        path = self.models.path(digest)
        if path is None:
            raise StorageError(f"model {digest[:12]} is not on node {self.node_id}")
        data = await trio.to_thread.run_sync(path.read_bytes)
        chunks = [data[i : i + MODEL_CHUNK_BYTES] for i in range(0, len(data), MODEL_CHUNK_BYTES)]
        for chunk in chunks[:-1]:
            await responder.partial({"data": chunk})
        return {"data": chunks[-1] if chunks else b"", "size": len(data)}

    async def op_put_result(self, request: Message, responder: Responder) -> Message:
        """A worker stores a task's result here: whole (``data``), or in ranges
        (``offset``, ``data``, ``more``; the last with ``sha256``), checked before it is
        installed. Answered once the result is on disk."""
        task_id = _task_id(request.get("task_id"))
        data = request_field(request, "data", bytes)
        if "offset" not in request:
            check_result_bytes(data)  # refuse garbage before it reaches the disk
            await self.results.store(task_key(task_id), RESULT, data, wait=True)
            return {"stored": True}
        slot = (responder.peer, "result", str(task_id), request.get("attempt"))
        path = await self._receive_range(request, slot, task_key(task_id), RESULT)
        if path is None:
            return {"received": request["offset"] + len(data)}
        try:
            await trio.to_thread.run_sync(check_result_file, path)
            self.payloads.install(path, task_key(task_id), RESULT)
        finally:
            path.unlink(missing_ok=True)
        return {"stored": True}

    async def op_put_inputs(self, request: Message, responder: Responder) -> Message:
        """A client uploads a task's inputs larger than one frame, in ranges (``digest``,
        ``offset``, ``data``, ``more``), before a ``submit`` that names them by
        ``input_digest``. The last range is answered once the payload hashed to its
        digest, has the layout of a tensor map, and is on disk."""
        digest = check_digest(request_field(request, "digest", str))
        data = request_field(request, "data", bytes)
        if self.payloads.has(digest, INPUTS) and request.get("offset") == 0:
            return {"stored": True, "held": True}  # equal inputs are here: nothing to send
        slot = (responder.peer, "inputs", digest, None)
        path = await self._receive_range({**request, "sha256": digest}, slot, digest, INPUTS)
        if path is None:
            return {"received": request["offset"] + len(data)}
        try:
            await trio.to_thread.run_sync(read_layout, path)
            self.payloads.install(path, digest, INPUTS)
        finally:
            path.unlink(missing_ok=True)
        return {"stored": True}

    async def _receive_range(
        self, request: Message, slot: tuple[Any, ...], key: Any, kind: str
    ) -> Path | None:
        """Append one range of an upload to its scratch file (a range at offset 0 starts
        the upload afresh); the checked scratch file after the last range, else None.
        Invoked for each range as its request is handled: the ranges a sender keeps in
        flight (transfers.push) may be handled in any order, so each waits here until
        the ranges before it are written."""
        offset = request_field(request, "offset", int)
        data = request_field(request, "data", bytes)
        now = trio.current_time()
        for stale, idle in list(self._ranges_in.items()):
            if now - idle.touched > UPLOAD_IDLE_S:  # a sender that went away mid-upload
                del self._ranges_in[stale]
                idle.drop()
        if offset == 0:
            previous = self._ranges_in.pop(slot, None)
            if previous is not None:
                previous.drop()
            writer = self.payloads.writer(key, kind)
            self._ranges_in[slot] = _Upload(writer, now)
            size = request.get("size")
            if isinstance(size, int) and size > len(data):  # a sender says how much comes
                try:
                    await trio.to_thread.run_sync(writer.reserve, size)
                except MeshError:
                    self._forget(slot, self._ranges_in[slot])
                    raise
        upload = self._ranges_in.get(slot)
        if upload is None:
            raise DecodeError(f"range at {offset} of an upload that was not started; start at 0")
        with trio.move_on_after(UPLOAD_IDLE_S):
            while (upload.writing or upload.writer.size < offset) and not upload.ended:
                await upload.moved.wait()
        if upload.ended or upload.writing or upload.writer.size < offset:
            raise DecodeError(
                f"range at {offset} of an upload that was dropped or never reached it "
                f"({upload.writer.size} bytes written); start again at 0"
            )
        writer = upload.writer
        upload.writing = True
        try:
            await trio.to_thread.run_sync(writer.write, offset, data)
            if upload.ended:
                raise DecodeError("the upload was started again or dropped meanwhile")
            upload.wrote()
            if request.get("more", False):
                return None
            self._forget(slot, upload)
            return await trio.to_thread.run_sync(
                writer.commit, str(request_field(request, "sha256", str))
            )
        except BaseException:
            self._forget(slot, upload)
            writer.abort()
            raise

    def _forget(self, slot: tuple[Any, ...], upload: _Upload) -> None:
        if self._ranges_in.get(slot) is upload:
            del self._ranges_in[slot]
        upload.end()

    async def op_get_result(self, request: Message, responder: Responder) -> Message:
        """A task's result: whole (``data``), or one range of it (``offset``, ``length``)
        with its ``size``. With ``relay`` (a client) a result this node does not keep is
        fetched from a result holder, one range at a time."""
        task_id = _task_id(request.get("task_id"))
        answer = await self._range(request, task_key(task_id), RESULT)
        if answer is not None:
            return answer
        if request.get("relay") and "offset" in request:
            chunk = self.results.chunk
            length = request.get("length", chunk)
            data, size = await self.results.result_range(
                task_id,
                self._result_holders(task_id),
                request_field(request, "offset", int),
                min(length, chunk) if isinstance(length, int) and length > 0 else chunk,
            )
            return {"data": data, "size": size}
        raise StorageError(f"result of {task_id} is not on node {self.node_id}")

    def _result_holders(self, task_id: TaskId) -> tuple[str, ...]:
        resolved = self.resolved.get(task_id)
        if resolved is not None:
            return tuple(resolved.result_holders)
        entry = self.status.entry(task_id)
        return () if entry is None else tuple(sorted(entry.result_holders))


class _Upload:
    """An upload in ranges being received: its scratch file, and an event that wakes the
    ranges waiting for their turn whenever one was written or the upload ended."""

    def __init__(self, writer: BlobWriter, now: float) -> None:
        self.writer = writer
        self.touched = now
        self.writing = False
        self.ended = False
        self.moved = trio.Event()

    def wrote(self) -> None:
        self.writing = False
        self.touched = trio.current_time()
        self._wake()

    def end(self) -> None:
        """No more ranges: the last one came, or the upload failed."""
        self.ended = True
        self.writing = False
        self._wake()

    def drop(self) -> None:
        """Give the upload up (started again at 0, or its sender went away); a range
        being written meanwhile sees it ended and deletes the scratch file itself."""
        writing = self.writing
        self.ended = True
        self._wake()
        if not writing:
            self.writer.abort()

    def _wake(self) -> None:
        self.moved.set()
        self.moved = trio.Event()


def check_result_file(path: Path) -> None:
    """Raise DecodeError unless the file at ``path`` is a task's result (a tensor map,
    checked by its headers; a task group's list, which is small, read whole)."""
    with open(path, "rb") as handle:
        first = handle.read(1)
    if first and (first[0] & 0xF0 == 0x90 or first[0] in (0xDC, 0xDD)):  # an array: a group
        check_result_bytes(path.read_bytes())
    else:
        read_layout(path)
