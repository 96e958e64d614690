"""Node labels through real daemons: gossiped with the load and shown by status; a task
requiring a label runs on the node that carries it; one that no live node can satisfy
fails at once, naming the requirement."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from meshgpu.client import AsyncClient
from meshgpu.daemon.runtime import Daemon
from meshgpu.errors import MeshError
from tests.cli_user.test_preflight import two_input_model
from tests.daemon.test_runtime import settings

pytestmark = [pytest.mark.integration]

WAIT_S = 60.0


async def labelled_loads(client: AsyncClient) -> dict[str, Any]:
    status = await client.status()
    return {m["node_id"]: (m.get("load") or {}).get("labels") for m in status["members"]}


async def test_required_labels_place_and_unsatisfiable_ones_fail_at_once(tmp_path: Path) -> None:
    model = two_input_model(tmp_path / "pair.onnx")
    inputs = {"a": np.ones((2, 3), np.float32), "b": np.ones((2, 3), np.float32)}
    base = settings(tmp_path / "a")
    first = Daemon(dataclasses.replace(base, name="a", labels=(("room", "b12"),)))
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        second = Daemon(
            dataclasses.replace(
                settings(tmp_path / "b"),
                name="b",
                labels=(("gpu", "fast"),),
                peers=(f"127.0.0.1:{first.address[1]}",),
            )
        )
        await nursery.start(second.run)
        async with AsyncClient(("127.0.0.1", first.address[1]), environ={}) as client:
            with trio.fail_after(WAIT_S):
                while await labelled_loads(client) != {
                    "a": {"room": "b12"},
                    "b": {"gpu": "fast"},
                }:
                    await trio.sleep(0.1)
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
        nursery.cancel_scope.cancel()
