"""``map`` and ``map_chunks`` of :class:`~meshgpu.client.AsyncClient`, and how a map stops.

A map submits through ``submit_many`` (batches.py: window, batches, group sizes) and
hands each outcome to its consumer in completion order. What this module adds is the
contract of a map that ends early, by a ``break``, an error, a cancellation or Ctrl-C:

* **Acknowledged when taken.** A map's task is marked collected in the mesh only once
  its consumer has taken the item (asked for the next one), not when the client
  received it. An outcome that arrived but was never taken stays in the mesh.
* **Nothing accepted goes unnamed.** When the map stops, the submissions already on
  the wire get ``STOP_GRACE_S`` to be answered (so the ids the mesh accepted are
  known), then the map ends. Every task accepted and not taken is *abandoned*: the
  client stops counting on it, never acknowledges it, and lists it in
  :meth:`MapSubmission.uncollected` (id and label) so that ``meshgpu collect`` or
  ``attach`` fetches it later. A request still unanswered after the grace is *settled*:
  the map chose its tasks' submission ids, so it asks the peer it went to
  (``settle_submissions``, at most ``SETTLE_S``) which of them it accepted (abandoned
  as above, with their ids) and which it never saw (withdrawn: the peer refuses them
  should the request still arrive, so they were not submitted). Only what that cannot
  settle (still replicating, the link gone, a daemon without the op) is counted in
  ``unanswered`` (the mesh may have accepted it; ``meshgpu tasks`` shows its label).
  Rejected: a longer grace. A 16 MiB batch on a loaded machine was answered after
  the half second, and 21 accepted tasks of 30 were reported as not submitted.
* **The consumer says when it stopped.** What is left untaken is abandoned once the
  consumer stopped reading (``_consumer_stopped``), not when the map's own generator
  ends: the blocking client's background map runs ahead of its consumer thread and
  ends while the consumer still reads the last bursts, which must still be taken and
  acknowledged, not abandoned.

Rejected: acknowledging on receipt (the old behaviour), which lost every result that
arrived after the consumer stopped: the mesh was told it was collected, the caller
never saw it. Waiting for every submission in flight however long it takes: Ctrl-C
must stop within a second. For the blocking client, a background map that hands over
the next burst only once the last was taken (so that its end is the consumer's): it
would cost a wake-up of the trio thread per burst while the consumer waits.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
)
from dataclasses import dataclass, field
from typing import Any

import trio

from meshgpu.client.batches import (
    BATCH_MAX,
    GATHER_S,
    PROBE_MAX_S,
    BatchedSubmission,
    _Window,
    check_label,
    choose_group,
    member_count,
    new_submission_id,
    submit_fields,
    whole_number,
)
from meshgpu.client.handles import AsyncTaskHandle, Completed, Outcome, client_not_open
from meshgpu.client.models import ModelBlob
from meshgpu.errors import MeshError

STOP_GRACE_S = 0.5
"""How long a stopping map waits for the answers of submissions already sent: the ids
of tasks the mesh accepted are known only from those answers (an acknowledgement takes
milliseconds on a LAN, a few hundred on a loaded one)."""

SETTLE_S = 0.4
"""Longest a stopping map spends asking the peers which of its cut-off submissions they
accepted (``settle_submissions``), of which up to ``SETTLE_WAIT_S`` waiting there for
tasks still being replicated. With ``STOP_GRACE_S`` it keeps a Ctrl-C's stop under a
second (the promise of ``meshgpu submit``): a settle answers in milliseconds when the
peer has the request; what is still replicating then is counted ``unanswered``."""
SETTLE_WAIT_S = 0.25

SUBMIT_OPTIONS: dict[str, Any] = {
    name: parameter.default
    for name, parameter in inspect.signature(BatchedSubmission.submit_many).parameters.items()
    if name in inspect.signature(submit_fields).parameters
}
"""The submission options a map passes on to ``submit_many`` for every task (those that
become request fields, ``submit_fields``'s), with their defaults read from
``submit_many``'s signature, their one source (``submit_fields`` checks them when the
map starts)."""

Label = str | Callable[[int], str | None] | None
"""A map's ``label``: one for every task, or a function of the input's index."""


def stopped_map_message(uncollected: list[tuple[str, str | None]], unanswered: int) -> str:
    """What a stopped map says: how many accepted tasks it left, and how to fetch them."""
    ids = " ".join(task_id for task_id, _ in uncollected[:10])
    more = (
        f" ... ({len(uncollected) - 10} more: client.uncollected())"
        if len(uncollected) > 10
        else ""
    )
    text = (
        f"map stopped: {len(uncollected)} accepted task(s) not collected; their results wait "
        f"in the mesh: meshgpu collect {ids}{more} (or client.attach(task_id))"
    )
    if unanswered:
        text += (
            f"; {unanswered} submission(s) were cut off unanswered and may have been "
            "accepted (meshgpu tasks shows them by label)"
        )
    return text


class MapInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a blocking ``map``: ``uncollected`` lists (task id, label) of the
    accepted tasks whose results wait in the mesh; ``unanswered`` counts submissions cut
    off before their answer."""

    def __init__(self, uncollected: list[tuple[str, str | None]], unanswered: int) -> None:
        super().__init__(stopped_map_message(uncollected, unanswered))
        self.uncollected = uncollected
        self.unanswered = unanswered


