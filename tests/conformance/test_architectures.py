"""The nine architectures onnx ships, with seeded weights: OpenCL must match onnxruntime.

Acceptance (design.md section 5): every element of every output within
1e-4 * max(1, |reference|) of onnxruntime's, in fp32. Besides the model's own output
(softmax probabilities for most), the logits entering the final softmax are compared too,
because probabilities near 1e-3 would hide errors ten times the bound.

Weights come from :func:`meshgpu.inference.architectures.seeded_architecture` (He-scaled,
seed 0), the images are seeded standard-normal. Batch 1 for all nine; batch 3 for the three
cheapest, so that batch > 1 goes through every kind of layer they hold.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

from meshgpu import inference
from meshgpu.inference.architectures import (
    ARCHITECTURES,
    architecture_feeds,
    seeded_architecture,
)
from meshgpu.inference.onnxruntime_backend import OnnxRuntimeSession

pytestmark = [pytest.mark.conformance, pytest.mark.slow]

TOLERANCE = 1e-4
BATCHED = ("squeezenet", "shufflenet", "inception_v1")


def _error_ratio(output: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(max abs error, max of error / allowed error); the second must stay <= 1."""
    error = np.abs(output.astype(np.float64) - reference.astype(np.float64))
    allowed = TOLERANCE * np.maximum(1.0, np.abs(reference.astype(np.float64)))
    return float(error.max()), float((error / allowed).max())


def _check(name: str, batch: int) -> None:
    model = seeded_architecture(name, seed=0, batch=batch)
    feeds = architecture_feeds(model, seed=1)
    reference = OnnxRuntimeSession(model).run(feeds)
    gc.collect()
    session = inference.load(model, backend="opencl")
    assert session.backend == "opencl"
    del model
    outputs = session.run(feeds)
    lines = []
    worst = 0.0
    for output_name, expected in reference.items():
        got = outputs[output_name]
        assert got.shape == expected.shape, f"{output_name}: {got.shape} vs {expected.shape}"
        assert np.isfinite(got).all(), f"{output_name} has non-finite values"
        max_error, ratio = _error_ratio(got, expected)
        worst = max(worst, ratio)
        lines.append(
            f"{output_name} max|err|={max_error:.3g} max|ref|={np.abs(expected).max():.3g} "
            f"(err/bound {ratio:.3f})"
        )
    print(f"{name} batch {batch}: " + "; ".join(lines))
    assert worst <= 1.0, f"{name} batch {batch} exceeds 1e-4*max(1,|ref|): " + "; ".join(lines)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_architecture_matches_onnxruntime(name: str) -> None:
    _check(name, batch=1)


@pytest.mark.parametrize("name", BATCHED)
def test_architecture_batch_matches_onnxruntime(name: str) -> None:
    _check(name, batch=3)


def test_seeded_weights_are_deterministic_and_sized() -> None:
    first = seeded_architecture("squeezenet", seed=0)
    second = seeded_architecture("squeezenet", seed=0)
    other = seeded_architecture("squeezenet", seed=1)
    assert first.SerializeToString() == second.SerializeToString()
    assert first.SerializeToString() != other.SerializeToString()
    assert not any(node.op_type == "ConstantOfShape" for node in first.graph.node)
    assert [value.name for value in first.graph.input] == ["data_0"]
