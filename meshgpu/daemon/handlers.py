"""The ops of the TCP API: what clients and peer daemons can ask of a daemon.

Each op is one method ``op_<name>(request, responder) -> final response fields``; the
shapes are documented in docs/client-api.md. Client ops turn into core events
(``SubmitTask``, ``ResultRequested``, ``ResultCollected``) and wait for the effects that
answer them (``TaskAccepted``/``TaskRejected``, ``TaskResolved``); peer ops serve the data
plane from this node's stores.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from meshgpu.core import effects as fx
from meshgpu.core.events import ResultCollected, ResultRequested, SubmitTask
from meshgpu.core.tasks import DeviceRequirements, Priority, TaskId, TaskSpec
from meshgpu.daemon.api import Handler, Message, Responder
from meshgpu.daemon.dataplane import INPUTS, MODEL_CHUNK_BYTES, RESULT, task_key
from meshgpu.daemon.direct import DirectRuns
from meshgpu.daemon.framing import unpack
from meshgpu.daemon.groups import MAX_GROUP, MemberId, member_answers, pack, parse_task_ref
from meshgpu.daemon.modelstore import ModelWriter, check_digest
from meshgpu.daemon.payloads import (
    canonical_group_bytes,
    canonical_tensor_bytes,
    check_result_bytes,
    decode_tensors,
    group_result_from_bytes,
    tensors_from_bytes,
)
from meshgpu.errors import DecodeError, MeshError, StorageError, TaskError

if TYPE_CHECKING:
    from meshgpu.daemon.runtime import Daemon

MAX_BATCH = 1024
"""Most tasks in one ``submit_batch`` request (the client sends smaller batches)."""
SUBMIT_TIMEOUT = 120.0
"""Longest a submit waits for its acknowledgement (the core answers well before)."""


@dataclass
class _Pending:
    """A submission waiting for ``TaskAccepted``/``TaskRejected``."""

    client_ref: str
    input_digest: str
    done: trio.Event = field(default_factory=trio.Event)
    answer: Any = None


def _field(request: Message, name: str, kind: type | tuple[type, ...]) -> Any:
    value = request.get(name)
    if not isinstance(value, kind):
        raise DecodeError(f"request field {name!r} is missing or not a {kind}")
    return value


def _batch_inputs(task: Any) -> dict[str, Any]:
    """The ``inputs`` map of one task of a ``submit_batch`` request."""
    if not isinstance(task, dict):
        raise DecodeError("each task of a batch is a map with an 'inputs' field")
    inputs = task.get("inputs")
    if not isinstance(inputs, dict):
        raise DecodeError("request field 'inputs' is missing or not a map")
    return inputs


def _task_id(text: Any) -> TaskId:
    if not isinstance(text, str):
        raise DecodeError("task ids are strings like 'n-1a2b3c4d/42'")
    return TaskId.parse(text)


def _requirements(request: Message) -> DeviceRequirements:
    """The task's device requirements from a submit request's fields."""
    device_type = request.get("device_type")
    try:
        return DeviceRequirements(
            device_type=None if device_type is None else str(device_type),
            min_memory=int(request.get("min_memory", 0)),
            fp16=bool(request.get("fp16", False)),
        )
    except (TypeError, ValueError) as error:
        raise DecodeError(f"submit has a malformed field: {error}") from None


class ClientHandlers:
    """The API ops of one daemon, and the state that connects answers to waiters."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._refs = itertools.count(1)
        self._pending: dict[str, _Pending] = {}
        self.resolved: dict[TaskId, fx.TaskResolved] = {}
        self._resolution = trio.Event()
        self._uploads: dict[tuple[str | None, str], ModelWriter] = {}
        self.submitted = 0
        self._collected_members: dict[TaskId, set[int]] = {}
        """Member indices named in ``collected`` per group not yet collected whole."""
        self.direct = DirectRuns(daemon)

    def table(self) -> dict[str, Handler]:
        return {
            name.removeprefix("op_"): getattr(self, name)
            for name in dir(self)
            if name.startswith("op_")
        }

    # --- effects that answer clients ----------------------------------------------

    def execute(self, effect: Any) -> None:
        if isinstance(effect, fx.TaskAccepted | fx.TaskRejected):
            if isinstance(effect, fx.TaskAccepted):
                self._note_inputs(effect.task_id)
            pending = self._pending.pop(effect.client_ref, None)
            if pending is not None:
                self._release(pending.input_digest)  # the hold _enqueue took
                pending.answer = effect
                pending.done.set()
        elif isinstance(effect, fx.TaskResolved):
            self.resolved[effect.task_id] = effect
            self._resolution.set()
            self._resolution = trio.Event()

    def _note_inputs(self, task_id: TaskId) -> None:
        """An accepted task refers to its inputs here: noted when the core accepts it,
        not when the submitter is answered, so a request cancelled in between (a client
        gone mid-batch) cannot leave the inputs of an accepted task unreferenced, to be
        deleted with another task's identical inputs."""
        from meshgpu.daemon.status import task_table

        table = task_table(self.daemon)
        entry = None if table is None else table.get(task_id)
        if entry is not None:
            self.daemon.dataplane.note_inputs(task_id, entry.spec.input_digest)

    # --- client ops --------------------------------------------------------------------

    async def op_ping(self, request: Message, responder: Responder) -> Message:
        return {"node_id": self.daemon.node_id}

    async def op_status(self, request: Message, responder: Responder) -> Message:
        from meshgpu.daemon.status import status_snapshot

        return status_snapshot(self.daemon)

    async def op_member(self, request: Message, responder: Responder) -> Message:
        """What this node knows of one member (used by a starting node to spot a twin)."""
        info = self.daemon.node.members().get(_field(request, "node_id", str))
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
        digest = check_digest(_field(request, "digest", str))
        return {"has": self.daemon.models.has(digest)}

    async def op_put_model(self, request: Message, responder: Responder) -> Message:
        """Upload a model, whole or in chunks (``more: true`` on all but the last)."""
        digest = check_digest(_field(request, "digest", str))
        data = _field(request, "data", bytes)
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
        """Store the inputs, hand the task to the core, answer when it is acknowledged;
        or, on an idle node and a tiny model, run it at once and answer with its result
        (direct.py)."""
        self._check_submittable(request)
        inputs = _field(request, "inputs", dict)
        tensors = decode_tensors(inputs)
        if tensors:
            # Every field is checked as the table would (the digest is _enqueue's).
            spec = self._spec(request, tensors, input_digest="-")
            if self.direct.allowed(request, spec.requirements, tensors):
                answer = await self.direct.run(request, tensors)
                if answer is not None:
                    return answer
                self._check_submittable(request)  # the node may have begun leaving
        pending, _ = await self._enqueue(request, inputs)
        return await self._acknowledged(pending)

    async def op_submit_batch(self, request: Message, responder: Responder) -> Message:
        """Many tasks of one model and one set of options (``tasks``: a list of
        ``{"inputs": {...}}``) in one request. Every task is handed to the core before any
        is waited for, so the batch shares one journal group commit on each holder and
        its replication requests leave together. Each task is answered on its own, in
        order (``results``: ``{"task_id", "copies", "replicas"}`` or ``{"error", "kind"}``):
        a malformed task fails alone with its reason and the others go on.

        ``group`` (optional, K from 1 to ``MAX_GROUP``): pack the tasks into task groups
        of up to K members with equal input names, shapes and dtypes (groups.py), one
        table entry each; a member's answer then carries its member id
        (``"<group id>:<index>"``), ``group`` (the group's task id) and ``members``. A
        task left alone by the packing is an ordinary task with a plain id."""
        self._check_submittable(request)
        tasks = _field(request, "tasks", list)
        if len(tasks) > MAX_BATCH:
            raise DecodeError(f"a batch holds at most {MAX_BATCH} tasks, got {len(tasks)}")
        size = request.get("group", 1)
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_GROUP:
            raise DecodeError(f"'group' is a member count from 1 to {MAX_GROUP}, got {size!r}")
        answers: list[Message | None] = [None] * len(tasks)
        waiting: list[tuple[list[int], _Pending, str, int]] = []  # indices, wait, digest, K

        def refuse(indices: list[int], error: MeshError) -> None:
            for index in indices:
                answers[index] = {"error": str(error), "kind": type(error).__name__}

        decoded: list[tuple[int, dict[str, Any]]] = []
        for index, task in enumerate(tasks):
            try:
                inputs = _batch_inputs(task)
                if size == 1:
                    pending, input_digest = await self._enqueue(request, inputs)
                    waiting.append(([index], pending, input_digest, 1))
                    continue
                tensors = decode_tensors(inputs)
                if not tensors:
                    raise TaskError("a task needs at least one input tensor")
                decoded.append((index, tensors))
            except MeshError as error:
                refuse([index], error)
        for members in pack(decoded, size):
            indices = [index for index, _ in members]
            try:
                if len(members) == 1:
                    pending, input_digest = await self._enqueue(
                        request, _batch_inputs(tasks[indices[0]])
                    )
                else:
                    pending, input_digest = await self._enqueue_group(
                        request, [tensors for _, tensors in members]
                    )
                waiting.append((indices, pending, input_digest, len(members)))
            except MeshError as error:
                refuse(indices, error)
        deadline = trio.current_time() + SUBMIT_TIMEOUT  # one for the batch, not per task
        for indices, pending, _, count in waiting:
            try:
                answer = await self._acknowledged(pending, deadline)
            except MeshError as error:
                refuse(indices, error)
                continue
            if count == 1:
                answers[indices[0]] = answer
                continue
            for position, index in enumerate(indices):
                member = MemberId(TaskId.parse(answer["task_id"]), position)
                answers[index] = {
                    **answer,
                    "task_id": str(member),
                    "group": answer["task_id"],
                    "members": count,
                }
        return {"results": answers}

    async def _enqueue_group(
        self, request: Message, members: Sequence[Mapping[str, Any]]
    ) -> tuple[_Pending, str]:
        """:meth:`_enqueue` for a task group: one inputs blob holding every member's
        tensors and one ``SubmitTask`` whose spec says how many members it carries."""
        daemon = self.daemon
        blob = canonical_group_bytes(members)
        input_digest = hashlib.sha256(blob).hexdigest()
        spec = dataclasses.replace(
            self._spec(request, dict(members[0]), input_digest), members=len(members)
        )
        daemon.dataplane.submitting[input_digest] += 1
        try:
            await daemon.dataplane.store(input_digest, INPUTS, blob, wait=False)
        except BaseException:
            self._release(input_digest)
            raise
        client_ref = f"c{next(self._refs)}"
        pending = self._pending[client_ref] = _Pending(client_ref, input_digest)
        daemon.feed(SubmitTask(client_ref, spec))
        return pending, input_digest

    def _check_submittable(self, request: Message) -> None:
        daemon = self.daemon
        if daemon.leaving:
            raise TaskError(f"node {daemon.node_id} is leaving the mesh; submit to another peer")
        model_digest = check_digest(_field(request, "model_digest", str))
        if not daemon.models.has(model_digest):
            raise TaskError(
                f"model {model_digest[:12]} is not on node {daemon.node_id}: upload it first "
                "with put_model (the client library does this for you)"
            )

    async def _enqueue(self, request: Message, inputs: dict[str, Any]) -> tuple[_Pending, str]:
        """Validate one task, store its inputs and feed ``SubmitTask``; returns what to wait
        on and the input digest. The inputs are held (``submitting``) from before they are
        stored until the core answers the submission (:meth:`execute` releases them), not
        until the request ends: a request cancelled while the task replicates must not
        leave an accepted task's inputs unreferenced for a moment (a DropPayload of
        another task's identical inputs would delete them)."""
        daemon = self.daemon
        tensors = decode_tensors(inputs)
        if not tensors:
            raise TaskError("a task needs at least one input tensor")
        blob = canonical_tensor_bytes(tensors)
        input_digest = hashlib.sha256(blob).hexdigest()
        spec = self._spec(request, tensors, input_digest)
        daemon.dataplane.submitting[input_digest] += 1
        try:
            # Inline inputs need no fsync of their own: the task's first journal record,
            # written after them, gates the acknowledgement (durability.py).
            await daemon.dataplane.store(input_digest, INPUTS, blob, wait=False)
        except BaseException:
            self._release(input_digest)
            raise
        client_ref = f"c{next(self._refs)}"
        pending = self._pending[client_ref] = _Pending(client_ref, input_digest)
        daemon.feed(SubmitTask(client_ref, spec))
        return pending, input_digest

    def _release(self, input_digest: str) -> None:
        submitting = self.daemon.dataplane.submitting
        submitting[input_digest] -= 1
        if not submitting[input_digest]:
            del submitting[input_digest]

    def _spec(self, request: Message, tensors: dict[str, Any], input_digest: str) -> TaskSpec:
        deadline = request.get("deadline_s")
        try:
            return TaskSpec(
                model_digest=request["model_digest"],
                input_digest=input_digest,
                input_shapes=tuple(sorted((n, tuple(a.shape)) for n, a in tensors.items())),
                priority=Priority.parse(str(request.get("priority", "normal"))),
                requirements=_requirements(request),
                deadline_s=None if deadline is None else float(deadline),
                replicas=int(request.get("replicas", 2)),
            )
        except (TypeError, ValueError) as error:
            raise DecodeError(f"submit has a malformed field: {error}") from None

    async def _acknowledged(self, pending: _Pending, deadline: float | None = None) -> Message:
        """Wait for the core's answer to one submission (until ``deadline``, trio time,
        or ``SUBMIT_TIMEOUT`` from now)."""
        if deadline is None:
            deadline = trio.current_time() + SUBMIT_TIMEOUT
        try:
            with trio.fail_at(deadline):
                await pending.done.wait()
        except trio.TooSlowError:
            # The pending stays: the core answers every submission in the end, and that
            # answer releases the inputs' hold (execute).
            raise TaskError("the mesh did not acknowledge the task in time; retry") from None
        answer = pending.answer
        if isinstance(answer, fx.TaskRejected):
            raise TaskError(f"task refused: {answer.reason}")
        self.submitted += 1
        return {
            "task_id": str(answer.task_id),
            "copies": answer.copies,
            "replicas": answer.replicas,
        }

    async def op_results(self, request: Message, responder: Responder) -> Message:
        """Stream one response per task id as each is resolved (done or failed). A member
        id of a task group (groups.py) is answered from its group's result, fetched once
        for all the members asked for in the same burst."""
        wanted: dict[TaskId, set[TaskId | MemberId]] = defaultdict(set)
        for text in _field(request, "task_ids", list):
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
        from meshgpu.daemon.status import worker_of

        message: Message = {
            "task_id": str(resolved.task_id),
            "state": resolved.state,
            "reason": resolved.reason,
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
        refs = [parse_task_ref(text) for text in _field(request, "task_ids", list)]
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
            digests = _field(request, "digests", list)
            if len(digests) > MAX_BATCH:
                raise DecodeError(f"at most {MAX_BATCH} digests per request")
            blobs = {}
            for digest in digests:
                data = self.daemon.payloads.get_memory(check_digest(str(digest)), INPUTS)
                if data is not None:
                    blobs[digest] = data
            return {"blobs": blobs}
        digest = check_digest(_field(request, "digest", str))
        data = self.daemon.payloads.get_memory(digest, INPUTS)
        if data is None:
            data = await trio.to_thread.run_sync(self.daemon.payloads.get_bytes, digest, INPUTS)
        if data is None:
            raise StorageError(f"inputs {digest[:12]} are not on node {self.daemon.node_id}")
        return {"data": data}

    async def op_get_model(self, request: Message, responder: Responder) -> Message:
        digest = check_digest(_field(request, "digest", str))
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
        data = _field(request, "data", bytes)
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