@dataclass
class _CutOff:
    """One request a stop cut off: its tasks' submission ids and labels, and the links it
    went out on (none: it was never sent)."""

    submissions: list[str]
    labels: list[str | None]
    sent_on: list[Any]


@dataclass
class MapRun:
    """One map's bookkeeping: tasks accepted and not taken by the consumer yet."""

    outstanding: dict[str, AsyncTaskHandle] = field(default_factory=dict)
    unanswered: int = 0
    """Tasks whose submission was cut off by the stop and could not be settled: maybe
    accepted, id unknown."""
    unanswered_labels: list[str | None] = field(default_factory=list)
    cut_off: list[_CutOff] = field(default_factory=list)
    """Requests the stop cut off before their answer, to settle."""
    settled: list[tuple[str, str | None]] = field(default_factory=list)
    """(task id, label) of cut-off tasks the peer said it accepted."""
    abandoned: list[tuple[str, str | None]] = field(default_factory=list)
    """(task id, label) of what this map left in the mesh once its consumer stopped:
    its own, where ``uncollected()`` also holds every other map's."""


class MapSubmission:
    """``map``, ``map_chunks`` and ``uncollected`` (mixed into ``AsyncClient``, after
    the mixins that define what the stubs below stand for)."""

    _nursery: trio.Nursery | None
    _closed: bool
    members: list[dict[str, Any]]
    unanswered: int
    unanswered_labels: list[str | None]
    _abandoned: dict[str, str | None]
    _handles: dict[str, AsyncTaskHandle]

    # Defined by the mixins before this one in AsyncClient's bases (batches.py,
    # outcomes.py); named here for the type checker only, so the signatures live once.
    submit_many: Callable[..., Awaitable[list[AsyncTaskHandle | MeshError]]]
    _probe: Callable[[str, Callable[[], int], float], Awaitable[int]]
    collected: Callable[[Iterable[str]], None]

    def _abandon(self, handles: Iterable[AsyncTaskHandle]) -> None:
        raise NotImplementedError

    def uncollected(self) -> list[tuple[str, str | None]]:
        """(task id, label) of every task this client submitted, the mesh accepted, and
        a stopped ``map`` never handed to its consumer: their results wait in the mesh
        for ``meshgpu collect`` (or ``attach``)."""
        return list(self._abandoned.items())

    async def map(
        self,
        model: Any,
        many_inputs: Iterable[Mapping[str, Any]],
        *,
        window: int = 64,
        raise_errors: bool = True,
        group: int | None = None,
        label: Label = None,
        **options: Any,
    ) -> AsyncIterator[Completed]:
        """Submit one task per input map (at most ``window`` unfinished at once) and
        yield a :class:`Completed` per task as each finishes, in completion order. A
        failed task raises its error unless ``raise_errors`` is False.

        ``group``: members per task group (1: one table entry per task); None (the
        default) chooses per request from the mesh's published latency of the model and
        its live capacity (:func:`~meshgpu.client.batches.choose_group`). ``label``: a
        name for every task, or a function of the input's index (``meshgpu tasks``
        shows it). A task is marked collected once its item was taken; stopped early,
        the map lists what it abandoned in :meth:`uncollected` (module docstring)."""
        run = MapRun()
        chunks = self._map(run, model, many_inputs, window, group, label, options)
        try:
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    for item in chunk:
                        self._taken(run, [item])  # raised or yielded: the caller has it
                        if item.error is not None and raise_errors:
                            raise item.error
                        yield item
        finally:
            self._consumer_stopped(run)

    async def map_chunks(
        self,
        model: Any,
        many_inputs: Iterable[Mapping[str, Any]],
        *,
        window: int = 64,
        group: int | None = None,
        label: Label = None,
        **options: Any,
    ) -> AsyncGenerator[list[Completed], None]:
        """:meth:`map` that yields, as one list, every item finished by the time the
        consumer asks (failed ones included, never raised): one hand-off per burst, which
        is what a consumer in another thread (the blocking client) needs. A chunk counts
        as taken when the consumer asks for the next one."""
        run = MapRun()
        chunks = self._map(run, model, many_inputs, window, group, label, options)
        try:
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    yield chunk
                    self._taken(run, chunk)
        finally:
            self._consumer_stopped(run)

    async def settle(
        self, submissions: list[str], sent_on: list[Any]
    ) -> list[dict[str, Any] | None]:
        """What became of the tasks of one ``submit_many`` request cut off before its
        answer (``submissions``: their ids; ``sent_on``: the links it went out on, as
        ``submit_many`` filled it), asked of the peer it went to (``settle_submissions``):
        per task ``{"task_id": ...}`` if accepted, ``{"withdrawn": True}`` or ``{"error":
        ...}`` if not submitted (never sent, never seen, refused), None if that cannot be
        told (still replicating, sent on several links, the link gone, an older daemon):
        the mesh may have accepted it. Bounded by the caller's time."""
        if not sent_on:
            return [{"withdrawn": True} for _ in submissions]  # never sent
        link = sent_on[-1]
        # Sent on several links: an earlier peer may hold it as well. Broken: the peer
        # cannot be asked (a new link goes to whichever peer answers).
        if len({id(sent) for sent in sent_on}) > 1 or not link.rpc.usable:
            return [None for _ in submissions]
        try:
            reply = await link.rpc.call(
                "settle_submissions", submissions=submissions, wait_s=SETTLE_WAIT_S
            )
            results = list(reply["results"])
        except (MeshError, KeyError, TypeError):  # a daemon without the op, a broken link
            return [None for _ in submissions]
        if len(results) != len(submissions):
            return [None for _ in submissions]
        return [
            answer
            if isinstance(answer, dict)
            and (answer.get("task_id") or answer.get("withdrawn") or answer.get("error"))
            else None
            for answer in results
        ]

    async def _settle(self, run: MapRun) -> None:
        """Settle each request the stop cut off (:meth:`settle`): the tasks accepted are
        abandoned with their ids (``run.settled``), those never seen were not submitted,
        and the rest count as ``unanswered``, as does all that ``SETTLE_S`` left."""
        cut, run.cut_off = run.cut_off, []
        with trio.move_on_after(SETTLE_S):
            while cut:
                request = cut[0]
                answers = await self.settle(request.submissions, request.sent_on)
                cut.pop(0)
                for label, answer in zip(request.labels, answers, strict=True):
                    if answer is None:
                        run.unanswered += 1
                        run.unanswered_labels.append(label)
                    elif answer.get("task_id"):
                        task_id = str(answer["task_id"])
                        run.settled.append((task_id, label))
                        handle = self._handles.get(task_id)  # an earlier request's answer
                        if handle is not None:
                            self._abandon([handle])
                        self._abandoned[task_id] = label
        for request in cut:
            if request.sent_on:
                self._unsettled(run, request)

    @staticmethod
    def _unsettled(run: MapRun, request: _CutOff) -> None:
        run.unanswered += len(request.submissions)
        run.unanswered_labels += request.labels

    def _taken(self, run: MapRun, items: list[Completed]) -> None:
        ids = [item.task_id for item in items if item.task_id is not None]
        for task_id in ids:
            run.outstanding.pop(task_id, None)
        self.collected(ids)

    def _consumer_stopped(self, run: MapRun) -> None:
        """The consumer of ``run`` takes nothing more: every task accepted and not taken
        is abandoned (listed in ``uncollected``, never acknowledged). Called by whoever
        reads the items, once it stopped reading, never by ``_map`` when it ends: a
        consumer in another thread (the blocking client) is still reading the last
        bursts after ``_map`` has handed them over and finished."""
        run.abandoned = [(handle.task_id, handle.label) for handle in run.outstanding.values()]
        run.abandoned += run.settled
        self._abandon(run.outstanding.values())
        run.outstanding.clear()

    async def _map(
        self,
        run: MapRun,
        model: Any,
        many_inputs: Iterable[Mapping[str, Any]],
        window: int,
        group: int | None,
        label: Label,
        options: dict[str, Any],
    ) -> AsyncGenerator[list[Completed], None]:
        """The map itself: yields bursts of items; the wrappers record what was taken and,
        once their consumer stopped, abandon the rest (``_consumer_stopped``)."""
        if self._nursery is None or self._closed:
            raise client_not_open(self._nursery is not None)
        # 0 waited for ever for room; -1 and 2.5 failed inside the client's loop with an
        # exception group at its close.
        window = whole_number(window, "window is the most unfinished tasks at once", 1)
        if group is not None:
            group = member_count(group)
        if isinstance(label, str):
            check_label(label)
        blob = ModelBlob.of(model)
        # Checked here, in the caller's loop: a keyword submit_many does not take (a typo,
        # deadline= for deadline_s=) raised TypeError in the client's nursery, which closed
        # the client and raised an exception group from close().
        for name in options:
            if name not in SUBMIT_OPTIONS:
                raise TypeError(
                    f"map() got an unexpected keyword argument {name!r}; its submission "
                    f"options are {', '.join(SUBMIT_OPTIONS)}"
                )
        submit_fields(blob, **{**SUBMIT_OPTIONS, **options})
        send, receive = trio.open_memory_channel[Completed](math.inf)
        feeding = trio.CancelScope()
        produced = trio.Event()
        # The caller's iterable is read in the client's nursery: an error it raises
        # (a generator that fails midway) would cancel the client itself and reach the
        # loop as trio.Cancelled. It ends the feeding instead, and is raised to the
        # loop once the items submitted before it are yielded (where map() raises it).
        input_failure: list[Exception] = []

        def guarded() -> Iterator[tuple[int, Mapping[str, Any]]]:
            try:
                yield from enumerate(many_inputs)
            except Exception as error:
                input_failure.append(error)

        def label_for(index: int) -> str | None:
            return label(index) if callable(label) else label

        def deliver(item: Completed) -> None:
            # Outcomes arrive by handle callbacks, also after the consumer stopped (a
            # raised error, a break: the receiving end is closed) or the map was
            # cancelled (the sending end is closed): dropped then, never raised into the
            # client's loop (and never acknowledged: the task is abandoned).
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                send.send_nowait(item)

        def on_outcome(index: int, free: _Window) -> Callable[[Outcome], None]:
            def done(outcome: Outcome) -> None:
                free.release()
                deliver(
                    Completed(
                        index, outcome.task_id, outcome.outputs, outcome.worker, outcome.error
                    )
                )

            return done

        async def submit_batch(
            batch: list[tuple[int, Mapping[str, Any]]], free: _Window, size: int
        ) -> None:
            labels = [label_for(index) for index, _ in batch]
            submissions = [new_submission_id() for _ in batch]
            sent_on: list[Any] = []
            try:
                answers: list[AsyncTaskHandle | MeshError] = await self.submit_many(
                    blob,
                    [inputs for _, inputs in batch],
                    group=size,
                    label=labels,
                    acknowledge=False,  # by _taken, once the consumer has the item
                    submissions=submissions,
                    sent_on=sent_on,
                    **options,
                )
            except MeshError as error:
                answers = [error] * len(batch)
            except trio.Cancelled:
                # Cut off by the stop: maybe accepted, settled once the map stops.
                run.cut_off.append(_CutOff(submissions, labels, sent_on))
                raise
            for (index, _), answer in zip(batch, answers, strict=True):
                if isinstance(answer, MeshError):
                    deliver(Completed(index, None, error=answer))
                    free.release()
                else:
                    run.outstanding[answer.task_id] = answer
                    answer.on_resolved(on_outcome(index, free))

        async def produce() -> None:
            # Each request carries every input the window has room for right now (up to
            # BATCH_MAX): the whole window at first, then whatever a burst of results
            # freed. No waiting to fill a batch: a lone free slot is submitted at once,
            # except that with groups of K a full window waits up to GATHER_S for K-1
            # more places (a group's members come back within milliseconds of each
            # other; without it the window refilled one member at a time, in groups of
            # one or two, and the steady rate fell to a third of the first burst's).
            try:
                with send:
                    async with trio.open_nursery() as requests:
                        with feeding:
                            await feed(requests)
                        # Stopped (or done: then nothing is out): the requests on the
                        # wire get STOP_GRACE_S to be answered, so accepted ids are known.
                        requests.cancel_scope.deadline = trio.current_time() + STOP_GRACE_S
            finally:
                produced.set()

        async def feed(requests: trio.Nursery) -> None:
            free = _Window(window)
            inputs_left = guarded()
            probe_until = trio.current_time() + PROBE_MAX_S
            while True:
                await free.acquire()
                most = BATCH_MAX
                if group is None:
                    most = await self._probe(blob.digest, lambda: window - free.value, probe_until)
                size = (
                    group if group is not None else choose_group(self.members, blob.digest, window)
                )
                if size > 1:
                    await free.gather(min(size, BATCH_MAX) - 1, GATHER_S)
                held = 1
                batch: list[tuple[int, Mapping[str, Any]]] = []
                for item in inputs_left:
                    batch.append(item)
                    if len(batch) >= most or not free.value:
                        break
                    free.acquire_nowait()
                    held += 1
                for _ in range(held - len(batch)):
                    free.release()
                if not batch:
                    break
                requests.start_soon(submit_batch, batch, free, size)
            # Every task out gives its place back with its outcome (or its refusal).
            await free.gather(window, math.inf)

        self._nursery.start_soon(produce)
        try:
            async with receive:
                async for item in receive:
                    chunk = [item]
                    with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):
                        while True:
                            chunk.append(receive.receive_nowait())
                    yield chunk
            if input_failure:
                raise input_failure[0]
        finally:
            feeding.cancel()
            with trio.CancelScope(shield=True), trio.move_on_after(STOP_GRACE_S + 0.5):
                await produced.wait()
            with trio.CancelScope(shield=True):
                await self._settle(run)
            self.unanswered += run.unanswered
            self.unanswered_labels += run.unanswered_labels
