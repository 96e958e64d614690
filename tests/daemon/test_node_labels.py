"""Node labels through real daemons: gossiped with the load and shown by status; a task
requiring a label runs on the node that carries it; one that no live node can satisfy
fails at once, naming the requirement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from meshgpu.errors import MeshError
from tests.cli_user.test_preflight import two_input_model
from tests.daemon.labelled_pair import labelled_pair

pytestmark = [pytest.mark.integration]

WAIT_S = 60.0


async def test_required_labels_place_and_unsatisfiable_ones_fail_at_once(tmp_path: Path) -> None:
    model = two_input_model(tmp_path / "pair.onnx")
    inputs = {"a": np.ones((2, 3), np.float32), "b": np.ones((2, 3), np.float32)}
    async with labelled_pair(tmp_path, (("room", "b12"),), (("gpu", "fast"),)) as client:
        handle = await client.submit(model, inputs, require={"gpu": "fast"}, replicas=1)
        outcome = await handle.wait(WAIT_S)
        assert outcome.error is None and outcome.worker == "b"
        handle = await client.submit(model, inputs, require=["gpu=huge"], replicas=1)
        outcome = await handle.wait(WAIT_S)
        assert isinstance(outcome.error, MeshError)
        assert "no live node carries the required labels gpu=huge" in str(outcome.error)
        assert outcome.worker is None  # failed by the leader, never assigned to a worker
        with pytest.raises(MeshError, match="KEY=VALUE"):
            await client.submit(model, inputs, require=["gpu"])
