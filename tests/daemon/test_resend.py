"""Idempotent submissions on a real daemon: a batch resent after a broken link (the
client cannot tell which of its tasks were accepted) is answered with the first task
ids, not submitted again under new ones."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from meshgpu.daemon.payloads import encode_tensors
from tests.daemon.meshprocs import call, start_node

pytestmark = [pytest.mark.integration]

MODELS = Path(__file__).parents[2] / "meshgpu" / "inference" / "models"
MODEL = (MODELS / "digits.onnx").read_bytes()
DIGEST = hashlib.sha256(MODEL).hexdigest()


def task(value: float, submission: str) -> dict:
    pixels = np.full((1, 64), value, np.float32)
    return {"inputs": encode_tensors({"pixels": pixels}), "submission": submission}


async def test_a_resent_batch_is_answered_with_its_first_task_ids(tmp_path: Path) -> None:
    node = start_node(tmp_path / "n0", "--name", "n0")
    try:
        await call(node, None, "put_model", digest=DIGEST, data=MODEL)
        first = [task(float(i), f"s{i}") for i in range(3)]
        options = {"model_digest": DIGEST, "replicas": 1}
        sent = await call(node, None, "submit_batch", tasks=first, **options)
        ids = [answer["task_id"] for answer in sent["results"]]
        assert len(set(ids)) == 3
        # The link broke before this answer arrived: the client sends the batch again
        # (with one more task), an id reused for other inputs among them.
        again = [*first, task(9.0, "s9"), task(5.0, "s0")]
        resent = await call(node, None, "submit_batch", tasks=again, **options)
        answers = resent["results"]
        assert [answer["task_id"] for answer in answers[:3]] == ids
        assert answers[3]["task_id"] not in ids
        assert "other inputs" in answers[4]["error"]
        single = await call(node, None, "submit", direct=False, **task(1.0, "s1"), **options)
        assert single["task_id"] == ids[1]
        rows = (await call(node, None, "tasks"))["tasks"]
        assert len(rows) == 4  # three tasks and the new one, none twice
        status = await call(node, None, "status")
        assert status["counters"]["daemon"]["submissions_resent"] == 4
    finally:
        node.stop()


async def test_settle_names_accepted_submissions_and_withdraws_unknown_ones(
    tmp_path: Path,
) -> None:
    """A client that cut off a batch before its answer asks what became of each task:
    accepted ones by task id (a group member's too), unknown ones withdrawn, so that the
    cut-off request, should it still arrive, submits none of them."""
    node = start_node(tmp_path / "n0", "--name", "n0")
    try:
        await call(node, None, "put_model", digest=DIGEST, data=MODEL)
        options = {"model_digest": DIGEST, "replicas": 1}
        sent = await call(node, None, "submit_batch", tasks=[task(1.0, "a")], **options)
        grouped = [task(float(i), f"g{i}") for i in range(2)]
        members = await call(node, None, "submit_batch", tasks=grouped, group=2, **options)
        asked = ["a", "g1", "late", "g0"]
        settled = (await call(node, None, "settle_submissions", submissions=asked))["results"]
        assert settled[0] == {"task_id": sent["results"][0]["task_id"]}
        assert settled[1]["task_id"] == members["results"][1]["task_id"]
        assert settled[3]["task_id"] == members["results"][0]["task_id"]
        assert settled[2] == {"withdrawn": True}
        late = await call(node, None, "submit_batch", tasks=[task(2.0, "late")], **options)
        assert "gave this submission up" in late["results"][0]["error"]
        assert len((await call(node, None, "tasks"))["tasks"]) == 2  # a task and a group
    finally:
        node.stop()
