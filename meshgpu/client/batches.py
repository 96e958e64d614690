"""Submitting many tasks at once: ``submit_many`` and ``map`` of :class:`AsyncClient`.

A batch travels as one ``submit_batch`` request (up to ``BATCH_MAX`` tasks): the entry
node journals it with one group commit and replicates it together, and the per-request
costs (framing, a response, a trip through both event loops) are paid once per batch
instead of once per task. Each task of a batch is answered on its own: a malformed one
fails alone. ``map`` keeps at most ``window`` tasks unfinished and submits, in one
request, every input the window has room for at that moment; it never waits to fill a
batch, so a lone free slot is used at once. Rejected: a timer that gathers a batch
(latency on every sequential caller for a saving only bursts need). The one wait: with
groups of K and a full window, up to ``GATHER_S`` (20 ms) for K places, since a
group's members come back together and a refill one place at a time would make groups
of one; a caller whose window is not full never waits.

Task groups (docs/task-queue.md): with ``group=K`` a batch's tasks are packed by the
entry node into table entries of up to K members each, which the mesh replicates, assigns,
runs (in one thread hop) and retries as one; every member keeps its own handle, id
(``"<group id>:<index>"``) and outcome. ``map`` picks K itself (:func:`choose_group`)
so that a group stays short in time (400 ms) and the window still spreads over the live workers.
The client tells the mesh ``collected`` once per group, when it holds every member's
outcome (:meth:`BatchedSubmission._collectable`).

A mixin, so that :class:`~meshgpu.client.session.AsyncClient` (the link, failover and
result streams) stays one concept per module; it relies on the client's
``_submit_request``, ``_handle_of`` and ``_nursery``. ``map`` itself, and how a map
stops (Ctrl-C, a ``break``), is in mapping.py; the group size and the window are here.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import operator
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import trio

from meshgpu.client.handles import AsyncTaskHandle
from meshgpu.client.models import ModelBlob
from meshgpu.core.tasks.spec import LABEL_MAX, parse_labels
from meshgpu.daemon.blobs import TensorBlob, tensor_nbytes
from meshgpu.daemon.groups import group_of
from meshgpu.daemon.payloads import encode_tensors
from meshgpu.errors import ConfigError, DecodeError, MeshError, RequestFailedError
from meshgpu.tensor_types import is_bfloat16, string_array

MAX_TASK_BYTES = 4 << 30
"""Default limit on one task's input bytes, checked by the client before it sends any."""
MAX_TASK_BYTES_ENV = "MESHGPU_MAX_TASK_BYTES"
BATCH_MAX = 64
"""Most tasks in one ``submit_batch`` request from :meth:`BatchedSubmission.submit_many`."""
GROUP_MAX = 64
"""Most members ``map`` puts in one task group."""
GROUP_TARGET_S = 0.4
"""How long a group should run at most, by the model's published per-member latency: a
group is one retry unit and finishes as one, so a long one delays its first members'
results and repeats more work when its worker dies. 400 ms because one table entry
costs about 23 ms of CPU across the mesh on a 2-core loopback lab (10 nodes, 20 ms
synthetic devices: 6.0 ms per task at K = 5, 2.55 ms at K = 20, i.e. 23 ms per entry
plus 1.4 ms per member), so a 400 ms group spends about 6 % of its device time on
bookkeeping, where 100 ms spent a quarter and capped 10 nodes at 57 % of their ideal
(90-92 % at K = 20; 78-83 % at K = 25 with a larger window, so no further). ``map`` is
the bulk path: a caller who wants each result at once submits alone (a direct run on an
idle node) or passes ``group=1``. A large mesh lengthens groups beyond this
(``ENTRY_RATE``)."""
ENTRY_RATE = 20.0
"""Table entries a second that one ``map`` keeps its mesh busy with, at most: groups last
at least ``capacity / ENTRY_RATE`` (the mesh's offered capacity, runs and prefetches).
Every entry of a map passes through the client's one entry node and the mesh's one
leader, so the entry rate a mesh sustains does not grow with the mesh while the rate
needed to keep every slot busy does: measured on the 2-core loopback lab with 20 ms
synthetic devices, 30 daemons handled 18-20 groups a second whatever the group size
(every core busy), so K = 20 ran them at a quarter of their ideal and K = 64 at
two-thirds or more. 20 a second is also small beside what one entry node handles on a
core of its own (about 14 ms of its CPU per entry)."""
GATHER_S = 0.02
"""Longest ``map`` waits, with a full window, for a whole group's worth of places."""
GROUP_UNKNOWN = 4
"""The group size while no latency of the model has been published (a first run)."""
PROBE_REFRESH_S = 0.25
"""While no latency of the model is published, how often a ``map`` that has a probe's
worth of tasks out asks for the member list again."""
PROBE_MAX_S = 10.0
"""Longest a ``map`` holds its window to a probe waiting for a first latency."""


