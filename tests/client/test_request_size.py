"""A ``submit_batch`` request is bounded by bytes as well as by count: many mid-sized
tasks (each small enough to travel inline) went out as one request larger than the frame
limit, and every task of it failed with 'refusing to send a ...-byte frame'."""

from __future__ import annotations

from typing import Any

import numpy as np

from meshgpu.client.batches import BATCH_MAX, BatchedSubmission, request_chunks
from meshgpu.daemon.payloads import encode_tensors


class _Recording(BatchedSubmission):
    """Answers every request's tasks and keeps what each request carried."""

    def __init__(self, chunk_bytes: int) -> None:
        self.members = []
        self._group_left = {}
        self._group_taken = {}
        self.max_task_bytes = 1 << 30
        self.chunk_bytes = chunk_bytes
        self.requests: list[list[dict[str, Any]]] = []

    async def _submit_request(self, blob: Any, op: str, upload: Any = None, **fields: Any) -> Any:
        assert op == "submit_batch"
        tasks = fields["tasks"]
        self.requests.append(tasks)
        first = sum(len(request) for request in self.requests[:-1])
        return {"results": [{"task_id": f"t{first + n}"} for n in range(len(tasks))]}


def _data_bytes(request: list[dict[str, Any]]) -> int:
    return sum(len(t["data"]) for task in request for t in task["inputs"].values())


async def test_mid_sized_tasks_are_split_over_requests_within_the_budget() -> None:
    client = _Recording(chunk_bytes=1 << 20)
    inputs = [{"x": np.full((300, 256), n, np.float32)} for n in range(30)]  # 300 KiB each
    handles = await client.submit_many(b"model", inputs, watch=False)
    assert [handle.task_id for handle in handles] == [f"t{n}" for n in range(30)]  # type: ignore[union-attr]
    assert len(client.requests) == 10
    assert all(_data_bytes(request) <= 1 << 20 for request in client.requests)


def test_chunks_keep_order_count_and_a_task_larger_than_the_budget_alone() -> None:
    def task(size: int) -> dict[str, Any]:
        return {"inputs": encode_tensors({"x": np.zeros(size, np.uint8)})}

    encoded = [(n, task(10)) for n in range(BATCH_MAX + 1)]
    assert [len(chunk) for chunk in request_chunks(encoded, 1 << 20)] == [BATCH_MAX, 1]
    encoded = [(0, task(60)), (1, task(100)), (2, task(30)), (3, task(70))]
    chunks = request_chunks(encoded, 100)
    assert [[index for index, _ in chunk] for chunk in chunks] == [[0], [1], [2, 3]]
    assert request_chunks([], 100) == []
