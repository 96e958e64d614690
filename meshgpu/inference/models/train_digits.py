"""Train the shipped digits classifier and export it to ONNX.

Run it with the ``train`` extra installed (scikit-learn provides the data and the trainer):

    python -m meshgpu.inference.models.train_digits

It writes, next to this file:

- ``digits.onnx``: an MLP, ``pixels`` float32 [N, 64] (raw 8x8 intensities 0..16, as
  ``sklearn.datasets.load_digits`` gives them) -> ``probabilities`` float32 [N, 10];
- ``digits_test.npz``: the held-out test set (``pixels``, ``labels``) so that nothing needs
  scikit-learn at runtime.

Why an MLP built by hand with ``onnx.helper`` and not skl2onnx: the graph is four operators
(Mul, Gemm, Relu, Gemm, Softmax) and writing them out keeps the export readable and free of
another dependency. Every random choice is seeded, so a rerun gives the same model bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 0
TEST_FRACTION = 0.25
HIDDEN_UNITS = (64, 32)
PIXEL_SCALE = 1.0 / 16.0  # load_digits intensities run 0..16
HERE = Path(__file__).resolve().parent


def export_mlp(
    weights: list[np.ndarray], biases: list[np.ndarray], opset: int = 13
) -> onnx.ModelProto:
    """Build the ONNX graph of a ReLU MLP whose last layer feeds a softmax.

    ``weights[i]`` has shape [in, out] (scikit-learn's ``coefs_`` layout), so each Gemm uses
    it untransposed. The input scaling is an explicit Mul so the model takes raw pixels.
    """
    initializers = [numpy_helper.from_array(np.array([PIXEL_SCALE], np.float32), "pixel_scale")]
    nodes = [helper.make_node("Mul", ["pixels", "pixel_scale"], ["scaled"], name="scale")]
    current = "scaled"
    for index, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
        weight_name, bias_name = f"dense{index}_weight", f"dense{index}_bias"
        initializers.append(numpy_helper.from_array(weight.astype(np.float32), weight_name))
        initializers.append(numpy_helper.from_array(bias.astype(np.float32), bias_name))
        output = f"dense{index}"
        nodes.append(
            helper.make_node("Gemm", [current, weight_name, bias_name], [output], name=output)
        )
        current = output
        if index < len(weights) - 1:
            activated = f"relu{index}"
            nodes.append(helper.make_node("Relu", [current], [activated], name=activated))
            current = activated
    nodes.append(helper.make_node("Softmax", [current], ["probabilities"], axis=-1, name="softmax"))
    graph = helper.make_graph(
        nodes,
        "digits_mlp",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="meshgpu.train_digits",
        doc_string="8x8 handwritten digit classifier (scikit-learn load_digits), MLP 64-64-32-10",
    )
    model.ir_version = 8  # readable by every onnxruntime the project supports (>= 1.17)
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    """Train, report the test accuracy, and write the model and the test set."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    digits = load_digits()
    pixels = digits.data.astype(np.float32)
    labels = digits.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        pixels, labels, test_size=TEST_FRACTION, random_state=SEED, stratify=labels
    )
    classifier = MLPClassifier(
        hidden_layer_sizes=HIDDEN_UNITS, max_iter=600, random_state=SEED, alpha=1e-3
    )
    classifier.fit(train_x * PIXEL_SCALE, train_y)
    model = export_mlp(list(classifier.coefs_), list(classifier.intercepts_))

    import onnxruntime

    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    (probabilities,) = session.run(None, {"pixels": test_x})
    predicted = probabilities.argmax(axis=1)
    sklearn_predicted = classifier.predict(test_x * PIXEL_SCALE)
    if not np.array_equal(predicted, sklearn_predicted):
        raise SystemExit("the exported model disagrees with scikit-learn; export is wrong")
    accuracy = float((predicted == test_y).mean())

    (HERE / "digits.onnx").write_bytes(model.SerializeToString())
    np.savez_compressed(HERE / "digits_test.npz", pixels=test_x, labels=test_y)
    print(
        f"digits MLP {HIDDEN_UNITS}: {len(train_y)} training, {len(test_y)} test samples, "
        f"test accuracy {accuracy:.4f}; wrote {HERE / 'digits.onnx'} "
        f"({(HERE / 'digits.onnx').stat().st_size} bytes)"
    )


if __name__ == "__main__":
    main()
