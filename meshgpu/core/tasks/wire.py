"""Plain-data forms of task ids, specs and entries, for messages and the journal.

Everything becomes lists of msgpack-native values (str, int, float, bool, None, lists) in
a fixed field order; decoding validates every field and raises only
:class:`~meshgpu.errors.DecodeError`, so a malformed datagram from a peer is rejected and
counted, never crashes a node.
"""

from __future__ import annotations

import functools
from typing import Any

from meshgpu.core.tasks.retry import BackoffKind, RetryPolicy
from meshgpu.core.tasks.spec import DeviceRequirements, Priority, TaskId, TaskSpec
from meshgpu.core.tasks.state import Phase, TaskState
from meshgpu.core.tasks.table import TaskEntry
from meshgpu.errors import DecodeError, MeshError

Wire = list[Any]


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise DecodeError(f"malformed task data: {what}")


def _number(value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise DecodeError("malformed task data: not a number")
    return float(value)


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise DecodeError("malformed task data: not an integer")
    return value


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise DecodeError("malformed task data: not a string")
    return value


def _list(value: object, length: int | None = None) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise DecodeError("malformed task data: not a list")
    items: list[Any] = list(value)
    _expect(length is None or len(items) == length, f"expected {length} fields")
    return items


def task_id_to_wire(task_id: TaskId) -> Wire:
    return [task_id.origin, task_id.sequence]


def task_id_from_wire(origin: object, sequence: object) -> TaskId:
    return TaskId(_str(origin), _int(sequence))


def spec_to_wire(spec: TaskSpec) -> Wire:
    """The spec's fields in order; ``members`` is appended only when it is not 1 or a
    label follows, and ``label`` only when set, so an ordinary task encodes byte for byte
    as before groups and labels existed (journals, traces and their hashes stay the
    same): 9 fields, a group 10, a labelled task 11."""
    req = spec.requirements
    retry = spec.retry
    wire = [
        spec.model_digest,
        spec.input_digest,
        [[name, list(shape)] for name, shape in spec.input_shapes],
        int(spec.priority),
        _requirements_to_wire(req),
        spec.deadline_s,
        [retry.kind.value, retry.base_s, retry.max_s, retry.max_attempts, retry.jitter],
        spec.replicas,
        spec.strategy,
    ]
    if spec.members != 1 or spec.label is not None:
        wire.append(spec.members)
    if spec.label is not None:
        wire.append(spec.label)
    return wire


def _requirements_to_wire(req: DeviceRequirements) -> Wire:
    """Label requirements are appended only when set, so a spec without them encodes as
    before (journals, traces and their hashes stay the same)."""
    wire: list[Any] = [req.device_type, req.min_memory, req.fp16]
    if req.require or req.prefer:
        wire += [[list(p) for p in req.require], [list(p) for p in req.prefer]]
    return wire


def _labels_from_wire(value: object) -> tuple[tuple[str, str], ...]:
    return tuple((_str(p[0]), _str(p[1])) for p in (_list(q, 2) for q in _list(value)))


SPEC_CACHE_LIMIT = 8192
"""How many recently decoded specs :func:`spec_from_wire` keeps."""


class _WireForm:
    """A spec's wire value (lists: not hashable) keyed by its exact text, for the cache."""

    __slots__ = ("key", "value")

    def __init__(self, value: object) -> None:
        self.value = value
        self.key = repr(value)

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _WireForm) and self.key == other.key


def spec_from_wire(value: object) -> TaskSpec:
    """Decode a spec. Specs are immutable and arrive many times (every update of a task
    carries it), so decoded specs are memoised by their exact wire form (a malformed one
    raises every time: errors are not cached)."""
    return _cached_spec(_WireForm(value))


@functools.lru_cache(maxsize=SPEC_CACHE_LIMIT)
def _cached_spec(wire: _WireForm) -> TaskSpec:
    return _decode_spec(wire.value)


