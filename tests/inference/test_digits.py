"""The shipped digits classifier: its accuracy, and both backends agreeing on every digit."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from meshgpu import inference
from meshgpu.inference.model import SHIPPED_MODELS

# Measured by models/train_digits.py on the 450 held-out digits: 440 right (0.9778).
EXPECTED_ACCURACY = 0.9778


@pytest.fixture(scope="module")
def test_set() -> tuple[np.ndarray, np.ndarray]:
    with np.load(SHIPPED_MODELS["digits"].with_name("digits_test.npz")) as data:
        return np.asarray(data["pixels"]), np.asarray(data["labels"])


@pytest.fixture(scope="module")
def reference(test_set: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    session = inference.load("digits", backend="onnxruntime")
    return session.run({"pixels": test_set[0]})["probabilities"]


def test_model_is_small_package_data() -> None:
    assert SHIPPED_MODELS["digits"].stat().st_size < 1_000_000


def test_accuracy_on_the_held_out_set(
    test_set: tuple[np.ndarray, np.ndarray], reference: np.ndarray
) -> None:
    pixels, labels = test_set
    assert pixels.shape == (450, 64) and labels.shape == (450,)
    accuracy = float((reference.argmax(axis=1) == labels).mean())
    print(f"digits test accuracy (onnxruntime): {accuracy:.4f} on {len(labels)} samples")
    assert accuracy == pytest.approx(EXPECTED_ACCURACY, abs=1e-4)


def test_opencl_agrees_on_every_prediction(
    test_set: tuple[np.ndarray, np.ndarray], reference: np.ndarray
) -> None:
    pixels, labels = test_set
    session = inference.load("digits", backend="opencl")
    probabilities = session.run({"pixels": pixels})["probabilities"]
    disagreements = np.flatnonzero(probabilities.argmax(axis=1) != reference.argmax(axis=1))
    assert disagreements.size == 0, f"backends disagree on samples {disagreements.tolist()}"
    np.testing.assert_allclose(probabilities, reference, atol=1e-5, rtol=1e-4)
    accuracy = float((probabilities.argmax(axis=1) == labels).mean())
    print(f"digits test accuracy (OpenCL): {accuracy:.4f}")


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_opencl_batches_match_the_full_run(
    batch: int, test_set: tuple[np.ndarray, np.ndarray], reference: np.ndarray
) -> None:
    session = inference.load("digits", backend="opencl")
    for start in (0, 200):
        chunk = test_set[0][start : start + batch]
        probabilities = session.run({"pixels": chunk})["probabilities"]
        np.testing.assert_allclose(
            probabilities, reference[start : start + batch], atol=1e-5, rtol=1e-4
        )


def test_opencl_agrees_one_digit_at_a_time(
    test_set: tuple[np.ndarray, np.ndarray], reference: np.ndarray
) -> None:
    """Batch 1 takes a different plan (the pixel scale folded into the first Gemm, products
    reading activations unpacked, the softmax done by the last product): three launches,
    same predictions."""
    from meshgpu.inference.opencl import OpenCLSession

    session = OpenCLSession(onnx.load(str(SHIPPED_MODELS["digits"])))
    pixels = test_set[0]
    plan = session._plan({"pixels": (1, 64)})
    assert [launch.kernel_name for launch in plan.launches] == ["gemm_rows"] * 3
    for index in range(0, len(pixels), 15):
        got = session.run({"pixels": pixels[index : index + 1]})["probabilities"]
        assert got.argmax() == reference[index].argmax()
        assert np.allclose(got, reference[index : index + 1], atol=1e-5)
