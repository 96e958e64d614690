"""The peers' ops of the TCP API: the data plane served from this node's stores.

A worker fetches a task's inputs (``get_inputs``) and its model (``get_model``) and
stores the result (``put_result``) on the holders; a client uploads inputs larger than
one request in ranges (``put_inputs``) and reads a large result in ranges through its
entry node (``get_result`` with ``relay``). Each op is one method ``op_<name>(request,
responder)``, as in handlers.py; shapes in docs/client-api.md. Everything received is
checked (digest, layout) before it is installed.

:class:`PeerOps` is the part: the wiring hands it the stores, the data plane's results
(:class:`~meshgpu.daemon.handlers.ResultStore`) and the two look-ups that name a result's
holders (the resolution the client ops hold, the task's table entry).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from meshgpu.core import effects as fx
from meshgpu.core.tasks import TaskId
from meshgpu.core.tasks.result_push import serves_result
from meshgpu.core.types import NodeId
from meshgpu.daemon.api import Handler, Message, Responder, request_field
from meshgpu.daemon.blobs import BlobWriter, TensorReceiver, read_layout
from meshgpu.daemon.dataplane import INPUTS, MODEL_CHUNK_BYTES
from meshgpu.daemon.groups import MEMBER_RESULT, MemberId, member_result_key, parse_task_ref
from meshgpu.daemon.modelstore import check_digest
from meshgpu.daemon.payloads import check_result_bytes
from meshgpu.daemon.results import RESULT, task_key
from meshgpu.daemon.submissions import MAX_BATCH
from meshgpu.errors import DecodeError, MeshError, OtherAttemptKept, StorageError

if TYPE_CHECKING:
    from meshgpu.daemon.early_results import EarlyResults
    from meshgpu.daemon.handlers import ResultStore
    from meshgpu.daemon.modelstore import ModelStore
    from meshgpu.daemon.payloads import PayloadStore
    from meshgpu.daemon.relay import InputRelay, Relays
    from meshgpu.daemon.status import TaskLookup
    from meshgpu.daemon.warm_inputs import WarmInputs

UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
"""What a sender may name an upload it sends without its digest (``upload``)."""
UPLOAD_IDLE_S = 120.0
"""An upload in ranges that has not moved for this long is dropped (its sender is gone)."""


def _task_id(text: Any) -> TaskId:
    if not isinstance(text, str):
        raise DecodeError("task ids are strings like 'n-1a2b3c4d/42'")
    return TaskId.parse(text)


def requested_range(request: Message, chunk: int) -> tuple[int | None, int]:
    """The ``offset`` (None when the request names none: the whole payload) and the
    ``length``, at most ``chunk``, of a range a request asks for."""
    offset = request.get("offset")
    length = request.get("length", chunk)
    if offset is not None and not (
        isinstance(offset, int) and isinstance(length, int) and offset >= 0 and length > 0
    ):
        raise DecodeError("'offset' and 'length' are a range: integers, >= 0 and > 0")
    return offset, min(length, chunk)


class PeerOps:
    """The data plane's ops of one daemon, and the uploads in ranges being received."""

    def __init__(
        self,
        node_id: NodeId,
        *,
        payloads: PayloadStore,
        models: ModelStore,
        results: ResultStore,
        resolved: Callable[[TaskId], fx.TaskResolved | None],
        task_entry: TaskLookup,
        relays: Relays | None = None,
        warm: WarmInputs | None = None,
        early: EarlyResults | None = None,
    ) -> None:
        self.node_id = node_id
        self.early = early
        """Where a result pushed to its task's origin is served to its client as it
        arrives (early_results.py)."""
        self.relays = relays
        """Where a client's upload is passed on to the next holders as it arrives."""
        self.warm = warm
        """Where a large upload's arrays are kept for a run here (warm_inputs.py)."""
        self.payloads = payloads
        self.models = models
        self.results = results
        self._resolved = resolved
        self._task_entry = task_entry
        self._ranges_in: dict[tuple[Any, ...], _Upload] = {}
        """Uploads in ranges (put_inputs, put_result) being received, and when each
        last moved."""

    def table(self) -> dict[str, Handler]:
        return {
            name.removeprefix("op_"): getattr(self, name)
            for name in dir(self)
            if name.startswith("op_")
        }

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
        offset, length = requested_range(request, chunk)
        data = payloads.get_memory(key, kind)
        if data is not None:
            start = offset or 0
            return {"data": data[start : start + length], "size": len(data)}

        def read() -> tuple[bytes | None, int | None]:
            size = payloads.size(key, kind)
            if size is None:
                return None, None
            if offset is None and size > chunk:
                raise DecodeError(
                    f"the {kind} payload is {size} bytes, more than one frame carries: ask "
                    "for it in ranges ('offset' and 'length')"
                )
            return payloads.read_range(key, kind, offset or 0, length), size

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
        installed. Answered once the result is on disk. A node keeps one attempt's
        result per task, the newest it was pushed: an older attempt's is refused with the
        attempt kept here (``kept_attempt``: core/tasks/result_push.py, ``takes_result``),
        whose result its worker then reports instead of its own: the refusal waits for
        the kept result's install to be durable (PayloadStore.sync_result)."""
        try:
            return await self._put_result(request, responder)
        except OtherAttemptKept:
            key = task_key(_task_id(request.get("task_id")))
            await trio.to_thread.run_sync(self.payloads.sync_result, key)
            raise

    async def _put_result(self, request: Message, responder: Responder) -> Message:
        task_id = _task_id(request.get("task_id"))
        data = request_field(request, "data", (bytes, memoryview))
        key, sent_attempt = task_key(task_id), request.get("attempt")
        claimed = sent_attempt if isinstance(sent_attempt, int) else None
        if "offset" not in request:
            check_result_bytes(data)  # refuse garbage before it reaches the disk
            await self.results.store_result(key, bytes(data), claimed)
            return {"stored": True}
        slot = (responder.peer, "result", str(task_id), sent_attempt)
        offset = request["offset"]
        if offset == 0:  # another attempt's result is here: refused before any is written
            self.payloads.check_result_attempt(key, claimed)
        attempt = claimed if claimed is not None else -1
        early = self.early if task_id.origin == self.node_id and attempt >= 0 else None
        size = request.get("size")
        if early is not None and offset == 0 and isinstance(size, int) and size > len(data):
            early.start(key, attempt, size, trio.current_time())  # its client may ask now
        try:
            if early is not None and isinstance(offset, int):  # its client may lag behind
                await early.room(key, attempt, offset, len(data))
            path, _ = await self._receive_range(request, slot, key, RESULT)
            if early is not None:  # written here, in order: the client may have it
                early.add(key, attempt, offset, data, trio.current_time())
            if path is None:
                return {"received": offset + len(data)}

            def check_and_install() -> None:  # the install syncs the directory: off the loop
                check_result_file(path)
                self.payloads.install_result(path, key, claimed)

            try:
                with self.payloads.claiming_result(key, claimed):  # on the loop: one at a time
                    await trio.to_thread.run_sync(check_and_install)
            finally:
                path.unlink(missing_ok=True)
        except BaseException as error:
            if early is not None:
                why = f"{type(error).__name__}: {error}"
                early.finish(key, attempt, False, why, now=trio.current_time())
            raise
        if early is not None:
            early.finish(key, attempt, True, now=trio.current_time())
        return {"stored": True}

    async def op_put_inputs(self, request: Message, responder: Responder) -> Message:
        """A client uploads a task's inputs larger than one frame, in ranges (``offset``,
        ``data``, ``more``), before a ``submit`` that names them by ``input_digest``. The
        upload is named by its ``digest`` on every range, or by an ``upload`` id the
        sender chose, with the digest (``sha256``) on the last range only: a sender that
        hashes while it sends. The last range is answered once the payload hashed to its
        digest, has the layout of a tensor map, and is on disk (``digest`` says which).
        With ``replicas`` (the copies the task will want) the ranges are relayed as they
        arrive to ``replicas - 1`` other nodes (relay.py), and the last range is
        answered once those relays ended too; a relay sends none, so its target relays
        nothing, and says ``relayed``: its target keeps no warm copy (warm_inputs.py),
        since the scheduler runs the task at its origin, the entry node, when it can."""
        upload = request.get("upload")
        if upload is None:
            digest: str | None = check_digest(request_field(request, "digest", str))
            name = digest
        elif isinstance(upload, str) and UPLOAD_ID.fullmatch(upload):
            digest, name = None, "upload-" + upload
        else:
            raise DecodeError("'upload' names an upload: 8 to 64 letters, digits, '-' or '_'")
        data = request_field(request, "data", (bytes, memoryview))
        if digest is not None and self.payloads.has(digest, INPUTS) and request.get("offset") == 0:
            self.payloads.touch(digest, INPUTS)  # the submit that follows finds it unexpired
            return {"stored": True, "held": True}  # equal inputs are here: nothing to send
        replicas = request.get("replicas", 1)
        if not isinstance(replicas, int) or replicas < 1:
            raise DecodeError(f"'replicas' is a count of copies (1 or more), got {replicas!r}")
        if digest is not None:
            request = {**request, "sha256": digest}
        elif not request.get("more", False):
            digest = check_digest(request_field(request, "sha256", str))
        slot = (responder.peer, "inputs", name, None)
        path, received = await self._receive_range(
            request,
            slot,
            name,
            INPUTS,
            copies=replicas,
            named=upload is None,
            warm=not request.get("relayed", False),
        )
        if path is None or received is None:
            return {"received": request["offset"] + len(data)}
        assert digest is not None
        relay, warm = received.relay, received.take_warm()

        def check_and_install(digest: str) -> None:  # the install syncs the directory
            read_layout(path)
            self.payloads.install(path, digest, INPUTS)

        try:
            await trio.to_thread.run_sync(check_and_install, digest)
        except BaseException:
            if relay is not None:
                relay.abort()
            if warm is not None and self.warm is not None:
                self.warm.release(warm)
            raise
        finally:
            path.unlink(missing_ok=True)
        if warm is not None and self.warm is not None:
            # The same bytes as the durable copy that just checked out: the run that
            # usually follows here takes them instead of reading the file back.
            self.warm.keep(digest, warm, trio.current_time())
        if relay is not None and self.relays is not None:
            self.relays.note(digest, await relay.finish())
        return {"stored": True, "digest": digest}

    async def _receive_range(
        self,
        request: Message,
        slot: tuple[Any, ...],
        key: Any,
        kind: str,
        *,
        copies: int = 1,
        named: bool = True,
        warm: bool = False,
    ) -> tuple[Path | None, _Upload | None]:
        """Append one range of an upload to its scratch file (a range at offset 0 starts
        the upload afresh); the checked scratch file after the last range, else None,
        and the upload, with its relay (``copies`` > 1: relayed to ``copies - 1`` other
        nodes, each range once it is written here; ``named``: ``key`` is the payload's
        digest, else an upload's name and the digest comes with the last range) and, with
        ``warm`` (inputs at their entry node), its warm copy (the arrays, filled as the
        ranges are written, when the budget of warm copies has room: warm_inputs.py).
        Invoked for
        each range as its request is handled: the ranges a sender keeps in flight
        (transfers.push) may be handled in any order, so each waits here until the
        ranges before it are written."""
        offset = request_field(request, "offset", int)
        data = request_field(request, "data", (bytes, memoryview))
        now = trio.current_time()
        self.drop_stale_uploads(now)
        if offset == 0:
            previous = self._ranges_in.pop(slot, None)
            if previous is not None:
                previous.drop()
            writer = self.payloads.writer(key, kind)
            started = self._ranges_in[slot] = _Upload(writer, now, self.warm)
            size = request.get("size")
            if isinstance(size, int) and size > len(data):  # a sender says how much comes
                try:
                    await trio.to_thread.run_sync(writer.reserve, size)
                except MeshError:
                    self._forget(slot, started)
                    raise
                if copies > 1 and self.relays is not None and not started.ended:
                    started.relay = self.relays.start(key, size, copies, named=named)
                if warm and self.warm is not None and not started.ended:
                    started.warm = self.warm.receiver(size, now)
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
            await trio.to_thread.run_sync(upload.write, offset, data)
            if upload.warm_failed:
                upload.release_warm()
            if upload.relay is not None:  # in order: the next range waits for this one
                last = not request.get("more", False)
                await upload.relay.feed(offset, data, request.get("sha256") if last else None)
            if upload.ended:
                raise DecodeError("the upload was started again or dropped meanwhile")
            upload.wrote()
            if request.get("more", False):
                return None, None
            self._forget(slot, upload)
            path = await trio.to_thread.run_sync(
                writer.commit, str(request_field(request, "sha256", str))
            )
            return path, upload
        except BaseException:
            self._forget(slot, upload)
            writer.abort()
            upload.release_warm()
            if upload.relay is not None:
                upload.relay.abort()
            raise

    def drop_stale_uploads(self, now: float) -> int:
        """Drop the uploads that have not moved for ``UPLOAD_IDLE_S`` (a sender that went
        away mid-upload) with their scratch files; returns how many."""
        dropped = 0
        for stale, idle in list(self._ranges_in.items()):
            if now - idle.touched > UPLOAD_IDLE_S:
                del self._ranges_in[stale]
                idle.drop()
                dropped += 1
        return dropped

    async def sweep_uploads(self, interval: float = 30.0) -> None:
        """Every ``interval`` seconds, :meth:`drop_stale_uploads`: an abandoned upload's
        scratch file (allocated to the payload's whole size) goes within
        ``UPLOAD_IDLE_S + interval`` even if no other range ever arrives."""
        while True:
            await trio.sleep(interval)
            self.drop_stale_uploads(trio.current_time())

    def _forget(self, slot: tuple[Any, ...], upload: _Upload) -> None:
        if self._ranges_in.get(slot) is upload:
            del self._ranges_in[slot]
        upload.end()

    async def op_get_result(self, request: Message, responder: Responder) -> Message:
        """A task's result: whole (``data``), or one range of it (``offset``, ``length``)
        with its ``size``. With ``relay`` (a client) a result this node does not keep is
        fetched from a result holder, one range at a time. With ``early`` (a client told
        the result is ``storing``) a range of a result being stored here is answered as
        it arrives (early_results.py). With ``attempt`` (the attempt the task's ``done``
        names) only that attempt's bytes are answered: a range of a result this node
        holds of another attempt is fetched from a holder of that one (``relay``), or
        refused."""
        ref = parse_task_ref(request.get("task_id"))
        offset, length = request.get("offset"), request.get("length", self.results.chunk)
        asked = request.get("attempt")
        if asked is not None and not isinstance(asked, int):
            raise DecodeError(f"'attempt' is an attempt's number, got {asked!r}")
        if isinstance(ref, MemberId):
            return await self._member_range(ref, request, asked)
        task_id = ref
        if request.get("early") and self.early is not None and isinstance(offset, int):
            if not (isinstance(length, int) and offset >= 0 and length > 0):
                raise DecodeError("'offset' and 'length' are a range: integers, >= 0 and > 0")
            named = asked if asked is not None else self.early.attempt(task_key(task_id))
            early = await self.early.take(
                task_key(task_id), offset, min(length, self.results.chunk), asked
            )
            if early is not None:  # a range of the push of the attempt asked for
                return {"data": early[0], "size": early[1], "attempt": named}
        key = task_key(task_id)
        installed = self.payloads.result_attempt(key)
        if serves_result(installed, asked):
            answer = await self._result_range(request, key)
            if answer is not None:
                return answer
        if request.get("relay") and "offset" in request:
            chunk = self.results.chunk
            length = request.get("length", chunk)
            data, size, named = await self.results.result_range(
                task_id,
                self._result_holders(task_id),
                request_field(request, "offset", int),
                min(length, chunk) if isinstance(length, int) and length > 0 else chunk,
                attempt=asked,
            )
            return {"data": data, "size": size, "attempt": named}
        if installed is not None and not serves_result(installed, asked):
            raise OtherAttemptKept(
                f"node {self.node_id} keeps attempt {installed}'s result of {task_id}, "
                f"not attempt {asked}'s",
                installed,
            )
        raise StorageError(f"result of {task_id} is not on node {self.node_id}")

    async def _member_range(
        self, member: MemberId, request: Message, attempt: int | None
    ) -> Message:
        """A range of a member's outputs that a ``results`` answer on this node announced
        as large (handlers.py, ``_spill_if_large``), of the group's attempt ``attempt``.
        Not here (another node answered, or the group was collected): StorageError, and
        the client asks for the member again."""
        answer = await self._range(request, member_result_key(member, attempt), MEMBER_RESULT)
        if answer is None:
            raise StorageError(f"outputs of {member} are not on node {self.node_id}")
        return {**answer, "attempt": attempt}

    async def _result_range(self, request: Message, key: Any) -> Message | None:
        """The range of the result kept here that a request asks for (as ``_range``),
        with the attempt whose bytes it holds (``attempt``: a reader of several ranges
        pins it, and starts again when a range names another); None if none is here."""
        payloads, chunk = self.payloads, self.results.chunk
        offset, length = requested_range(request, chunk)
        start = offset or 0

        def read() -> tuple[bytes, int, int | None] | None:
            found = payloads.read_result_range(key, start, length)
            if found is not None and offset is None and found[1] > chunk:
                raise DecodeError(
                    f"the result payload is {found[1]} bytes, more than one frame carries: "
                    "ask for it in ranges ('offset' and 'length')"
                )
            return found

        if payloads.get_memory(key, RESULT) is not None:  # in the journal: no thread hop
            found = read()
        else:
            found = await trio.to_thread.run_sync(read)
        if found is None:
            return None
        data, size, attempt = found
        return {"data": data, "size": size, "attempt": attempt}

    def _result_holders(self, task_id: TaskId) -> tuple[str, ...]:
        resolved = self._resolved(task_id)
        if resolved is not None:
            return tuple(resolved.result_holders)
        entry = self._task_entry(task_id)
        return () if entry is None else tuple(sorted(entry.result_holders))