def _decode_spec(value: object) -> TaskSpec:
    fields = _list(value)
    _expect(len(fields) in (9, 10, 11), "expected 9 to 11 spec fields")
    shapes = tuple(
        (_str(pair[0]), tuple(_int(d) for d in _list(pair[1])))
        for pair in (_list(p, 2) for p in _list(fields[2]))
    )
    req = _list(fields[4])
    _expect(len(req) in (3, 5), "expected 3 or 5 requirement fields")
    retry = _list(fields[6], 5)
    try:
        return TaskSpec(
            model_digest=_str(fields[0]),
            input_digest=_str(fields[1]),
            input_shapes=shapes,
            priority=Priority(_int(fields[3])),
            requirements=DeviceRequirements(
                None if req[0] is None else _str(req[0]),
                _int(req[1]),
                bool(req[2]),
                _labels_from_wire(req[3]) if len(req) == 5 else (),
                _labels_from_wire(req[4]) if len(req) == 5 else (),
            ),
            deadline_s=None if fields[5] is None else _number(fields[5]),
            retry=RetryPolicy(
                BackoffKind(_str(retry[0])),
                _number(retry[1]),
                _number(retry[2]),
                _int(retry[3]),
                _number(retry[4]),
            ),
            replicas=_int(fields[7]),
            strategy=None if fields[8] is None else _str(fields[8]),
            members=_int(fields[9]) if len(fields) >= 10 else 1,
            label=_str(fields[10]) if len(fields) == 11 else None,
        )
    except (ValueError, MeshError) as error:
        if isinstance(error, DecodeError):
            raise
        raise DecodeError(f"malformed task spec: {error}") from error


def state_to_wire(state: TaskState) -> Wire:
    return [
        state.phase.value,
        state.attempt,
        state.view,
        state.worker,
        state.failures,
        state.reason,
        state.epoch,
    ]


def state_from_wire(value: object) -> TaskState:
    fields = _list(value)
    _expect(len(fields) in (6, 7), "expected 6 or 7 state fields")
    if len(fields) == 6:  # journaled before epochs existed: epoch 0
        fields.append(0)
    try:
        phase = Phase(_str(fields[0]))
    except ValueError as error:
        raise DecodeError(f"malformed task state: {error}") from error
    return TaskState(
        phase,
        _int(fields[1]),
        _int(fields[2]),
        None if fields[3] is None else _str(fields[3]),
        _int(fields[4]),
        _str(fields[5]),
        _int(fields[6]),
    )


def entry_to_wire(entry: TaskEntry) -> Wire:
    """The entry's fields in order; the work-stealing marks (``started``, then ``steal``)
    are appended only when set, so an entry of a mesh without stealing encodes byte for
    byte as before they existed (journals, checksums, traces and their hashes): 8
    fields, 9 with a started mark, 10 with a steal request."""
    wire = [
        entry.task_id.origin,
        entry.task_id.sequence,
        spec_to_wire(entry.spec),
        state_to_wire(entry.state),
        sorted(entry.holders),
        sorted(entry.result_holders),
        entry.delivered,
        entry.acknowledged,
    ]
    if entry.started or entry.steal is not None:
        wire.append(entry.started)
    if entry.steal is not None:
        wire.append([entry.steal[0], entry.steal[1]])
    return wire


def entry_from_wire(value: object) -> TaskEntry:
    fields = _list(value)
    # 7 fields: a journal record written before the acknowledged mark existed, when every
    # entry in a table was assignable: read it as acknowledged.
    _expect(len(fields) in (7, 8, 9, 10), "expected 7 to 10 fields")
    if len(fields) == 7:
        fields.append(True)
    _expect(isinstance(fields[6], bool), "delivered is not a bool")
    _expect(isinstance(fields[7], bool), "acknowledged is not a bool")
    started = _int(fields[8]) if len(fields) >= 9 else 0
    _expect(started >= 0, "started is negative")
    steal = None
    if len(fields) == 10:
        raw = _list(fields[9], 2)
        steal = (_int(raw[0]), _str(raw[1]))
    return TaskEntry(
        task_id=task_id_from_wire(fields[0], fields[1]),
        spec=spec_from_wire(fields[2]),
        state=state_from_wire(fields[3]),
        holders=frozenset(_str(n) for n in _list(fields[4])),
        result_holders=frozenset(_str(n) for n in _list(fields[5])),
        delivered=bool(fields[6]),
        acknowledged=bool(fields[7]),
        started=started,
        steal=steal,
    )
