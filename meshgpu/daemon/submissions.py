"""Submissions: a client's tasks into the core, and the core's answer back to it.

``submit`` and ``submit_batch`` (docs/client-api.md) validate each task, store its inputs
(held until the core answers, so nothing deletes them meanwhile), feed ``SubmitTask`` and
wait for the ``TaskAccepted``/``TaskRejected`` that answers it; a tiny task on an idle node
is run at once instead (direct.py), and a batch may be packed into task groups
(groups.py). Separate from the other API ops (handlers.py) because it is the one path
with state of its own: the submissions waiting for an answer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import trio

from meshgpu.core import effects as fx
from meshgpu.core.coalescing import lane_of
from meshgpu.core.events import Event, SubmitTask
from meshgpu.core.tasks import DeviceRequirements, Priority, TaskId, TaskSpec
from meshgpu.core.tasks.spec import LABEL_MAX, parse_labels
from meshgpu.core.types import NodeId
from meshgpu.daemon.api import Message, request_field
from meshgpu.daemon.blobs import read_layout
from meshgpu.daemon.coalescing import Coalescer
from meshgpu.daemon.dataplane import INPUTS
from meshgpu.daemon.direct import DirectRuns
from meshgpu.daemon.groups import MAX_GROUP, MemberId, pack
from meshgpu.daemon.modelstore import check_digest
from meshgpu.daemon.payloads import canonical_group_bytes, canonical_tensor_bytes, decode_tensors
from meshgpu.errors import DecodeError, MeshError, TaskError

if TYPE_CHECKING:
    from meshgpu.daemon.modelstore import ModelStore
    from meshgpu.daemon.payloads import PayloadStore
    from meshgpu.daemon.status import TaskLookup

MAX_BATCH = 1024
"""Most tasks in one ``submit_batch`` request (the client sends smaller batches)."""
SUBMIT_TIMEOUT = 120.0
"""Longest a submit waits for its acknowledgement (the core answers well before)."""
SUBMISSION_ID_MAX = 128
"""Longest client-chosen submission id (``submission``) taken, in characters."""
REMEMBERED_SUBMISSIONS = 65536
"""Submission ids an entry node remembers (the oldest are forgotten first): enough for a
client's resends after a broken link, which come within seconds of the first try."""
SETTLE_WAIT_MAX_S = 5.0
"""Longest a ``settle_submissions`` request waits for submissions still replicating."""


@dataclass
class _Pending:
    """A submission waiting for ``TaskAccepted``/``TaskRejected``."""

    client_ref: str
    input_digest: str
    done: trio.Event = field(default_factory=trio.Event)
    answer: Any = None


def _batch_inputs(task: Any) -> dict[str, Any]:
    """The ``inputs`` map of one task of a ``submit_batch`` request."""
    if not isinstance(task, dict):
        raise DecodeError("each task of a batch is a map with an 'inputs' field")
    inputs = task.get("inputs")
    if not isinstance(inputs, dict):
        raise DecodeError("request field 'inputs' is missing or not a map")
    return inputs


def label_of(message: Any) -> str | None:
    """The optional ``label`` of a ``submit`` request or of one task of a batch."""
    label = message.get("label") if isinstance(message, dict) else None
    if label is not None and not isinstance(label, str):
        raise DecodeError(f"'label' is a string, got {type(label).__name__}")
    return label


def submission_of(message: Any) -> str | None:
    """The optional ``submission`` id of a ``submit`` request or of one task of a batch:
    chosen by the client, the same on every resend of that task (see :class:`Submissions`)."""
    submission = message.get("submission") if isinstance(message, dict) else None
    if submission is None:
        return None
    if not isinstance(submission, str) or not 1 <= len(submission) <= SUBMISSION_ID_MAX:
        raise DecodeError(
            f"'submission' is a string of 1 to {SUBMISSION_ID_MAX} characters, "
            f"got {submission!r:.80}"
        )
    return submission


def group_label(labels: Sequence[str | None]) -> str | None:
    """One label for a task group from its members' (``meshgpu tasks`` shows one row per
    group): the members' labels joined by commas when that fits, else the first and the
    last with the count; None when no member has one."""
    named = [label for label in labels if label]
    if not named:
        return None
    if len(set(named)) == 1:
        return named[0]
    joined = ",".join(named)
    if len(joined) <= LABEL_MAX:
        return joined
    short = f"{named[0][:80]} .. {named[-1][:80]} ({len(labels)})"
    return short[:LABEL_MAX]


