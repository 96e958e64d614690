"""Task groups on the daemon side: member ids, and packing a batch's tasks into groups.

A task group is one entry of the task table (one id, one replication, one assignment,
one result, one retry unit) carrying K member tasks of one model and one set of options
whose inputs have the same names, shapes and dtypes (docs/task-queue.md, "Task groups").
The core sees an ordinary task whose spec says ``members=K``; everything per member lives
here and in the ops that answer clients:

* a member's id is ``"<origin>/<sequence>:<index>"``: its group's task id and its place
  in the group (0-based). Any daemon parses it back, so a client that fails over asks
  another node for the same member ids. A plain task id has no ``:`` and means itself.
* the group's inputs are one blob (:func:`~meshgpu.daemon.payloads.canonical_group_bytes`)
  and its result one blob with an outcome per member
  (:func:`~meshgpu.daemon.payloads.group_result_bytes`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from meshgpu.core.tasks import TaskId
from meshgpu.errors import DecodeError, MeshError

MAX_GROUP = 256
"""Most members in one group a daemon accepts (the client library asks for at most 64)."""

Item = TypeVar("Item")


@dataclass(frozen=True, slots=True, order=True)
class MemberId:
    """One member of a task group: the group's task id and the member's index in it."""

    group: TaskId
    index: int

    def __str__(self) -> str:
        return f"{self.group}:{self.index}"


def parse_task_ref(text: Any) -> TaskId | MemberId:
    """``"n-1/42"`` -> ``TaskId``; ``"n-1/42:3"`` -> ``MemberId``; DecodeError otherwise."""
    if not isinstance(text, str):
        raise DecodeError("task ids are strings like 'n-1a2b3c4d/42' or 'n-1a2b3c4d/42:3'")
    head, colon, index = text.rpartition(":")
    try:
        if colon and "/" in head and _is_index(index):
            return MemberId(TaskId.parse(head), int(index))
        return TaskId.parse(text)
    except MeshError as error:
        raise DecodeError(str(error)) from None


def group_of(text: str) -> str | None:
    """The group id of a member id (``"n-1/42:3"`` -> ``"n-1/42"``), None for a plain id."""
    head, colon, index = text.rpartition(":")
    return head if colon and "/" in head and _is_index(index) else None


def _is_index(text: str) -> bool:
    """Whether a member id's ``:`` part is an index: ASCII digits (``str.isdigit`` takes
    ``"²"`` too, which ``int`` refuses: a ValueError answered as an internal error)."""
    return text.isascii() and text.isdigit()


def signature(tensors: Mapping[str, np.ndarray]) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    """What members of one group must share: input names, shapes and dtypes."""
    return tuple(
        (name, tuple(tensors[name].shape), tensors[name].dtype.str) for name in sorted(tensors)
    )


def pack(
    tasks: Sequence[tuple[Item, Mapping[str, np.ndarray]]], size: int
) -> list[list[tuple[Item, Mapping[str, np.ndarray]]]]:
    """Pack tasks (in order) into groups of at most ``size`` members of equal
    :func:`signature`: a task whose signature differs from the open group's joins (or
    opens) the group of its own signature, so interleaved shapes still group. Groups come
    out in the order their first member came in; a lone task is a group of one."""
    open_groups: dict[Any, list[tuple[Item, Mapping[str, np.ndarray]]]] = {}
    packed: list[list[tuple[Item, Mapping[str, np.ndarray]]]] = []
    for task in tasks:
        key = signature(task[1])
        group = open_groups.get(key)
        if group is None:
            group = open_groups[key] = []
            packed.append(group)
        group.append(task)
        if len(group) >= size:
            del open_groups[key]
    return packed


MEMBER_RESULT = "member-result"
"""The payload kind of one member's outputs spilled by the entry node: a member whose
outputs are larger than a range is answered as a large result is (``result_bytes``), and
fetched with ``get_result`` on its member id in ranges of this file."""


def member_result_key(member: MemberId, attempt: int | None) -> tuple[str, int, int, int]:
    """The payload key of a member's spilled outputs, of the group's attempt ``attempt``
    (-1: none named): a newer attempt's outputs never answer a range of an older one's."""
    return (
        member.group.origin,
        member.group.sequence,
        member.index,
        -1 if attempt is None else attempt,
    )


def member_answers(
    group: dict[str, Any],
    results: list[dict[str, Any]] | None,
    members: Sequence[MemberId],
    include: bool,
) -> list[dict[str, Any]]:
    """The ``results`` answers for ``members`` of one resolved group: ``group`` is the
    group's own answer (state, reason, worker; no outputs), ``results`` its decoded result
    (:func:`~meshgpu.daemon.payloads.group_result_from_bytes`; None unless it is done and
    fetched). A member that failed alone is ``failed`` with its own reason; an index the
    group does not have is ``failed`` too; the others carry their outputs if ``include``."""
    answers = []
    for member in members:
        message = {**group, "task_id": str(member)}
        if results is not None and member.index >= len(results):
            message["state"] = "failed"
            message["reason"] = f"{member.group} has no member {member.index}"
        elif results is not None and "error" in results[member.index]:
            message["state"] = "failed"
            message["reason"] = results[member.index]["error"]
        elif results is not None and include:
            message["outputs"] = results[member.index]["outputs"]
        answers.append(message)
    return answers