class _Window:
    """The free places of one ``map``'s window (a semaphore that can also wait, briefly,
    for more places to come free: :meth:`gather`)."""

    def __init__(self, size: int) -> None:
        self._free = trio.Semaphore(size)
        self._freed = trio.Event()

    @property
    def value(self) -> int:
        return self._free.value

    async def acquire(self) -> None:
        await self._free.acquire()

    def acquire_nowait(self) -> None:
        self._free.acquire_nowait()

    def release(self) -> None:
        self._free.release()
        self._freed.set()

    async def gather(self, want: int, seconds: float) -> None:
        """Wait until ``want`` places are free, at most ``seconds``."""
        with trio.move_on_after(seconds):
            while self._free.value < want:
                self._freed = trio.Event()
                await self._freed.wait()


class BatchedSubmission:
    """``submit_many`` and ``map`` (mixed into :class:`~meshgpu.client.AsyncClient`)."""

    _nursery: trio.Nursery | None
    members: list[dict[str, Any]]
    _group_left: dict[str, int]
    """Per task group this client submitted: members whose outcome has not arrived yet."""
    _group_taken: dict[str, list[str]]
    """Per task group still counted in ``_group_left``: the members already taken."""

    max_task_bytes: int
    chunk_bytes: int

    async def _submit_request(
        self,
        blob: ModelBlob,
        op: str,
        upload: TensorBlob | None = None,
        sent_on: list[Any] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        raise NotImplementedError

    async def _leave_full_peer(self, full: list[str]) -> bool:
        raise NotImplementedError

    async def status(self) -> dict[str, Any]:
        raise NotImplementedError

    def _handle_of(self, reply: dict[str, Any], deferred: bool = False) -> AsyncTaskHandle:
        raise NotImplementedError

    async def _probe(self, model_digest: str, out: Callable[[], int], until: float) -> int:
        """While the mesh has published no latency of the model, keep ``out()`` (the
        map's tasks out, the place just taken included) within a probe: one group of
        ``GROUP_UNKNOWN`` per unit of live capacity, asking for the member list every
        ``PROBE_REFRESH_S`` while the probe is full, until a latency shows or the time
        ``until`` (then the map goes on with groups of ``GROUP_UNKNOWN``, as a mesh
        whose nodes publish no latency of the model leaves no better choice). Returns
        how many tasks the next request may carry. Without it a map's first fill of its
        window went out in groups of ``GROUP_UNKNOWN``: at 30 loopback daemons a window
        of 7,680 became 1,920 table entries, about 100 s of the mesh's entry rate,
        before any group of the right size."""
        while model_latency(self.members, model_digest) is None:
            if trio.current_time() >= until:
                return BATCH_MAX
            room = GROUP_UNKNOWN * live_capacity(self.members) - out() + 1
            if room > 0:
                return room
            with contextlib.suppress(MeshError):
                await self.status()
            if model_latency(self.members, model_digest) is None:
                await trio.sleep(PROBE_REFRESH_S)
        return BATCH_MAX

    async def submit_many(
        self,
        model: Any,
        many_inputs: Iterable[Mapping[str, Any]],
        *,
        priority: str = "normal",
        replicas: int = 2,
        deadline_s: float | None = None,
        device_type: str | None = None,
        min_memory: int = 0,
        fp16: bool = False,
        require: Any = None,
        prefer: Any = None,
        group: int = 1,
        label: str | Sequence[str | None] | None = None,
        acknowledge: bool = True,
        watch: bool = True,
        submissions: Sequence[str] | None = None,
        sent_on: list[Any] | None = None,
    ) -> list[AsyncTaskHandle | MeshError]:
        """Submit many tasks of one model with the same options in as few requests as
        possible (``submit_batch``, up to ``BATCH_MAX`` tasks each): the mesh journals
        and replicates a batch together. Returns, in input order, a handle per task (as
        :meth:`submit` would) or the error that refused that task alone (a malformed
        input); the other tasks are submitted regardless. A broken connection makes the
        whole batch be submitted again, as :meth:`submit` does, with the same
        submission ids: a peer that accepted some of its tasks before the link broke
        answers those with their first task ids instead of running them again.

        ``group``: pack up to that many tasks of equal input shapes into one task group
        per request (1, the default: one table entry per task). ``label``: a name for
        every task (``meshgpu tasks`` shows it), or one per input, in order.
        ``acknowledge=False``: the caller marks each outcome collected itself, with
        :meth:`collected`, once it has stored it (``map`` does, when its consumer
        takes the item); until then the mesh keeps the result. ``watch=False``: only
        submit, as :meth:`submit` with ``watch=False`` (``meshgpu submit --no-wait``):
        the handles never resolve here; the results wait for a later ``attach``.
        ``submissions``: the tasks' submission ids, one per input (new ones by default),
        and ``sent_on``: a list to which each link a request went out on is appended, so
        that a caller who cuts this off can ask that peer what it accepted (``map``)."""
        group = member_count(group)
        blob = ModelBlob.of(model)
        fields = submit_fields(
            blob, priority, replicas, deadline_s, device_type, min_memory, fp16, require, prefer
        )
        if group != 1:
            fields["group"] = group
        answers: list[AsyncTaskHandle | MeshError | None] = []
        labels: dict[int, str | None] = {}
        encoded: list[tuple[int, dict[str, Any]]] = []
        large: list[tuple[int, TensorBlob]] = []
        many_inputs = list(many_inputs)
        ids = (
            list(submissions)
            if submissions is not None
            else [new_submission_id() for _ in many_inputs]
        )
        for index, inputs in enumerate(many_inputs):
            answers.append(None)
            name = label if label is None or isinstance(label, str) else label[index]
            labels[index] = name
            try:
                prepared = prepare_inputs(inputs, self.max_task_bytes, self.chunk_bytes, blob)
                if name is not None:
                    check_label(name)
            except MeshError as error:
                answers[index] = error
                continue
            if isinstance(prepared, TensorBlob):
                large.append((index, prepared))
            else:
                task: dict[str, Any] = {"inputs": prepared, "submission": ids[index]}
                if name is not None:
                    task["label"] = name
                encoded.append((index, task))
        for index, tensors in large:  # each uploaded in ranges, then submitted alone
            try:
                alone = {key: value for key, value in fields.items() if key != "group"}
                alone["submission"] = ids[index]
                if labels[index] is not None:
                    alone["label"] = labels[index]
                reply = await self._submit_request(
                    blob, "submit", upload=tensors, sent_on=sent_on, **alone, direct=False
                )
                answers[index] = self._new_handle(reply, labels[index], watch, acknowledge)
            except MeshError as error:
                answers[index] = error
        pending = request_chunks(encoded, self.chunk_bytes)
        full: list[str] = []
        rerouted = 0  # at most once per other live member, whoever refused
        while pending:
            chunk = pending.pop(0)
            try:
                reply = await self._submit_request(
                    blob, "submit_batch", sent_on=sent_on, tasks=[t for _, t in chunk], **fields
                )
            except RequestFailedError as error:
                if "unknown op 'submit_batch'" not in str(error):
                    raise
                reply = {"results": await self._submit_each(blob, chunk, fields)}
            refused = [
                item
                for item, answer in zip(chunk, reply["results"], strict=True)
                if answer.get("kind") == "DiskFullError"
            ]
            live = sum(1 for member in self.members if member.get("state") == "alive")
            if refused and rerouted < live - 1 and await self._leave_full_peer(full):
                rerouted += 1
                pending.insert(0, refused)  # never accepted: send them to the next peer
                refused_ids = {index for index, _ in refused}
                chunk_answers = [
                    (item, answer)
                    for item, answer in zip(chunk, reply["results"], strict=True)
                    if item[0] not in refused_ids
                ]
            else:
                chunk_answers = list(zip(chunk, reply["results"], strict=True))
            for (index, _), answer in chunk_answers:
                if answer.get("error") is not None:
                    kind = str(answer.get("kind", "MeshError"))
                    answers[index] = RequestFailedError(f"task refused: {answer['error']}", kind)
                else:
                    if watch and answer.get("group") is not None:
                        self._group_left[str(answer["group"])] = int(answer["members"])
                    answers[index] = self._new_handle(answer, labels[index], watch, acknowledge)
        return [answer for answer in answers if answer is not None]

    def _new_handle(
        self, answer: dict[str, Any], label: str | None, watch: bool, acknowledge: bool
    ) -> AsyncTaskHandle:
        """The handle for one accepted task of ``submit_many`` (see its arguments)."""
        if watch:
            handle = self._handle_of(answer, deferred=not acknowledge)
        else:
            handle = AsyncTaskHandle(
                answer["task_id"], answer.get("copies", 0), answer.get("replicas", 0)
            )
        handle.label = label
        return handle

    def _collectable(self, task_id: str, first: bool) -> str | None:
        """What to name in ``collected`` now that ``task_id``'s outcome arrived (``first``:
        not a repeat): a plain task itself; a member of a group of ours nothing until
        its group's last member arrives, then the group's id (one per group); a member
        of a group this client did not submit (``attach``) itself, which the daemon
        counts towards its group."""
        group = group_of(task_id)
        if group is None or group not in self._group_left:
            return task_id
        if first:
            self._group_left[group] -= 1
            self._group_taken.setdefault(group, []).append(task_id)
        if self._group_left[group] > 0:
            return None
        del self._group_left[group]
        self._group_taken.pop(group, None)
        return group

    def _forget_groups(self, task_ids: Iterable[str]) -> list[str]:
        """Stop counting the groups of ``task_ids`` (members nobody will take: a stopped
        ``map``); returns the ids to acknowledge now instead, the members of those groups
        already taken, which the daemon counts towards their group one by one, so that
        the group is collected once ``meshgpu collect`` has fetched the rest."""
        taken: list[str] = []
        for group in {group_of(task_id) for task_id in task_ids}:
            if group is not None and group in self._group_left:
                del self._group_left[group]
                taken.extend(self._group_taken.pop(group, []))
        return taken

    async def _submit_each(
        self, blob: ModelBlob, chunk: list[tuple[int, dict[str, Any]]], fields: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """A batch as single ``submit`` requests, for a daemon from before
        ``submit_batch`` (a lab upgrading its machines one at a time)."""
        answers: list[dict[str, Any]] = [{} for _ in chunk]
        failed: list[MeshError] = []

        async def one(position: int, task: dict[str, Any]) -> None:
            try:
                answers[position] = await self._submit_request(blob, "submit", **task, **fields)
            except RequestFailedError as error:
                answers[position] = {"error": str(error), "kind": error.kind}
            except MeshError as error:  # the client closed, no daemon: the batch's error
                failed.append(error)
                nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            for position, (_, task) in enumerate(chunk):
                nursery.start_soon(one, position, task)
        if failed:  # raised as the one request of submit_batch raises it, not in a group
            raise failed[0]
        return answers


def request_chunks(
    encoded: list[tuple[int, dict[str, Any]]], budget: int
) -> list[list[tuple[int, dict[str, Any]]]]:
    """Consecutive runs of ``encoded`` tasks, one ``submit_batch`` request each: at most
    ``BATCH_MAX`` tasks and at most ``budget`` bytes of tensor data (one range of an
    upload, ``chunk_bytes``), or one task alone (a task's inline inputs never exceed the
    budget: larger ones are uploaded in ranges). Bounded by count alone, 30 tasks of 2.4
    MB made one 71 MB request, refused whole by the 64 MiB frame limit before sending."""
    chunks: list[list[tuple[int, dict[str, Any]]]] = []
    size = 0
    for item in encoded:
        task_bytes = sum(len(tensor["data"]) for tensor in item[1]["inputs"].values())
        if not chunks or len(chunks[-1]) >= BATCH_MAX or size + task_bytes > budget:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += task_bytes
    return chunks


def new_submission_id() -> str:
    """A task's submission id, chosen here and sent again with every resend of the task
    (daemon/submissions.py): random, so that no two clients' ids meet."""
    return uuid.uuid4().hex


def choose_group(members: list[dict[str, Any]], model_digest: str, window: int) -> int:
    """The group size ``map`` uses: bounded by time (the slowest published per-member
    latency of the model times K stays under ``GROUP_TARGET_S``, or under ``capacity /
    ENTRY_RATE`` in a mesh large enough for that to be longer; ``GROUP_UNKNOWN`` while
    no node has published one), by spread (the window still makes about two groups per
    live worker slot, i.e. one per unit of the capacity a node offers, which counts one
    prefetch per slot), and by ``GROUP_MAX``; at least 1."""
    capacity = live_capacity(members)
    latency = model_latency(members, model_digest)
    target_s = max(GROUP_TARGET_S, capacity / ENTRY_RATE)
    by_time = GROUP_UNKNOWN if latency is None else int(target_s / max(latency, 1e-6))
    return max(1, min(GROUP_MAX, by_time, window // capacity))


def _live_loads(members: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m.get("load") or {} for m in members if m.get("state") in ("alive", "suspect")]


def live_capacity(members: list[dict[str, Any]]) -> int:
    """Tasks the live members run or prefetch at once, by their loads (at least two a
    member: a load not yet heard of counts as one slot and its prefetch)."""
    loads = _live_loads(members)
    capacity = sum(
        int(load.get("free_slots", 0)) + int(load.get("active_tasks", 0)) for load in loads
    )
    return max(capacity, 2 * max(1, len(loads)))


def model_latency(members: list[dict[str, Any]], model_digest: str) -> float | None:
    """The slowest per-member latency of the model a live member published; None while
    none has (no member ran it yet, or its first estimate has not reached this client)."""
    latencies = [
        float(seconds)
        for load in _live_loads(members)
        for digest, seconds in dict(load.get("latency") or {}).items()
        if digest == model_digest
    ]
    return max(latencies) if latencies else None


def member_count(group: Any) -> int:
    """A ``group=`` option: an integer from 1 to ``BATCH_MAX`` (2.5 was cut to 2)."""
    return whole_number(group, "group is a member count", 1, BATCH_MAX)


def whole_number(value: Any, what: str, low: int, high: int | None = None) -> int:
    """An integer option from ``low`` (to ``high``), a ConfigError naming ``what``
    otherwise: ``int()`` cut 2.5 to 2 and took ``True`` as 1 on the quiet. A float
    with a whole value (``min_memory=4e9``) is the integer it names."""
    number: int | None
    if isinstance(value, float) and value.is_integer():
        number = int(value)
    else:
        try:
            number = None if isinstance(value, bool) else operator.index(value)
        except TypeError:
            number = None
    if number is None or number < low or (high is not None and number > high):
        span = f"from {low} to {high}" if high is not None else f">= {low}"
        raise ConfigError(f"{what}, an integer {span}, got {value!r}")
    return number


def deadline_seconds(value: Any) -> float:
    """A ``deadline_s=`` option: seconds after submission, a positive finite number,
    refused here with a ConfigError (as ``--deadline`` is by click) rather than sent:
    the entry node answered a negative one or NaN with a RequestFailedError prefixed by
    its address, and took infinity, ``True`` (1 s) and ``"5"`` as given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"deadline_s is a number of seconds, not {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(
            f"deadline_s is the seconds a task may take from its submission, a positive "
            f"finite number, got {value!r}"
        )
    return seconds


def submit_fields(
    blob: ModelBlob,
    priority: str,
    replicas: int,
    deadline_s: float | None,
    device_type: str | None,
    min_memory: int,
    fp16: bool,
    require: Any = None,
    prefer: Any = None,
) -> dict[str, Any]:
    """The request fields a submission's options become (all but the inputs).
    ``require`` / ``prefer``: worker labels as ``{"gpu": "a100"}`` or ``["gpu=a100"]``,
    hard and soft (docs/task-queue.md, "Labels and placement")."""
    fields: dict[str, Any] = {
        "model_digest": blob.digest,
        "priority": priority,
        "replicas": whole_number(replicas, "replicas is the nodes that journal a task", 1),
        "min_memory": whole_number(min_memory, "min_memory is a device's bytes", 0),
        "fp16": bool(fp16),
    }
    if deadline_s is not None:
        fields["deadline_s"] = deadline_seconds(deadline_s)
    if device_type is not None:
        fields["device_type"] = device_type
    for name, labels in (("require", require), ("prefer", prefer)):
        if labels:
            fields[name] = [f"{k}={v}" for k, v in parse_labels(labels, f"{name}d label")]
    return fields


def check_label(label: Any) -> str:
    """A task label as the mesh takes it (a string of at most ``LABEL_MAX`` characters),
    refused here rather than by the entry node."""
    if not isinstance(label, str):
        raise ConfigError(f"a task label is a string, not {label!r}")
    if len(label) > LABEL_MAX:
        raise ConfigError(f"a task label has at most {LABEL_MAX} characters, got {len(label)}")
    return label


def encode_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    return encode_tensors(checked_arrays(inputs))


def checked_arrays(
    inputs: Mapping[str, Any], model: ModelBlob | None = None
) -> dict[str, np.ndarray]:
    """A task's inputs as named arrays the mesh carries: numeric ones, bfloat16
    (``ml_dtypes``), and string tensors (numpy ``str``/``bytes`` arrays and object arrays
    of them become object arrays of ``str``, as onnxruntime takes them); a ConfigError
    for anything else, and for a Python list or number whose numpy dtype is not the one
    ``model`` declares for that input (:func:`untyped_value_message`)."""
    if not isinstance(inputs, Mapping) or not inputs:
        raise ConfigError("inputs must be a non-empty mapping of input name to array")
    arrays = {}
    for name, value in inputs.items():
        if not isinstance(name, str):
            raise ConfigError(f"input names are strings, not {name!r}")
        array = np.asarray(value)
        if array.dtype.kind in "USO":
            try:
                array = string_array(array)
            except DecodeError as error:
                raise ConfigError(f"input {name!r} is not a string tensor: {error}") from None
        elif array.dtype.kind not in "biufc" and not is_bfloat16(array.dtype):
            raise ConfigError(
                f"input {name!r} has dtype {array.dtype}; use a numeric, bfloat16 or string array"
            )
        elif model is not None and not isinstance(value, np.ndarray | np.generic):
            # numpy chose the dtype (float64 for a list of floats), not the caller
            declared = model.input_dtypes().get(name)
            if declared is not None and declared != array.dtype:
                raise ConfigError(untyped_value_message(name, value, array.dtype, declared))
        arrays[name] = array
    return arrays


def untyped_value_message(
    name: str, value: Any, got: np.dtype[Any], declared: np.dtype[Any]
) -> str:
    """Why a Python list or number fed as an input is refused before it is sent: numpy
    made it ``got`` and the model declares ``declared``; the worker would refuse it after
    the upload and a wait in the queue, and the client does not cast silently (a float64
    array fed to a float32 model is refused the same way, meshgpu.inference.model)."""
    return (
        f"input {name!r} is a Python {type(value).__name__}, which numpy makes {got}, and "
        f"the model declares {declared}: pass numpy.asarray(value, dtype='{declared}')"
    )


def prepare_inputs(
    inputs: Mapping[str, Any], max_task_bytes: int, chunk: int, model: ModelBlob | None = None
) -> dict[str, Any] | TensorBlob:
    """A task's inputs ready to send: their encoded map when they fit one request, else a
    :class:`TensorBlob` to upload in ranges first. Refused (a ConfigError naming both
    sizes) when larger than ``max_task_bytes``, before anything is sent, and as
    :func:`checked_arrays` says against ``model``."""
    arrays = checked_arrays(inputs, model)
    size = tensor_nbytes(arrays)
    if size > max_task_bytes:
        raise ConfigError(
            f"the task's inputs are {size:,} bytes, more than max_task_bytes "
            f"({max_task_bytes:,}); raise the limit (--max-task-bytes, max_task_bytes= or "
            f"{MAX_TASK_BYTES_ENV}) or split the inputs into several tasks"
        )
    blob = TensorBlob(arrays)
    if blob.size <= chunk:
        return encode_tensors(arrays)
    return blob


def resolve_max_task_bytes(value: int | None, environ: Mapping[str, str]) -> int:
    """The per-task input limit: ``value``, else ``MESHGPU_MAX_TASK_BYTES``, else the
    default (``MAX_TASK_BYTES``); a ConfigError for a value that is not a positive count."""
    if value is None:
        text = environ.get(MAX_TASK_BYTES_ENV)
        if text is None:
            return MAX_TASK_BYTES
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(
                f"{MAX_TASK_BYTES_ENV}={text!r} is not a byte count (an integer)"
            ) from None
    if value <= 0:
        raise ConfigError(f"max_task_bytes must be a positive byte count, got {value}")
    return value
