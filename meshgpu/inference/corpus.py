"""The corpus of modern architectures (``tests/data/corpus/``), made runnable with seeded weights.

``tests/data/export_corpus.py`` exports each model with torch's exporter and strips its
weights the way the ``onnx`` package strips its light models: every weight becomes a
``ConstantOfShape`` node whose fill value is the weight's mean. Two metadata entries written by
the export say the rest:

- ``meshgpu.seeded_fill``: {weight: standard deviation}, or a list of deviations, one per
  row (output channel): the exporter folds BatchNormalization into the convolutions, which
  scales each output channel on its own. :func:`seeded_corpus_model` turns each placeholder
  into an initializer drawn uniformly with that mean (the placeholder's fill value) and
  deviation from a seeded generator. The export script sets the torch module's weights to
  exactly this draw (seed 0) before it recalibrates BatchNormalization and exports, so seed 0
  gives back the very model that was exported, with activations of a sane scale; other
  seeds give a model of the same statistics. Vectors (biases, norm scales) stay in the file;
- ``meshgpu.feeds``: {input: {"shape", "dtype", "fill"}}: :func:`corpus_feeds` makes token ids
  below the vocabulary size, attention masks with padding at the end of some rows, or
  standard-normal images, for any batch size (the batch is the one dynamic dimension).

Unlike :mod:`meshgpu.inference.architectures`, which has to guess each weight's role from its
consumer, the statistics here come from the exporter's side, where the weights were known.
The conformance tests and ``bench/inference.py`` share this module so both measure the same
models. The corpus lives in a source checkout only (it is test data, not shipped).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

#: Where a source checkout keeps the corpus.
CORPUS_FOLDER = Path(__file__).resolve().parents[2] / "tests" / "data" / "corpus"

#: The corpus, in the order the tests and the benchmark report it.
CORPUS_MODELS = (
    "bert",
    "gpt2",
    "vit",
    "convnext",
    "mobilenet_v3",
    "efficientnet",
    "lraspp",
    "unet",
    "yolov8n",
)


def corpus_path(name: str, folder: Path | None = None) -> Path:
    """The file of corpus model ``name``; a clear error outside a source checkout."""
    if name not in CORPUS_MODELS:
        raise ValueError(f"unknown corpus model {name!r}; choose one of {CORPUS_MODELS}")
    path = (folder or CORPUS_FOLDER) / f"{name}.onnx"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the corpus lives in meshgpu's source tree (tests/data/corpus); "
            "regenerate it with tests/data/export_corpus.py"
        )
    return path


def metadata(model: onnx.ModelProto, key: str) -> Any:
    """The JSON value of metadata entry ``key``, or None."""
    for entry in model.metadata_props:
        if entry.key == key:
            return json.loads(entry.value)
    return None


def materialize_placeholders(
    model: onnx.ModelProto, fill: dict[str, np.ndarray]
) -> onnx.ModelProto:
    """``model`` with each ConstantOfShape placeholder named in ``fill`` made an initializer.

    The placeholder's shape initializer goes too when nothing else reads it. Works in place
    on ``model`` and returns it.
    """
    graph = model.graph
    kept = [
        node
        for node in graph.node
        if not (node.op_type == "ConstantOfShape" and node.output[0] in fill)
    ]
    removed_shapes = {
        node.input[0]
        for node in graph.node
        if node.op_type == "ConstantOfShape" and node.output[0] in fill
    }
    still_read = {name for node in kept for name in node.input}
    initializers = [
        t for t in graph.initializer if t.name not in removed_shapes or t.name in still_read
    ]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    for name, value in fill.items():
        tensor = graph.initializer.add()
        tensor.name = name
        tensor.data_type = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
        tensor.dims.extend(value.shape)
        tensor.raw_data = np.ascontiguousarray(value).tobytes()
    return model


def _placeholders(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...], float]]:
    """{placeholder output: (shape, fill value)} for every ConstantOfShape of a constant shape."""
    constants = {t.name: t for t in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in constants:
            continue
        shape = tuple(int(d) for d in numpy_helper.to_array(constants[node.input[0]]))
        value = 0.0
        for attribute in node.attribute:
            if attribute.name == "value":
                value = float(numpy_helper.to_array(attribute.t).reshape(-1)[0])
        found[node.output[0]] = (shape, value)
    return found


def seeded_corpus_model(model: onnx.ModelProto | str | Path, seed: int = 0) -> onnx.ModelProto:
    """A corpus model with seeded random weights in place of its placeholders.

    Each weight named in ``meshgpu.seeded_fill`` is drawn uniformly with the recorded mean
    (the placeholder's fill value) and standard deviation; a deviation of 0 gives the constant.
    The same ``seed`` gives byte-identical weights.
    """
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    spreads = metadata(model, "meshgpu.seeded_fill")
    if spreads is None:
        raise ValueError("the model has no meshgpu.seeded_fill metadata: not a corpus export")
    rng = np.random.default_rng(seed)
    placeholders = _placeholders(model)
    fill: dict[str, np.ndarray] = {}
    for name in sorted(spreads):  # sorted: the draw order must not follow the graph's order
        if name not in placeholders:
            raise ValueError(f"meshgpu.seeded_fill names {name!r}, which no placeholder makes")
        shape, mean = placeholders[name]
        spread = spreads[name]
        deviations: np.ndarray | np.float32
        if isinstance(spread, list):  # one deviation per row (output channel)
            deviations = np.asarray(spread, np.float32).reshape(
                (len(spread),) + (1,) * (len(shape) - 1)
            )
        else:
            deviations = np.float32(spread)
        half_width = deviations * np.float32(np.sqrt(3.0))
        weight = rng.random(shape, dtype=np.float32)
        weight *= 2 * half_width
        weight += np.float32(mean) - half_width
        fill[name] = weight.astype(np.float32, copy=False)
    return materialize_placeholders(model, fill)


def corpus_feeds(
    model: onnx.ModelProto, batch: int = 1, seed: int = 1, sequence: int = 16
) -> dict[str, np.ndarray]:
    """Seeded inputs for ``batch`` rows, as ``meshgpu.feeds`` describes them (any other
    symbolic dimension, e.g. a sequence length, gets ``sequence``).

    Token ids are uniform below the vocabulary size; an attention mask keeps the first
    ``length`` tokens of each row, the first row padded by a quarter of the sequence so even
    batch 1 exercises the mask, later rows between half and all of it.
    """
    specs = metadata(model, "meshgpu.feeds")
    if specs is None:
        raise ValueError("the model has no meshgpu.feeds metadata: not a corpus export")
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for name, spec in specs.items():
        shape = tuple(
            batch if dim == "batch" else sequence if isinstance(dim, str) else int(dim)
            for dim in spec["shape"]
        )
        kind = spec["fill"]
        if kind == "tokens":
            feeds[name] = rng.integers(0, spec["high"], shape, dtype=np.int64)
        elif kind == "mask":
            length = shape[-1]
            lengths = rng.integers(length // 2, length + 1, shape[0])
            lengths[0] = length - max(1, length // 4)
            feeds[name] = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
        elif kind == "normal":
            feeds[name] = rng.standard_normal(shape, dtype=np.float32)
        else:
            raise ValueError(f"input {name!r}: unknown fill {kind!r}")
    return feeds


def load_corpus_model(name: str, seed: int = 0, folder: Path | None = None) -> onnx.ModelProto:
    """Corpus model ``name`` with seeded weights, ready for ``inference.load``."""
    return seeded_corpus_model(corpus_path(name, folder), seed=seed)
