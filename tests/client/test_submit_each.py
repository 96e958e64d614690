"""A batch sent as single ``submit`` requests (a daemon from before ``submit_batch``)
fails as one request does: a client closed under it raises its ClientError, not an
exception group that ``map`` could not catch (its close then raised the group)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from meshgpu.client.batches import BatchedSubmission
from meshgpu.client.handles import client_not_open
from meshgpu.errors import ClientError, RequestFailedError


class _Closing:
    """Answers the first request, refuses the second as a task, then is closed."""

    def __init__(self) -> None:
        self.calls = 0

    async def _submit_request(self, blob: Any, op: str, **fields: Any) -> dict[str, Any]:
        self.calls += 1
        if fields["n"] == 0:
            return {"task_id": "t0"}
        if fields["n"] == 1:
            raise RequestFailedError("bad input", "InputError")
        await trio.sleep(0.01)
        raise client_not_open(True)


async def test_a_client_closed_under_a_batch_raises_its_error_not_a_group() -> None:
    chunk = [(n, {"n": n}) for n in range(4)]
    with pytest.raises(ClientError, match="closed"):
        await BatchedSubmission._submit_each(_Closing(), None, chunk, {})  # type: ignore[arg-type]


async def test_task_refusals_are_answers_and_the_rest_are_kept() -> None:
    class _Refusing(_Closing):
        async def _submit_request(self, blob: Any, op: str, **fields: Any) -> dict[str, Any]:
            if fields["n"] == 1:
                raise RequestFailedError("bad input", "InputError")
            return {"task_id": f"t{fields['n']}"}

    chunk = [(n, {"n": n}) for n in range(3)]
    answers = await BatchedSubmission._submit_each(_Refusing(), None, chunk, {})  # type: ignore[arg-type]
    assert answers[0] == {"task_id": "t0"} and answers[2] == {"task_id": "t2"}
    assert answers[1]["kind"] == "InputError" and "bad input" in answers[1]["error"]