class _Upload:
    """An upload in ranges being received: its scratch file, and an event that wakes the
    ranges waiting for their turn whenever one was written or the upload ended."""

    def __init__(self, writer: BlobWriter, now: float, warm_inputs: WarmInputs | None) -> None:
        self.writer = writer
        self.touched = now
        self.writing = False
        self.ended = False
        self.moved = trio.Event()
        self.relay: InputRelay | None = None
        self.warm: TensorReceiver | None = None
        """The arrays the ranges are also copied into (a warm copy in the making)."""
        self.warm_failed = False
        self._warm_inputs = warm_inputs

    def write(self, offset: int, chunk: bytes | memoryview) -> None:
        """Write one range to the scratch file and to the warm copy's arrays (in a worker
        thread). The writer's checks decide; a range the arrays refuse (a malformed
        header, which the layout check of the file refuses as well) or that finds no
        memory for its array ends the warm copy only (``warm_failed``: released on the
        loop): the upload never fails for it."""
        self.writer.write(offset, chunk)
        warm = self.warm
        if warm is not None and not self.warm_failed:
            try:
                warm.write(offset, chunk)
            except (MeshError, OSError, MemoryError):
                self.warm_failed = True

    def take_warm(self) -> TensorReceiver | None:
        """The finished warm copy (None if there is none), no longer the upload's."""
        warm, self.warm = self.warm, None
        return warm

    def release_warm(self) -> None:
        """Give the warm copy's memory back (on the loop; not while a range is written)."""
        warm, self.warm = self.warm, None
        if warm is not None and self._warm_inputs is not None:
            self._warm_inputs.release(warm)

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
        if self.relay is not None:
            self.relay.abort()
        if not writing:
            self.writer.abort()
            self.release_warm()

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