def _whole_field(request: Message, name: str, default: int, what: str) -> int:
    """A submit request's integer field (``default`` where absent), as the client and
    the HTTP port check it: ``int()`` cut 2.7 to 2 and took ``True`` as 1 on the quiet.
    A float with a whole value (``4e9``) is the integer it names, within what msgpack
    carries (``1e30`` is not: the task's spec could be neither journaled nor sent)."""
    value = request.get(name, default)
    whole = int(value) if isinstance(value, float) and value.is_integer() else value
    if isinstance(whole, int) and not isinstance(whole, bool) and -(2**63) <= whole < 2**63:
        return whole
    raise DecodeError(f"submit has a malformed field: {name} is {what}, an integer, got {value!r}")


def _requirements(request: Message) -> DeviceRequirements:
    """The task's device requirements from a submit request's fields."""
    device_type = request.get("device_type")
    try:
        return DeviceRequirements(
            device_type=None if device_type is None else str(device_type),
            min_memory=_whole_field(request, "min_memory", 0, "a device's bytes"),
            fp16=bool(request.get("fp16", False)),
            require=parse_labels(request.get("require") or [], "required label"),
            prefer=parse_labels(request.get("prefer") or [], "preferred label"),
        )
    except TaskError as error:
        raise DecodeError(f"submit has a malformed field: {error}") from None
    except (TypeError, ValueError) as error:
        raise DecodeError(f"submit has a malformed field: {error}") from None


class InputStore(Protocol):
    """What submissions need of the data plane: store a task's inputs, hold them while
    the core has not answered (``submitting``: a DropPayload of a finished task with
    equal inputs leaves them), and note the accepted task that refers to them."""

    @property
    def submitting(self) -> Counter[str]: ...

    def note_inputs(self, task_id: TaskId, input_digest: str) -> None: ...

    def relayed_copies(self, input_digest: str) -> tuple[NodeId, ...]: ...

    async def store(self, key: Any, kind: str, data: bytes, *, wait: bool) -> None: ...


def _sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


