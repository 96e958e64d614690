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
