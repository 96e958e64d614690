"""Coalescing at the entry node: concurrent single submissions of one model become one
table entry (a task group), each keeping its own member id, outcome and exactly-once
delivery (docs/task-queue.md, "Coalescing at the entry node").

The decisions (which submissions share a lane, which go at once, which wait and how many
go together) are the core's (:mod:`meshgpu.core.coalescing`), shared with the simulator;
this part keeps the waiting callers, feeds the entries the core names in its own nursery
and answers every member, and remembers submission ids for resends.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio

from meshgpu.core.coalescing import MAX_COALESCED, GoAlone, Lane, Lanes
from meshgpu.daemon.groups import MemberId
from meshgpu.errors import DecodeError, MeshError, TaskError

COALESCE_TIMEOUT = 120.0
"""Longest a waiting submission waits for its group's acknowledgement."""


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


FeedOne = Callable[[Any, Mapping[str, Any], "str | None", "str | None"], Awaitable[Any]]
"""Feed one ordinary task (request, inputs, label, submission id) and wait for its answer
(the ``submit`` answer)."""
FeedGroup = Callable[[Any, Sequence[Mapping[str, Any]], "str | None"], Awaitable[Any]]
"""Feed one task group (request with the options, the members' inputs, label) and wait
for its answer."""

REMEMBERED = 65536
"""Submission ids of coalesced members remembered for resends (as submissions.py)."""


class Coalescer:
    """The lanes of one entry node. ``feed_one`` and ``feed_group`` hand an ordinary task
    or a group to the table and wait for the acknowledgement (submissions.py)."""

    def __init__(self, feed_one: FeedOne, feed_group: FeedGroup) -> None:
        self._feed_one = feed_one
        self._feed_group = feed_group
        self._lanes: Lanes[Lane, _Member] = Lanes(MAX_COALESCED)
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

    def knows(self, submission: str) -> bool:
        """Whether ``submission`` came here (answered or still waiting in a lane)."""
        return submission in self._remembered

    async def submit(
        self,
        lane: Lane,
        request: Mapping[str, Any],
        tensors: Mapping[str, np.ndarray],
        label: str | None,
        submission: str | None,
        input_digest: Callable[[], str],
    ) -> dict[str, Any]:
        """Submit one task of ``lane`` (:func:`meshgpu.core.coalescing.lane_of` of its
        spec); the ``submit`` answer (a plain task id when it went alone, a member id with
        ``group`` and ``members`` when coalesced). ``input_digest`` gives the inputs'
        digest, asked only when the submission waits or is a resend of one that did (a
        lone one never pays for it)."""
        if submission is not None and submission in self._remembered:
            first = self._remembered[submission]
            if first.input_digest != input_digest():
                raise DecodeError(
                    f"submission id {submission!r} was sent before with other inputs; "
                    "choose a new id for each task"
                )
            return await self._wait(first)
        if self._nursery is None:
            answer: dict[str, Any] = await self._feed_one(request, tensors, label, submission)
            return answer
        member = _Member(request, tensors, label, submission, "")
        arrival = self._lanes.arrive(lane, member)
        if isinstance(arrival, GoAlone):
            try:
                answer = await self._feed_one(request, tensors, label, submission)
                return answer
            finally:
                self._send(lane, self._lanes.answered(lane))
        self._send(lane, arrival.send)
        try:
            member.input_digest = input_digest()
            if submission is not None:
                self._remembered[submission] = member
                while len(self._remembered) > REMEMBERED:
                    self._remembered.popitem(last=False)
            return await self._wait(member)
        finally:
            if not member.taken:
                # The caller went away before its group left.
                if submission is not None:
                    self._remembered.pop(submission, None)
                self._send(lane, self._lanes.leave(lane, member))

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

    def _send(self, lane: Lane, members: Sequence[_Member]) -> None:
        """Feed ``members`` (what the core's lanes named, maybe none) as one entry, in
        the nursery."""
        if not members:
            return
        for member in members:
            member.taken = True
        assert self._nursery is not None
        self._nursery.start_soon(self._feed, lane, list(members))

    async def _feed(self, lane: Lane, members: list[_Member]) -> None:
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
            self._send(lane, self._lanes.answered(lane))


def _task_id(text: str) -> Any:
    from meshgpu.core.tasks import TaskId

    return TaskId.parse(text)


def _joined_label(labels: Sequence[str | None]) -> str | None:
    from meshgpu.daemon.submissions import group_label

    return group_label(labels)
