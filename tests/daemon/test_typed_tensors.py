"""String and bfloat16 tensors through the mesh: a client's submit entered at one node
and run on the other (the replicated table, inputs and results in the payload stores and
on the wire), and a direct run, each equal to onnxruntime's outputs."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from meshgpu.errors import MeshError
from tests.daemon.labelled_pair import labelled_pair
from tests.typed_models import bfloat16_model, reference, string_model

pytestmark = [pytest.mark.integration]

WAIT_S = 60.0


def assert_same(got: dict[str, np.ndarray], wanted: dict[str, np.ndarray]) -> None:
    assert got.keys() == wanted.keys()
    for name, array in wanted.items():
        assert got[name].dtype == array.dtype, name
        assert got[name].shape == array.shape, name
        assert got[name].tolist() == array.tolist(), name


async def test_strings_and_bfloat16_run_through_the_table_and_directly(tmp_path: Path) -> None:
    strings = string_model(tmp_path / "strings.onnx")
    halves = bfloat16_model(tmp_path / "halves.onnx")
    text = np.array(["hi", "", "grüße", "x" * 5000], dtype=object)
    x = (np.arange(-6, 6, dtype=np.float32).reshape(4, 3) / 7).astype(ml_dtypes.bfloat16)
    cases = [
        (strings, {"text": text}, reference(strings, {"text": text})),
        (halves, {"x": x}, reference(halves, {"x": x})),
    ]
    async with labelled_pair(tmp_path, b_labels=(("room", "b"),)) as client:
        for model, inputs, wanted in cases:
            # Required on b, entered at a: through the table and both payload stores.
            handle = await client.submit(model, inputs, require={"room": "b"}, replicas=2)
            outcome = await handle.wait(WAIT_S)
            assert outcome.error is None and outcome.worker == "b", outcome.error
            assert_same(outcome.outputs, wanted)
            handle = await client.submit(model, inputs)  # a idle: may run directly
            outcome = await handle.wait(WAIT_S)
            assert outcome.error is None, outcome.error
            assert_same(outcome.outputs, wanted)
        # A numpy str array is a string tensor too; bytes that are not UTF-8 are not.
        handle = await client.submit(strings, {"text": np.array(["hi", "ho"])})
        outcome = await handle.wait(WAIT_S)
        assert outcome.outputs["is_hi"].tolist() == [True, False]
        with pytest.raises(MeshError, match="not UTF-8"):
            await client.submit(strings, {"text": np.array([b"\xff"], dtype=object)})
