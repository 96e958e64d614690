"""Coalescing at the entry node: concurrent single submissions of one model become one
table entry (a task group), each keeping its own member id, outcome and exactly-once
delivery (docs/task-queue.md, "Coalescing at the entry node").

Every table entry costs about 23 ms of CPU across a loopback mesh (replication, journal
appends, assignment, result push), whatever it carries. ``Client.map`` packs its tasks
into task groups; callers that send one task at a time from many threads, processes or
HTTP clients paid one entry each. Here the entry node does for them what ``map`` does.

The rule is the group commit's (durability.py), not a timer: a submission whose *lane*
(same model, same options, same input names, shapes and dtypes) has nothing in flight
goes to the table at once, as an ordinary task; while an entry of its lane is being
acknowledged, later submissions of the lane wait, and when that entry is acknowledged
they go as ONE task group (or once ``MAX_COALESCED`` are waiting, at once). So a lone
caller never waits for anyone (and an idle node's tiny task still takes the direct run,
decided before this), while under concurrency the group grows with the arrival rate
times the acknowledgement time: the busier the node, the fewer entries per task.

Rejected: a fixed gathering window (every sequential caller would pay it; the reason
docs/task-queue.md gave for leaving grouping to the client), and coalescing in the client
library (it does not see other processes' or HTTP clients' submissions).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio

from meshgpu.daemon.groups import MemberId
from meshgpu.errors import DecodeError, MeshError, TaskError

MAX_COALESCED = 64
"""Most submissions in one coalesced group (as ``map``'s largest groups): a lane that
has this many waiting sends them at once, even while another entry is in flight."""

COALESCE_TIMEOUT = 120.0
"""Longest a waiting submission waits for its group's acknowledgement."""

_OPTION_FIELDS = (
    "model_digest",
    "priority",
    "replicas",
    "deadline_s",
    "device_type",
    "min_memory",
    "fp16",
    "require",
    "prefer",
)
"""Request fields every member of one group must share (the group has one spec)."""


@dataclass(eq=False)
class _Member:
    """One waiting submission."""

    request: Any
    tensors: Mapping[str, np.ndarray]
    label: str | None
    submission: str | None
    input_digest: str
    answered: trio.Event = field(default_factory=trio.Event)
    answer: dict[str, Any] | None = None
    error: MeshError | None = None
    taken: bool = False


@dataclass(eq=False)
class _Lane:
    in_flight: int = 0
    waiting: list[_Member] = field(default_factory=list)


FeedOne = Callable[[Any, Mapping[str, Any], "str | None", "str | None"], Awaitable[Any]]
"""Feed one ordinary task (request, inputs, label, submission id) and wait for its answer
(the ``submit`` answer)."""
FeedGroup = Callable[[Any, Sequence[Mapping[str, Any]], "str | None"], Awaitable[Any]]
"""Feed one task group (request with the options, the members' inputs, label) and wait
for its answer."""

REMEMBERED = 65536
"""Submission ids of coalesced members remembered for resends (as submissions.py)."""


def lane_of(request: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> str:
    """The lane of a submission: its options and its inputs' names, shapes and dtypes."""
    options = {name: request.get(name) for name in _OPTION_FIELDS}
    inputs = sorted((name, list(a.shape), a.dtype.str) for name, a in tensors.items())
    return json.dumps([options, inputs], sort_keys=True, default=str)


class Coalescer:
    """The lanes of one entry node. ``feed_one`` and ``feed_group`` hand an ordinary task
    or a group to the table and wait for the acknowledgement (submissions.py)."""

    def __init__(self, feed_one: FeedOne, feed_group: FeedGroup) -> None:
        self._feed_one = feed_one
        self._feed_group = feed_group
        self._lanes: dict[str, _Lane] = {}
        self._nursery: trio.Nursery | None = None
        self._remembered: OrderedDict[str, _Member] = OrderedDict()
        """Submission id -> the coalesced member that answers it (a resend gets the same
        member id, or waits for it while its group is in flight); bounded, oldest out."""
        self.coalesced = 0
        """Submissions that went to the table as members of a coalesced group."""
        self.groups = 0
        """Coalesced groups fed."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery where coalesced groups are fed and acknowledged (they belong to
        no single caller: a caller that goes away must not cancel its group-mates')."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    @property
    def running(self) -> bool:
        return self._nursery is not None

    async def submit(
        self,
        request: Mapping[str, Any],
        tensors: Mapping[str, np.ndarray],
        label: str | None,
        submission: str | None,
        input_digest: Callable[[], str],
    ) -> dict[str, Any]:
        """Submit one task through its lane; the ``submit`` answer (a plain task id when
        it went alone, a member id with ``group`` and ``members`` when coalesced).
        ``input_digest`` gives the inputs' digest, asked only when the submission waits
        or is a resend of one that did (a lone one never pays for it)."""
        if submission is not None and submission in self._remembered:
            first = self._remembered[submission]
            if first.input_digest != input_digest():
                raise DecodeError(
                    f"submission id {submission!r} was sent before with other inputs; "
                    "choose a new id for each task"
                )
            return await self._wait(first)
        key = lane_of(request, tensors)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        if self._nursery is None or (lane.in_flight == 0 and not lane.waiting):
            lane.in_flight += 1
            try:
                answer: dict[str, Any] = await self._feed_one(request, tensors, label, submission)
                return answer
            finally:
                lane.in_flight -= 1
                self._release(key, lane)
        member = _Member(request, tensors, label, submission, input_digest())
        lane.waiting.append(member)
        if submission is not None:
            self._remembered[submission] = member
            while len(self._remembered) > REMEMBERED:
                self._remembered.popitem(last=False)
        if len(lane.waiting) >= MAX_COALESCED:
            self._send(key, lane)
        try:
            return await self._wait(member)
        finally:
            if not member.taken and member in lane.waiting:
                lane.waiting.remove(member)  # the caller went away before its group left
                if submission is not None:
                    self._remembered.pop(submission, None)
                self._release(key, lane)

    async def _wait(self, member: _Member) -> dict[str, Any]:
        try:
            with trio.fail_after(COALESCE_TIMEOUT):
                await member.answered.wait()
        except trio.TooSlowError:
            raise TaskError("the mesh did not acknowledge the task in time; retry") from None
        if member.error is not None:
            raise member.error
        assert member.answer is not None
        return member.answer

    def _release(self, key: str, lane: _Lane) -> None:
        """An entry of the lane was answered (or a waiter left): send what waits if
        nothing is in flight any more; forget an empty lane."""
        if lane.in_flight == 0 and lane.waiting:
            self._send(key, lane)
        elif lane.in_flight == 0 and not lane.waiting:
            self._lanes.pop(key, None)

    def _send(self, key: str, lane: _Lane) -> None:
        """Send up to ``MAX_COALESCED`` waiting members as one entry (in the nursery)."""
        members, lane.waiting = lane.waiting[:MAX_COALESCED], lane.waiting[MAX_COALESCED:]
        for member in members:
            member.taken = True
        lane.in_flight += 1
        assert self._nursery is not None
        self._nursery.start_soon(self._feed, key, lane, members)

    async def _feed(self, key: str, lane: _Lane, members: list[_Member]) -> None:
        try:
            if len(members) == 1:
                only = members[0]
                only.answer = await self._feed_one(
                    only.request, only.tensors, only.label, only.submission
                )
            else:
                labels = [m.label for m in members]
                answer = await self._feed_group(
                    members[0].request, [m.tensors for m in members], _joined_label(labels)
                )
                self.groups += 1
                self.coalesced += len(members)
                for index, member in enumerate(members):
                    member.answer = {
                        **answer,
                        "task_id": str(MemberId(_task_id(answer["task_id"]), index)),
                        "group": answer["task_id"],
                        "members": len(members),
                    }
        except MeshError as error:
            for member in members:
                member.error = error
                if member.submission is not None:  # refused: a resend tries again
                    self._remembered.pop(member.submission, None)
        finally:
            for member in members:
                member.answered.set()
            lane.in_flight -= 1
            self._release(key, lane)


def _task_id(text: str) -> Any:
    from meshgpu.core.tasks import TaskId

    return TaskId.parse(text)


def _joined_label(labels: Sequence[str | None]) -> str | None:
    from meshgpu.daemon.submissions import group_label

    return group_label(labels)
