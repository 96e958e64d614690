"""Submitting many tasks at once: ``submit_many`` and ``map`` of :class:`AsyncClient`.

A batch travels as one ``submit_batch`` request (up to ``BATCH_MAX`` tasks): the entry
node journals it with one group commit and replicates it together, and the per-request
costs (framing, a response, a trip through both event loops) are paid once per batch
instead of once per task. Each task of a batch is answered on its own: a malformed one
fails alone. ``map`` keeps at most ``window`` tasks unfinished and submits, in one
request, every input the window has room for at that moment; it never waits to fill a
batch, so a lone free slot is used at once. Rejected: a timer that gathers a batch
(latency on every sequential caller for a saving only bursts need).

A mixin, so that :class:`~meshgpu.client.session.AsyncClient` (the link, failover and
result streams) stays one concept per module; it relies on the client's
``_submit_request``, ``_handle_of`` and ``_nursery``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import numpy as np
import trio

from meshgpu.client.handles import AsyncTaskHandle, Completed
from meshgpu.client.models import ModelBlob
from meshgpu.daemon.payloads import encode_tensors
from meshgpu.errors import ConfigError, MeshError, RequestFailedError

BATCH_MAX = 64
"""Most tasks in one ``submit_batch`` request from :meth:`BatchedSubmission.submit_many`."""


class BatchedSubmission:
    """``submit_many`` and ``map`` (mixed into :class:`~meshgpu.client.AsyncClient`)."""

    _nursery: trio.Nursery | None

    async def _submit_request(self, blob: ModelBlob, op: str, **fields: Any) -> dict[str, Any]:
        raise NotImplementedError

    def _handle_of(self, reply: dict[str, Any]) -> AsyncTaskHandle:
        raise NotImplementedError

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
    ) -> list[AsyncTaskHandle | MeshError]:
        """Submit many tasks of one model with the same options in as few requests as
        possible (``submit_batch``, up to ``BATCH_MAX`` tasks each): the mesh journals
        and replicates a batch together. Returns, in input order, a handle per task (as
        :meth:`submit` would) or the error that refused that task alone (a malformed
        input); the other tasks are submitted regardless. A broken connection makes the
        whole batch be submitted again on the next peer, as :meth:`submit` does."""
        blob = ModelBlob.of(model)
        fields = submit_fields(blob, priority, replicas, deadline_s, device_type, min_memory, fp16)
        answers: list[AsyncTaskHandle | MeshError | None] = []
        encoded: list[tuple[int, dict[str, Any]]] = []
        for index, inputs in enumerate(many_inputs):
            answers.append(None)
            try:
                encoded.append((index, {"inputs": encode_inputs(inputs)}))
            except MeshError as error:
                answers[index] = error
        for start in range(0, len(encoded), BATCH_MAX):
            chunk = encoded[start : start + BATCH_MAX]
            try:
                reply = await self._submit_request(
                    blob, "submit_batch", tasks=[task for _, task in chunk], **fields
                )
            except RequestFailedError as error:
                if "unknown op 'submit_batch'" not in str(error):
                    raise
                reply = {"results": await self._submit_each(blob, chunk, fields)}
            for (index, _), answer in zip(chunk, reply["results"], strict=True):
                if answer.get("error") is not None:
                    kind = str(answer.get("kind", "MeshError"))
                    answers[index] = RequestFailedError(f"task refused: {answer['error']}", kind)
                else:
                    answers[index] = self._handle_of(answer)
        return [answer for answer in answers if answer is not None]

    async def _submit_each(
        self, blob: ModelBlob, chunk: list[tuple[int, dict[str, Any]]], fields: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """A batch as single ``submit`` requests, for a daemon from before
        ``submit_batch`` (a lab upgrading its machines one at a time)."""
        answers: list[dict[str, Any]] = [{} for _ in chunk]

        async def one(position: int, task: dict[str, Any]) -> None:
            try:
                answers[position] = await self._submit_request(blob, "submit", **task, **fields)
            except RequestFailedError as error:
                answers[position] = {"error": str(error), "kind": error.kind}

        async with trio.open_nursery() as nursery:
            for position, (_, task) in enumerate(chunk):
                nursery.start_soon(one, position, task)
        return answers

    async def map(
        self,
        model: Any,
        many_inputs: Iterable[Mapping[str, Any]],
        *,
        window: int = 64,
        raise_errors: bool = True,
        **options: Any,
    ) -> AsyncIterator[Completed]:
        """Submit one task per input map (at most ``window`` unfinished at once) and
        yield a :class:`Completed` per task as each finishes, in completion order. A
        failed task raises its error unless ``raise_errors`` is False."""
        assert self._nursery is not None
        blob = ModelBlob.of(model)
        send, receive = trio.open_memory_channel[Completed](math.inf)
        scope = trio.CancelScope()

        def deliver(item: Completed) -> None:
            # The consumer may have stopped (a raised error, a break) while this task's
            # wait was already woken: cancelling the scope cannot reach it any more, so
            # the closed channel is expected here and must not crash the client's loop.
            with contextlib.suppress(trio.BrokenResourceError):
                send.send_nowait(item)

        async def wait_one(index: int, handle: AsyncTaskHandle, free: trio.Semaphore) -> None:
            try:
                outcome = await handle.wait()
                deliver(
                    Completed(index, handle.task_id, outcome.outputs, outcome.worker, outcome.error)
                )
            finally:
                free.release()

        async def submit_batch(
            batch: list[tuple[int, Mapping[str, Any]]], free: trio.Semaphore
        ) -> None:
            try:
                answers: list[AsyncTaskHandle | MeshError] = await self.submit_many(
                    blob, [inputs for _, inputs in batch], **options
                )
            except MeshError as error:
                answers = [error] * len(batch)
            async with trio.open_nursery() as nursery:
                for (index, _), answer in zip(batch, answers, strict=True):
                    if isinstance(answer, MeshError):
                        deliver(Completed(index, None, error=answer))
                        free.release()
                    else:
                        nursery.start_soon(wait_one, index, answer, free)

        async def produce() -> None:
            # Each request carries every input the window has room for right now (up to
            # BATCH_MAX): the whole window at first, then whatever a burst of results
            # freed. No waiting to fill a batch: a lone free slot is submitted at once.
            with scope, send:
                free = trio.Semaphore(window)
                inputs_left = enumerate(many_inputs)
                async with trio.open_nursery() as nursery:
                    while True:
                        await free.acquire()
                        held = 1
                        batch: list[tuple[int, Mapping[str, Any]]] = []
                        for item in inputs_left:
                            batch.append(item)
                            if len(batch) >= BATCH_MAX or not free.value:
                                break
                            free.acquire_nowait()
                            held += 1
                        for _ in range(held - len(batch)):
                            free.release()
                        if not batch:
                            return
                        nursery.start_soon(submit_batch, batch, free)

        self._nursery.start_soon(produce)
        try:
            async with receive:
                async for item in receive:
                    if item.error is not None and raise_errors:
                        raise item.error
                    yield item
        finally:
            scope.cancel()


def submit_fields(
    blob: ModelBlob,
    priority: str,
    replicas: int,
    deadline_s: float | None,
    device_type: str | None,
    min_memory: int,
    fp16: bool,
) -> dict[str, Any]:
    """The request fields a submission's options become (all but the inputs)."""
    fields: dict[str, Any] = {
        "model_digest": blob.digest,
        "priority": priority,
        "replicas": int(replicas),
        "min_memory": int(min_memory),
        "fp16": bool(fp16),
    }
    if deadline_s is not None:
        fields["deadline_s"] = float(deadline_s)
    if device_type is not None:
        fields["device_type"] = device_type
    return fields


def encode_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(inputs, Mapping) or not inputs:
        raise ConfigError("inputs must be a non-empty mapping of input name to array")
    arrays = {}
    for name, value in inputs.items():
        if not isinstance(name, str):
            raise ConfigError(f"input names are strings, not {name!r}")
        array = np.asarray(value)
        if array.dtype.kind not in "biufc":
            raise ConfigError(f"input {name!r} has dtype {array.dtype}; use a numeric array")
        arrays[name] = array
    return encode_tensors(arrays)