class Submissions:
    """The submissions of one daemon's clients, from request to the core's answer.

    Idempotent submissions: a client names each task with a ``submission`` id of its own
    choosing and sends the same id again when it resends the task (a link that broke
    before the answer came: the client cannot tell whether the task was accepted). This
    node remembers the ids it fed to the core, with what answers them, and answers a
    resend with the first submission's answer (the same task id) instead of submitting
    the task again; a resend while the first is still replicating waits for that answer.
    An id sent again with other inputs is refused. Remembered in memory (the last
    ``REMEMBERED_SUBMISSIONS``): a resend to another peer, after this node died, is a
    new task there (its first copy is adopted as an orphan by its holders, so that is a
    duplicate execution, never a duplicate delivery: the client knows one id).
    Rejected: journaling the ids (one more record per task on the acknowledgement's
    path for a case the orphan adoption already makes safe) and carrying them in the
    replicated spec (a wire change of the task table for the same case)."""

    def __init__(
        self,
        node_id: NodeId,
        inputs: InputStore,
        payloads: PayloadStore,
        models: ModelStore,
        direct: DirectRuns,
        *,
        task_entry: TaskLookup,
        feed: Callable[[Event], None],
        count: Callable[[str], None],
        leaving: Callable[[], bool],
    ) -> None:
        self.node_id = node_id
        self.inputs = inputs
        self.payloads = payloads
        self.models = models
        self._task_entry = task_entry
        self._feed = feed
        self._count = count
        self._leaving = leaving
        self._refs = itertools.count(1)
        self._pending: dict[str, _Pending] = {}
        self._tasks_of: OrderedDict[str, tuple[_Pending, int, int]] = OrderedDict()
        """Per task's submission id (a group member's too): what answers it, its place in
        its group and the group's member count (1: an ordinary task). ``settle`` reads
        it, and ``_resent`` for an ordinary task's id (bounded, oldest first)."""
        self._groups: OrderedDict[str, _Pending] = OrderedDict()
        """What answers each group's whole submission id (its members' ids joined by
        ``+``), for ``_resent`` (bounded, oldest first)."""
        self._withdrawn: OrderedDict[str, None] = OrderedDict()
        """Submission ids ``settle`` found unknown: refused if they arrive later."""
        self.resends = 0
        """Resent submissions answered with the first one's task id."""
        self.submitted = 0
        self.direct = direct
        self.coalescer = Coalescer(self._submit_one, self._submit_group)
        """Concurrent single submissions of one lane into one entry (coalescing.py); it
        coalesces once its ``run`` is started in the daemon's nursery."""

    def answer(self, effect: fx.TaskAccepted | fx.TaskRejected) -> None:
        """The core answered a submission: wake its waiter, release the inputs' hold."""
        if isinstance(effect, fx.TaskAccepted):
            self._note_inputs(effect.task_id)
        pending = self._pending.pop(effect.client_ref, None)
        if pending is not None:
            self._release(pending.input_digest)  # the hold _store_and_feed took
            pending.answer = effect
            pending.done.set()

    def _note_inputs(self, task_id: TaskId) -> None:
        """An accepted task refers to its inputs here: noted when the core accepts it,
        not when the submitter is answered, so a request cancelled in between (a client
        gone mid-batch) cannot leave the inputs of an accepted task unreferenced, to be
        deleted with another task's identical inputs."""
        entry = self._task_entry(task_id)
        if entry is not None:
            self.inputs.note_inputs(task_id, entry.spec.input_digest)

    async def submit(self, request: Message) -> Message:
        """Store the inputs, hand the task to the core, answer when it is acknowledged;
        or, on an idle node and a tiny model, run it at once and answer with its result
        (direct.py)."""
        self.check_submittable(request)
        submission = submission_of(request)
        self._refuse_withdrawn(submission)
        if "inputs" not in request and "input_digest" in request:
            pending = await self._enqueue_uploaded(request, submission)
            return await self._acknowledged(pending)
        inputs = request_field(request, "inputs", dict)
        tensors = decode_tensors(inputs)
        if tensors:
            # Every field is checked as the table would (the digest is _enqueue's).
            spec = self._spec(request, tensors, input_digest="-")
            if self.direct.allowed(request, spec.requirements, tensors, spec.deadline_s):
                answer = await self.direct.run(request, tensors)
                if answer is not None:
                    return answer
                self.check_submittable(request)  # the node may have begun leaving
        if tensors and self.coalescer.running:

            def digest() -> str:  # for resends of a coalesced submission only
                return _sha256(canonical_tensor_bytes(tensors))

            dtypes = {name: array.dtype.str for name, array in tensors.items()}
            return await self.coalescer.submit(
                lane_of(spec, dtypes), request, tensors, label_of(request), submission, digest
            )
        pending, _ = await self._enqueue(request, inputs, label_of(request), submission)
        return await self._acknowledged(pending)

    async def _submit_one(
        self,
        request: Message,
        tensors: Mapping[str, Any],
        label: str | None,
        submission: str | None,
    ) -> Message:
        """One ordinary task into the table, answered once acknowledged (coalescing.py)."""
        self.check_submittable(request)  # it may have waited while the node began leaving
        pending, _ = await self._store_and_feed(
            request, canonical_tensor_bytes(dict(tensors)), dict(tensors), 1, label, submission
        )
        return await self._acknowledged(pending)

    async def _submit_group(
        self, request: Message, members: Sequence[Mapping[str, Any]], label: str | None
    ) -> Message:
        """A coalesced group into the table, answered once acknowledged (coalescing.py)."""
        self.check_submittable(request)  # its members waited: the node may be leaving now
        pending, _ = await self._enqueue_group(request, members, label)
        return await self._acknowledged(pending)

    async def submit_batch(self, request: Message) -> Message:
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
        self.check_submittable(request)
        tasks = request_field(request, "tasks", list)
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
                submission_of(task)  # a malformed id fails its task alone, here
                if size == 1:
                    pending, input_digest = await self._enqueue(
                        request, inputs, label_of(task), submission_of(task)
                    )
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
                    task = tasks[indices[0]]
                    pending, input_digest = await self._enqueue(
                        request, _batch_inputs(task), label_of(task), submission_of(task)
                    )
                else:
                    ids = [submission_of(tasks[index]) for index in indices]
                    pending, input_digest = await self._enqueue_group(
                        request,
                        [tensors for _, tensors in members],
                        group_label([label_of(tasks[index]) for index in indices]),
                        None if None in ids else "+".join(str(i) for i in ids),
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
        self,
        request: Message,
        members: Sequence[Mapping[str, Any]],
        label: str | None,
        submission: str | None = None,
    ) -> tuple[_Pending, str]:
        """:meth:`_enqueue` for a task group: one inputs blob holding every member's
        tensors and one ``SubmitTask`` whose spec says how many members it carries
        (``submission``: the members' ids joined, so a resend packed alike is the same)."""
        return await self._store_and_feed(
            request,
            canonical_group_bytes(members),
            dict(members[0]),
            len(members),
            label,
            submission,
        )

    def check_submittable(self, request: Message) -> None:
        if self._leaving():
            raise TaskError(f"node {self.node_id} is leaving the mesh; submit to another peer")
        model_digest = check_digest(request_field(request, "model_digest", str))
        if not self.models.has(model_digest):
            raise TaskError(
                f"model {model_digest[:12]} is not on node {self.node_id}: upload it first "
                "with put_model (the client library does this for you)"
            )

    async def _enqueue(
        self,
        request: Message,
        inputs: dict[str, Any],
        label: str | None = None,
        submission: str | None = None,
    ) -> tuple[_Pending, str]:
        """Validate one task, store its inputs and feed ``SubmitTask``; returns what to wait
        on and the input digest. The inputs are held (``submitting``) from before they are
        stored until the core answers the submission (:meth:`execute` releases them), not
        until the request ends: a request cancelled while the task replicates must not
        leave an accepted task's inputs unreferenced for a moment (a DropPayload of
        another task's identical inputs would delete them)."""
        tensors = decode_tensors(inputs)
        if not tensors:
            raise TaskError("a task needs at least one input tensor")
        return await self._store_and_feed(
            request, canonical_tensor_bytes(tensors), tensors, 1, label, submission
        )

    def _resent(self, submission: str | None, input_digest: str) -> _Pending | None:
        """What answers ``submission`` if this node was sent it before (a resend), else
        None; an id sent again with other inputs is refused."""
        if submission is None:
            return None
        first = self._groups.get(submission)
        if first is None:
            known = self._tasks_of.get(submission)
            if known is None or known[2] != 1:
                return None  # unknown, or a group member's id: not the id it was sent with
            first = known[0]
        if first.input_digest != input_digest:
            raise DecodeError(
                f"submission id {submission!r} was sent before with other inputs; "
                "choose a new id for each task"
            )
        self.resends += 1
        self._count("submissions_resent")
        return first

    def _remember(self, submission: str | None, pending: _Pending, members: int = 1) -> None:
        """Remember what answers ``submission`` (a resend gets it; ``settle`` finds each
        task's): an ordinary task's id once, in ``_tasks_of``; a group's whole id in
        ``_groups`` and each member's in ``_tasks_of``."""
        if submission is None:
            return
        if members > 1:
            self._groups[submission] = pending
            while len(self._groups) > REMEMBERED_SUBMISSIONS:
                self._groups.popitem(last=False)
        parts = submission.split("+") if members > 1 else [submission]
        if len(parts) == members:
            for position, part in enumerate(parts):
                self._tasks_of[part] = (pending, position, members)
            while len(self._tasks_of) > REMEMBERED_SUBMISSIONS:
                self._tasks_of.popitem(last=False)

    def _refuse_withdrawn(self, submission: str | None) -> None:
        """Refuse a submission ``settle`` already told its client was never accepted."""
        if submission is None or not self._withdrawn:
            return
        if any(part in self._withdrawn for part in submission.split("+")):
            raise TaskError(
                "the client gave this submission up (cut off before it arrived); not submitted"
            )

    async def settle(self, submissions: Sequence[str], wait_s: float) -> Message:
        """What became of submissions whose request a client cut off before the answer
        (its ``--timeout`` or Ctrl-C): per id, in order, ``{task_id}`` (a group member's
        also ``group`` and ``members``) if accepted, ``{error}`` if refused, ``{pending:
        true}`` if still replicating after ``wait_s``, or ``{withdrawn: true}`` if this
        node never saw it: it is then refused should the cut-off request still arrive,
        so that every answer but ``pending`` is final."""
        for submission in submissions:
            if submission not in self._tasks_of and not self.coalescer.knows(submission):
                self._withdrawn[submission] = None
                while len(self._withdrawn) > REMEMBERED_SUBMISSIONS:
                    self._withdrawn.popitem(last=False)
        with trio.move_on_after(min(max(wait_s, 0.0), SETTLE_WAIT_MAX_S)):
            for submission in submissions:
                known = self._tasks_of.get(submission)
                if known is not None:
                    await known[0].done.wait()
        answers: list[Message] = []
        for submission in submissions:
            known = self._tasks_of.get(submission)
            if known is None:
                withdrawn = submission in self._withdrawn
                answers.append({"withdrawn": True} if withdrawn else {"pending": True})
                continue
            pending, position, members = known
            answer = pending.answer
            if answer is None:
                answers.append({"pending": True})
            elif isinstance(answer, fx.TaskRejected):
                answers.append({"error": f"task refused: {answer.reason}"})
            elif members == 1:
                answers.append({"task_id": str(answer.task_id)})
            else:
                member = MemberId(answer.task_id, position)
                answers.append(
                    {"task_id": str(member), "group": str(answer.task_id), "members": members}
                )
        return {"results": answers}

    async def _store_and_feed(
        self,
        request: Message,
        blob: bytes,
        tensors: dict[str, Any],
        members: int,
        label: str | None = None,
        submission: str | None = None,
    ) -> tuple[_Pending, str]:
        """Hold and store one task's inputs blob and feed its ``SubmitTask``; returns what
        to wait on and the input digest (``tensors``: one member's, for the spec); a
        resend (``submission`` seen before) only returns the first one's."""
        input_digest = hashlib.sha256(blob).hexdigest()
        first = self._resent(submission, input_digest)
        if first is not None:
            return first, input_digest
        self._refuse_withdrawn(submission)
        spec = self._spec(request, tensors, input_digest)
        if members != 1 or label is not None:
            spec = dataclasses.replace(spec, members=members, label=label)
        self.inputs.submitting[input_digest] += 1
        try:
            # Inline inputs need no fsync of their own: the task's first journal record,
            # written after them, gates the acknowledgement (durability.py).
            await self.inputs.store(input_digest, INPUTS, blob, wait=False)
        except BaseException:
            self._release(input_digest)
            raise
        try:
            self._refuse_withdrawn(submission)  # settled while the inputs were stored
        except TaskError:
            self._release(input_digest)
            raise
        client_ref = f"c{next(self._refs)}"
        pending = self._pending[client_ref] = _Pending(client_ref, input_digest)
        self._remember(submission, pending, members)
        self._feed(SubmitTask(client_ref, spec))
        return pending, input_digest

    async def _enqueue_uploaded(self, request: Message, submission: str | None = None) -> _Pending:
        """:meth:`_enqueue` for inputs uploaded in ranges beforehand (``put_inputs``) and
        named by ``input_digest``: held at once, then their shapes read from the stored
        payload's headers for the spec."""
        input_digest = check_digest(request_field(request, "input_digest", str))
        if not self.payloads.has(input_digest, INPUTS):
            raise TaskError(
                f"inputs {input_digest[:12]} are not on node {self.node_id}: upload them "
                "first with put_inputs (the client library does this for you)"
            )
        first = self._resent(submission, input_digest)
        if first is not None:
            return first
        self._refuse_withdrawn(submission)
        self.inputs.submitting[input_digest] += 1  # held from here: no await before
        try:
            path = self.payloads.path(input_digest, INPUTS)
            slots = await trio.to_thread.run_sync(read_layout, path)
            if not slots:
                raise TaskError("a task needs at least one input tensor")
            shapes = {slot.name: slot.shape for slot in slots}
            spec = self._spec(request, shapes, input_digest)
            self._refuse_withdrawn(submission)  # settled while the layout was read
        except BaseException:
            self._release(input_digest)
            raise
        client_ref = f"c{next(self._refs)}"
        pending = self._pending[client_ref] = _Pending(client_ref, input_digest)
        self._remember(submission, pending)
        self._feed(SubmitTask(client_ref, spec, self.inputs.relayed_copies(input_digest)))
        return pending

    def _release(self, input_digest: str) -> None:
        submitting = self.inputs.submitting
        submitting[input_digest] -= 1
        if not submitting[input_digest]:
            del submitting[input_digest]

    def _spec(self, request: Message, tensors: Mapping[str, Any], input_digest: str) -> TaskSpec:
        """The task's spec; ``tensors``: its inputs, or their shapes, by name."""
        deadline = request.get("deadline_s")
        shapes = ((n, tuple(getattr(a, "shape", a))) for n, a in tensors.items())
        try:
            return TaskSpec(
                model_digest=request["model_digest"],
                input_digest=input_digest,
                input_shapes=tuple(sorted(shapes)),
                priority=Priority.parse(str(request.get("priority", "normal"))),
                requirements=_requirements(request),
                deadline_s=None if deadline is None else float(deadline),
                replicas=_whole_field(request, "replicas", 2, "the nodes that journal a task"),
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
