"""The ops of the TCP API: what clients and peer daemons can ask of a daemon.

Each op is one method ``op_<name>(request, responder) -> final response fields``; the
shapes are documented in docs/client-api.md. Client ops turn into core events
(``SubmitTask``, ``ResultRequested``, ``ResultCollected``) and wait for the effects that
answer them (``TaskAccepted``/``TaskRejected``, ``TaskResolved``); peer ops serve the data
plane from this node's stores. The submission path, with its waiting state, is submissions.py.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

import trio

from meshgpu.core import effects as fx
from meshgpu.core.events import ResultCollected, ResultRequested
from meshgpu.core.tasks import TaskId
from meshgpu.daemon.api import Handler, Message, Responder, request_field
from meshgpu.daemon.dataplane import INPUTS, MODEL_CHUNK_BYTES, RESULT, task_key
from meshgpu.daemon.framing import unpack
from meshgpu.daemon.groups import MemberId, member_answers, parse_task_ref
from meshgpu.daemon.modelstore import ModelWriter, check_digest
from meshgpu.daemon.payloads import (
    check_result_bytes,
    group_result_from_bytes,
    tensors_from_bytes,
)
from meshgpu.daemon.submissions import MAX_BATCH, Submissions
from meshgpu.errors import DecodeError, MeshError, StorageError, TaskError

if TYPE_CHECKING:
    from meshgpu.daemon.runtime import Daemon


def _task_id(text: Any) -> TaskId:
    if not isinstance(text, str):
        raise DecodeError("task ids are strings like 'n-1a2b3c4d/42'")
    return TaskId.parse(text)


class ClientHandlers:
    """The API ops of one daemon, and the state that connects answers to waiters."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.resolved: dict[TaskId, fx.TaskResolved] = {}
        self._resolution = trio.Event()
        self._uploads: dict[tuple[str | None, str], ModelWriter] = {}
        self._collected_members: dict[TaskId, set[int]] = {}
        """Member indices named in ``collected`` per group not yet collected whole."""
        self.submissions = Submissions(daemon)

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

    # --- client ops --------------------------------------------------------------------

    async def op_ping(self, request: Message, responder: Responder) -> Message:
        """Who answers: the node id, and the token of its data dir (a node that shares
        our id tells a copied data dir from a second node of the same name by it)."""
        return {"node_id": self.daemon.node_id, "dir_token": self.daemon.dir_token}

    async def op_status(self, request: Message, responder: Responder) -> Message:
        from meshgpu.daemon.status import status_snapshot

        return status_snapshot(self.daemon)

    async def op_member(self, request: Message, responder: Responder) -> Message:
        """What this node knows of one member (used by a starting node to spot a twin)."""
        info = self.daemon.node.members().get(request_field(request, "node_id", str))
        if info is None:
            return {"known": False}
        return {
            "known": True,
            "address": list(info.address),
            "state": getattr(info.state, "value", str(info.state)),
            "incarnation": info.incarnation,
        }

    async def op_wait(self, request: Message, responder: Responder) -> Message:
        """Answer with the status once it satisfies the request (for tests and the demo).

        ``alive``: at least that many live members; ``after_generation``: a membership or
        leader change after that generation; ``counter``: ``[group, name, at_least]``.
        Re-checked whenever something changes; fails after ``timeout`` seconds.
        """
        from meshgpu.daemon.status import status_snapshot

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
                changed = self.daemon.changed
                status = status_snapshot(self.daemon)
                if satisfied(status):
                    return status
                await changed.wait()
        raise TaskError(f"condition not reached within {timeout} s: {request}")

    async def op_tasks(self, request: Message, responder: Responder) -> Message:
        from meshgpu.daemon.status import task_rows

        state = request.get("state")
        return {"tasks": task_rows(self.daemon, state if isinstance(state, str) else None)}

    async def op_has_model(self, request: Message, responder: Responder) -> Message:
        digest = check_digest(request_field(request, "digest", str))
        return {"has": self.daemon.models.has(digest)}

    async def op_put_model(self, request: Message, responder: Responder) -> Message:
        """Upload a model, whole or in chunks (``more: true`` on all but the last)."""
        digest = check_digest(request_field(request, "digest", str))
        data = request_field(request, "data", bytes)
        more = bool(request.get("more", False))
        slot = (responder.peer, digest)
        if self.daemon.models.has(digest) and slot not in self._uploads:
            return {"digest": digest, "stored": False}
        writer = self._uploads.get(slot)
        if writer is None:
            writer = self._uploads[slot] = self.daemon.models.writer(digest)
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
                self.daemon.feed(ResultRequested(task_id))
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
                        outcomes.append(await self._outcome(self.resolved[task_id], include))
                await responder.partials(outcomes)  # one write for the burst
        pending = sorted(str(ref) for refs in wanted.values() for ref in refs)
        return {"task_id": None, "pending": pending}

    async def _member_outcomes(
        self, resolved: fx.TaskResolved, members: list[MemberId], include: bool
    ) -> list[Message]:
        """The answers for ``members`` of one resolved group: its result blob is fetched
        once (even without ``include``: a member may have failed alone in it)."""
        group = await self._outcome(resolved, include=False)
        results: list[dict[str, Any]] | None = None
        if group["state"] == "done":
            try:
                blob = await self.daemon.dataplane.obtain_result(
                    resolved.task_id, resolved.result_holders
                )
                results = group_result_from_bytes(blob)
            except MeshError as error:
                group["state"] = "unavailable"
                group["reason"] = f"done, but the result cannot be fetched now: {error}"
        return member_answers(group, results, members, include)

    async def _outcome(self, resolved: fx.TaskResolved, include: bool) -> Message:
        from meshgpu.daemon.status import task_reason, worker_of

        message: Message = {
            "task_id": str(resolved.task_id),
            "state": resolved.state,
            "reason": task_reason(self.daemon, resolved.task_id, resolved.reason),
            "worker": worker_of(self.daemon, resolved.task_id),
            "outputs": None,
        }
        if resolved.state == "done" and include:
            try:
                blob = await self.daemon.dataplane.obtain_result(
                    resolved.task_id, resolved.result_holders
                )
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
            if isinstance(ref, MemberId):
                if not self._member_collected(ref):
                    continue
                ref = ref.group
            self._collected_members.pop(ref, None)
            self.resolved.pop(ref, None)
            self.daemon.feed(ResultCollected(ref))
        return {"collected": len(refs)}

    def _member_collected(self, member: MemberId) -> bool:
        """Count ``member`` collected; True once every member of its group is."""
        from meshgpu.daemon.status import task_table

        table = task_table(self.daemon)
        entry = None if table is None else table.get(member.group)
        if entry is None:
            return False
        seen = self._collected_members.setdefault(member.group, set())
        seen.add(member.index)
        return len(seen) >= entry.spec.members

    # --- peer (data plane) ops -----------------------------------------------------------

    async def op_get_inputs(self, request: Message, responder: Responder) -> Message:
        """``digest``: one input blob (``data``); or ``digests``: those of them held in
        memory (``blobs``, by digest; a missing one is fetched alone by the asker)."""
        if "digests" in request:
            digests = request_field(request, "digests", list)
            if len(digests) > MAX_BATCH:
                raise DecodeError(f"at most {MAX_BATCH} digests per request")
            blobs = {}
            for digest in digests:
                data = self.daemon.payloads.get_memory(check_digest(str(digest)), INPUTS)
                if data is not None:
                    blobs[digest] = data
            return {"blobs": blobs}
        digest = check_digest(request_field(request, "digest", str))
        data = self.daemon.payloads.get_memory(digest, INPUTS)
        if data is None:
            data = await trio.to_thread.run_sync(self.daemon.payloads.get_bytes, digest, INPUTS)
        if data is None:
            raise StorageError(f"inputs {digest[:12]} are not on node {self.daemon.node_id}")
        return {"data": data}

    async def op_get_model(self, request: Message, responder: Responder) -> Message:
        digest = check_digest(request_field(request, "digest", str))
        path = self.daemon.models.path(digest)
        if path is None:
            raise StorageError(f"model {digest[:12]} is not on node {self.daemon.node_id}")
        data = await trio.to_thread.run_sync(path.read_bytes)
        chunks = [data[i : i + MODEL_CHUNK_BYTES] for i in range(0, len(data), MODEL_CHUNK_BYTES)]
        for chunk in chunks[:-1]:
            await responder.partial({"data": chunk})
        return {"data": chunks[-1] if chunks else b"", "size": len(data)}

    async def op_put_result(self, request: Message, responder: Responder) -> Message:
        task_id = _task_id(request.get("task_id"))
        data = request_field(request, "data", bytes)
        check_result_bytes(data)  # refuse garbage before it reaches the disk
        await self.daemon.dataplane.store(task_key(task_id), RESULT, data, wait=True)
        return {"stored": True}

    async def op_get_result(self, request: Message, responder: Responder) -> Message:
        task_id = _task_id(request.get("task_id"))
        data = self.daemon.payloads.get_memory(task_key(task_id), RESULT)
        if data is None:
            data = await trio.to_thread.run_sync(
                self.daemon.payloads.get_bytes, task_key(task_id), RESULT
            )
        if data is None:
            raise StorageError(f"result of {task_id} is not on node {self.daemon.node_id}")
        return {"data": data}
