"""The task queue: a replicated task table (CRDT), a priority queue owned by the rotating
leader, balancing strategies and fault-tolerance policies. Sans-IO like the rest of
``meshgpu.core``; see docs/task-queue.md for the protocol and its guarantees."""

from meshgpu.core.tasks.collected import CollectedSet
from meshgpu.core.tasks.records import TaskRecord, record_from_bytes, record_to_bytes
from meshgpu.core.tasks.retry import BackoffKind, RetryPolicy
from meshgpu.core.tasks.spec import (
    DeviceRequirements,
    Priority,
    TaskId,
    TaskSpec,
    is_unsatisfiable,
)
from meshgpu.core.tasks.state import (
    TRANSITIONS,
    Cause,
    Phase,
    Resolution,
    TaskState,
    join,
)
from meshgpu.core.tasks.table import TaskEntry, TaskTable, merge_entries

__all__ = [
    "TRANSITIONS",
    "BackoffKind",
    "Cause",
    "CollectedSet",
    "DeviceRequirements",
    "Phase",
    "Priority",
    "Resolution",
    "RetryPolicy",
    "TaskEntry",
    "TaskId",
    "TaskRecord",
    "TaskSpec",
    "TaskState",
    "TaskTable",
    "is_unsatisfiable",
    "join",
    "merge_entries",
    "record_from_bytes",
    "record_to_bytes",
]
