"""Journal records: what a node writes to disk (``Persist``) and reads back on restart.

A record is a snapshot of one entry of the task table, or a tombstone (``entry=None``)
once the entry was garbage-collected. Because entries only grow, replaying records in any
order and merging them gives the same table; a driver may compact its journal by keeping
only the last record per task id. :func:`record_to_bytes` / :func:`record_from_bytes` are
the on-disk form (msgpack, versioned), so every driver writes the same journal.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from meshgpu.core.tasks.spec import TaskId
from meshgpu.core.tasks.table import TaskEntry
from meshgpu.core.tasks.wire import entry_from_wire, entry_to_wire, task_id_from_wire
from meshgpu.errors import DecodeError

RECORD_VERSION = 1


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """One journal record: the entry of ``task_id`` as it stood, or None once collected."""

    task_id: TaskId
    entry: TaskEntry | None


def record_to_bytes(record: TaskRecord) -> bytes:
    """The record's journal form."""
    entry = None if record.entry is None else entry_to_wire(record.entry)
    body = [RECORD_VERSION, record.task_id.origin, record.task_id.sequence, entry]
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def record_from_bytes(data: bytes) -> TaskRecord:
    """Inverse of :func:`record_to_bytes`; raises only :class:`DecodeError`."""
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as error:  # msgpack raises several unrelated types on bad input
        raise DecodeError(f"journal record is not valid msgpack: {error}") from error
    if not isinstance(body, list) or len(body) != 4 or body[0] != RECORD_VERSION:
        raise DecodeError(
            f"journal record has an unknown layout or version (expected version "
            f"{RECORD_VERSION}); was the journal written by another meshgpu release?"
        )
    task_id = task_id_from_wire(body[1], body[2])
    entry = None if body[3] is None else entry_from_wire(body[3])
    if entry is not None and entry.task_id != task_id:
        raise DecodeError(f"journal record for {task_id} holds an entry for {entry.task_id}")
    return TaskRecord(task_id, entry)
