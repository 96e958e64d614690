"""The immutable part of a task: its id and its spec.

A task id is ``(origin, sequence)``: the node that accepted the submission and a number that
node never hands out twice. A spec never changes once the task exists; everything that does
change (who runs it, whether it finished) lives in :mod:`meshgpu.core.tasks.state`.

Inputs are content-addressed: ``input_digest`` is the sha256 of the encoded input tensors,
so a holder or a worker can fetch them from any node that has them and check what it got.
The core never sees the tensors themselves (design.md, "Data plane").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from meshgpu.core.tasks.retry import RetryPolicy
from meshgpu.core.types import NodeId
from meshgpu.errors import TaskError


@dataclass(frozen=True, slots=True, order=True)
class TaskId:
    """Globally unique task id: the accepting node and its sequence number there."""

    origin: NodeId
    sequence: int

    def __str__(self) -> str:
        return f"{self.origin}/{self.sequence}"

    @classmethod
    def parse(cls, text: str) -> TaskId:
        """Inverse of ``str()``: ``"n-1/42"`` -> ``TaskId("n-1", 42)``."""
        origin, _, sequence = text.rpartition("/")
        if not origin or not sequence.isdigit():
            raise TaskError(f"bad task id {text!r}: expected '<origin node>/<sequence>'")
        return cls(origin, int(sequence))


class Priority(enum.IntEnum):
    """Queue priority: higher values are assigned first, FIFO within one priority."""

    LOW = 0
    NORMAL = 1
    HIGH = 2
    CRITICAL = 3

    @classmethod
    def parse(cls, text: str) -> Priority:
        """``"high"`` -> ``Priority.HIGH``; raises :class:`TaskError` naming the choices."""
        try:
            return cls[text.upper()]
        except KeyError:
            choices = ", ".join(p.name.lower() for p in cls)
            raise TaskError(f"unknown priority {text!r}: choose one of {choices}") from None


MAX_LABELS = 16
"""At most this many labels per node, and label pairs per requirement (they travel in every
load update and every copy of a spec)."""


@dataclass(frozen=True, slots=True)
class DeviceRequirements:
    """What a worker must offer to run the task (hard constraints for every strategy).

    ``device_type`` is ``None`` (anything), ``"gpu"`` or ``"cpu"`` (matched against the
    ``device_types`` in the worker's gossiped capabilities); ``min_memory`` is bytes of device
    memory; ``fp16`` asks for half-precision support. ``require`` is ``(key, value)`` label
    pairs every one of which the worker's gossiped labels (``meshgpu join --label``) must
    carry; ``prefer`` pairs are soft: a worker carrying all of them is chosen when one can
    take the task now, any capable worker otherwise.
    """

    device_type: str | None = None
    min_memory: int = 0
    fp16: bool = False
    require: tuple[tuple[str, str], ...] = ()
    prefer: tuple[tuple[str, str], ...] = ()

    def unmet(self, labels: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        """The required label pairs that ``labels`` lacks (empty: the labels satisfy)."""
        have = set(labels)
        return tuple(pair for pair in self.require if pair not in have)

    def unsatisfiable_reason(self) -> str:
        """The failure reason of a task whose required labels no live node carries (the
        leader's placement check, leading.py); :func:`is_unsatisfiable` recognises it."""
        wanted = ", ".join(f"{key}={value}" for key, value in self.require)
        return f"{UNSATISFIABLE} {wanted}"


UNSATISFIABLE = "no live node carries the required labels"
"""How the reason of a task failed for its unmet label requirements begins."""


def is_unsatisfiable(reason: str) -> bool:
    """True for the reason of a task that failed because no live node carried its required
    labels: not the task's fault nor its run's, but the mesh's membership now (the HTTP
    part answers 503 for it)."""
    return reason.startswith(UNSATISFIABLE)


def parse_labels(items: object, what: str = "label") -> tuple[tuple[str, str], ...]:
    """``["gpu=a100", "room=b12"]`` (or a ``{key: value}`` map) -> sorted ``(key, value)``
    pairs; raises :class:`TaskError` naming the bad item. Keys and values are non-empty,
    at most 64 characters, without ``=`` in the key."""
    if isinstance(items, dict):
        raw = [f"{k}={v}" for k, v in items.items()]
    elif isinstance(items, str):
        raw = [items]
    elif isinstance(items, list | tuple):
        raw = [i if isinstance(i, str) else "=".join(map(str, i)) for i in items]
    else:
        raise TaskError(f"{what}s must be KEY=VALUE strings or a map, got {items!r}")
    pairs: set[tuple[str, str]] = set()
    for item in raw:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value or len(key) > 64 or len(value) > 64:
            raise TaskError(f"bad {what} {item!r}: expected KEY=VALUE (each 1-64 characters)")
        pairs.add((key, value))
    if len(pairs) > MAX_LABELS:
        raise TaskError(f"at most {MAX_LABELS} {what}s, got {len(pairs)}")
    return tuple(sorted(pairs))


LABEL_MAX = 200
"""Longest task label: it travels in every update of the task's spec."""


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """Everything about a task that is fixed at submission.

    ``deadline_s`` is relative (seconds after submission), because nodes share no clock: every
    node measures it from the moment it first learned of the task, which is never earlier
    than the submission, so a deadline fires at most one gossip delay late and never early.
    ``replicas`` is how many nodes must hold the spec and the inputs before the submission
    is acknowledged. ``strategy`` overrides the mesh's balancing strategy for this task.
    ``members`` is how many member tasks this entry carries (a task group,
    docs/task-queue.md): 1 for an ordinary task; K > 1 when the inputs are K members'
    tensors of the same names, shapes and dtypes (``input_shapes`` then describes one
    member) run together and answered per member. The core treats a group like any task:
    one id, one replication, one assignment, one result, one retry unit.
    ``label`` is the submitter's name for the task (the input file's name, ``label=`` in
    the client; a group's names its members), shown by ``meshgpu tasks``; the core never
    reads it. At most ``LABEL_MAX`` characters.
    """

    model_digest: str
    input_digest: str
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    priority: Priority = Priority.NORMAL
    requirements: DeviceRequirements = field(default_factory=DeviceRequirements)
    deadline_s: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    replicas: int = 2
    strategy: str | None = None
    members: int = 1
    label: str | None = None

    def __post_init__(self) -> None:
        if not self.model_digest:
            raise TaskError("task spec has no model digest: pass the sha256 of the model")
        if not self.input_digest:
            raise TaskError("task spec has no input digest: pass the sha256 of the inputs")
        if self.replicas < 1:
            raise TaskError(f"replicas must be at least 1, got {self.replicas}")
        if self.members < 1:
            raise TaskError(f"members must be at least 1, got {self.members}")
        if self.deadline_s is not None and not self.deadline_s > 0:  # NaN too
            raise TaskError(f"deadline_s must be positive, got {self.deadline_s}")
        if self.label is not None and len(self.label) > LABEL_MAX:
            raise TaskError(
                f"a task label has at most {LABEL_MAX} characters, got {len(self.label)}"
            )
