"""Loading an ONNX model and checking feeds against it, before any device sees either.

Everything here is backend-neutral and touches no device: a model is read, decoded,
checked (``onnx.checker`` plus strict shape inference) and digested (sha256 of its bytes,
the content address the mesh uses to fetch and cache models); feeds are checked against the
model's declared inputs. Both happen before a session is built or run, so a bad model or a
bad feed is a clear :class:`ModelError` or :class:`InputError` naming the culprit, never an
OpenCL or onnxruntime failure halfway through.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import onnx
from google.protobuf.message import DecodeError as ProtobufDecodeError  # type: ignore[import-untyped]

from meshgpu.errors import InputError, ModelError

# A dimension is a fixed size (int), a named symbolic size shared between inputs (str), or
# unknown (None): any size is accepted and it is not tied to other dimensions.
Dim = int | str | None
Shape = tuple[Dim, ...]
InputSpec = dict[str, tuple[Shape, np.dtype[Any]]]

SHIPPED_MODELS_DIR = Path(__file__).resolve().parent / "models"
SHIPPED_MODELS = {"digits": SHIPPED_MODELS_DIR / "digits.onnx"}


@dataclass(frozen=True)
class LoadedModel:
    """A decoded, checked model and its identity.

    ``digest`` is the hex sha256 of the serialized bytes as given (the file's bytes for a
    path), so the same file has the same digest on every machine.
    """

    proto: onnx.ModelProto
    digest: str
    size_bytes: int
    source: str  # the path, "<bytes>" or "<ModelProto>", for error messages

    @property
    def inputs(self) -> InputSpec:
        """The feeds the model needs (graph inputs that are not initializers)."""
        return graph_inputs(self.proto)

    @property
    def outputs(self) -> list[str]:
        """The names of the model's outputs, in graph order."""
        return [output.name for output in self.proto.graph.output]

    @property
    def defaulted_inputs(self) -> frozenset[str]:
        """Graph inputs that are initializers too (:func:`defaulted_inputs`)."""
        return defaulted_inputs(self.proto)


def _describe_source(model: object) -> str:
    if isinstance(model, str | os.PathLike):
        return os.fspath(model)
    if isinstance(model, bytes | bytearray | memoryview):
        return "<bytes>"
    return "<ModelProto>"


def resolve_model_path(model: str | os.PathLike[str]) -> Path:
    """A path to a model file; the bare word ``digits`` names the shipped classifier."""
    text = os.fspath(model)
    if text in SHIPPED_MODELS and not Path(text).exists():
        return SHIPPED_MODELS[text]
    return Path(text)


def load_model(model: str | os.PathLike[str] | bytes | onnx.ModelProto) -> LoadedModel:
    """Read, decode and check a model given as a path, raw bytes or a ``ModelProto``.

    Raises :class:`ModelError` saying what is wrong (missing file, not protobuf, truncated,
    fails the ONNX checker, inconsistent types) and which model it was.
    """
    source = _describe_source(model)
    if isinstance(model, onnx.ModelProto):
        proto = model
        data = model.SerializeToString(deterministic=True)
    else:
        if isinstance(model, bytes | bytearray | memoryview):
            data = bytes(model)
        elif isinstance(model, str | os.PathLike):
            path = resolve_model_path(model)
            source = os.fspath(path)
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                hint = ""
                if os.sep not in source and "." not in source:  # a bare word: a name?
                    hint = (
                        f"; shipped models: {', '.join(sorted(SHIPPED_MODELS))}; a catalog "
                        "name (`meshgpu models list`) is run over HTTP, POST "
                        "/v2/models/NAME/infer, and here by its .onnx file"
                    )
                raise ModelError(f"model file {source} does not exist{hint}") from None
            except OSError as error:
                raise ModelError(f"cannot read model file {source}: {error}") from error
        else:
            raise ModelError(
                f"a model is a path, bytes or onnx.ModelProto, not {type(model).__name__}"
            )
        if not data:
            raise ModelError(f"model {source} is empty (0 bytes)")
        proto = onnx.ModelProto()
        try:
            proto.ParseFromString(data)
        except (ProtobufDecodeError, RuntimeError, ValueError) as error:
            raise ModelError(
                f"model {source} is not a valid ONNX file (corrupt or truncated: {error}); "
                "re-download or re-export it"
            ) from error
    check_model(skeleton(proto), source)
    return LoadedModel(
        proto=proto,
        digest=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        source=source,
    )


_SKELETON_MIN_ELEMENTS = 1024
_FLOATING = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
}


def skeleton(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with its large weights reduced to their dims: what checks need, cheaply.

    The ONNX checker and shape inference read a weight's type and dims, not its values
    (except small integer tensors such as Reshape targets, which are kept whole). Running them
    on the full model would serialize every weight several times: half a minute for VGG-19's
    575 MB. Each large floating-point weight becomes a graph input of the same type and
    shape instead (the checker would reject a tensor whose data is missing).
    """
    light = onnx.ModelProto()
    light.ir_version = proto.ir_version
    light.opset_import.extend(proto.opset_import)
    light.functions.extend(proto.functions)
    graph = light.graph
    graph.name = proto.graph.name
    graph.node.extend(proto.graph.node)
    graph.input.extend(proto.graph.input)
    graph.output.extend(proto.graph.output)
    graph.value_info.extend(proto.graph.value_info)
    graph.sparse_initializer.extend(proto.graph.sparse_initializer)
    declared = {value.name for value in proto.graph.input}
    for tensor in proto.graph.initializer:
        count = math.prod(tensor.dims)
        # A weight in an external data file stays, so that check_model refuses it by
        # name: made an input, it slipped through and the run failed on whether the
        # current directory held the data file.
        external = tensor.data_location == onnx.TensorProto.EXTERNAL
        if tensor.data_type in _FLOATING and count >= _SKELETON_MIN_ELEMENTS and not external:
            if tensor.name not in declared:
                graph.input.append(
                    onnx.helper.make_tensor_value_info(
                        tensor.name, tensor.data_type, list(tensor.dims)
                    )
                )
        else:
            graph.initializer.append(tensor)
    return light


def check_model(proto: onnx.ModelProto, source: str) -> None:
    """Raise :class:`ModelError` unless ``proto`` is a structurally sound ONNX model.

    A file cut at a protobuf field boundary decodes without error into a model with missing
    pieces; the checker, strict shape inference and the check that every output is produced
    catch those.
    """
    if not proto.HasField("graph") or not proto.graph.node:
        raise ModelError(f"model {source} has no graph (empty, truncated or not ONNX)")
    if any(tensor.data_location == onnx.TensorProto.EXTERNAL for tensor in proto.graph.initializer):
        raise ModelError(
            f"model {source} keeps weights in external data files; "
            "embed them (onnx.save_model(..., save_as_external_data=False)) first"
        )
    produced = {name for node in proto.graph.node for name in node.output}
    produced |= {value.name for value in proto.graph.input}
    produced |= {tensor.name for tensor in proto.graph.initializer}
    missing = [output.name for output in proto.graph.output if output.name not in produced]
    if missing:
        raise ModelError(
            f"model {source} declares outputs {missing} that no node produces "
            "(the file is probably truncated)"
        )
    proto = _without_untyped_outputs(proto)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "invalid"
        raise ModelError(f"model {source} fails the ONNX checker: {first_line}") from error
    try:
        onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    except (onnx.shape_inference.InferenceError, RuntimeError) as error:
        raise ModelError(f"model {source} has inconsistent types or shapes: {error}") from error


def untyped_output(value: onnx.ValueInfoProto) -> bool:
    """True for a graph output declared without a type, or a tensor one without an element
    type or a shape: the ONNX checker requires both, onnxruntime infers them, and many
    exporters leave them out for outputs whose shape depends on the data."""
    kind = value.type.WhichOneof("value")
    if kind is None:
        return True
    tensor = value.type.tensor_type
    return kind == "tensor_type" and (not tensor.elem_type or not tensor.HasField("shape"))


def _without_untyped_outputs(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` (a copy, when needed) without its :func:`untyped_output` outputs,
    for the checker and strict shape inference, which still check the nodes producing them;
    :func:`check_model` has checked that some node produces each one."""
    if not any(untyped_output(value) for value in proto.graph.output):
        return proto
    light = onnx.ModelProto()
    light.CopyFrom(proto)
    typed = [value for value in proto.graph.output if not untyped_output(value)]
    del light.graph.output[:]
    light.graph.output.extend(typed)
    return light


def _dims(value: onnx.ValueInfoProto) -> Shape:
    dims: list[Dim] = []
    for dim in value.type.tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def graph_inputs(proto: onnx.ModelProto) -> InputSpec:
    """Name -> (shape, numpy dtype) of each graph input that is not an initializer.

    Models exported before IR version 4 list their weights among the inputs too; those have
    a value already and are not feeds.
    """
    initialized = {tensor.name for tensor in proto.graph.initializer}
    spec: InputSpec = {}
    for value in proto.graph.input:
        if value.name in initialized:
            continue
        if not value.type.HasField("tensor_type"):
            raise ModelError(f"input {value.name!r} is not a tensor; only tensor inputs are run")
        elem_type = value.type.tensor_type.elem_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
        spec[value.name] = (_dims(value), dtype)
    return spec


def defaulted_inputs(proto: onnx.ModelProto) -> frozenset[str]:
    """Graph inputs that are initializers too: inputs with a default value in ONNX (IR 4
    on; before IR 4 every weight was listed so), which onnxruntime lets a feed override
    and meshgpu runs as fixed weights (:func:`defaulted_input_message`)."""
    initialized = {tensor.name for tensor in proto.graph.initializer}
    return frozenset(value.name for value in proto.graph.input if value.name in initialized)


def defaulted_input_message(names: Collection[str]) -> str:
    """Why a feed for an input with a default value (:func:`defaulted_inputs`) is
    refused: it was "unknown input", which named a graph input the model has."""
    listed = ", ".join(repr(name) for name in sorted(names))
    return (
        f"input(s) {listed} have a default value in this model (an initializer that is "
        "also a graph input); meshgpu runs initializers as the model's fixed weights and "
        "takes no feed for them: leave them out to run with the defaults, or export the "
        "model with them as plain inputs (no initializer) to feed them"
    )


def format_shape(shape: Shape) -> str:
    """``[N, 64]`` style, with ``?`` for an unknown dimension."""
    return "[" + ", ".join("?" if dim is None else str(dim) for dim in shape) + "]"


class _Lazy:
    """A message part formatted when it is put into a message, not before."""

    __slots__ = ("_make",)

    def __init__(self, make: Any) -> None:
        self._make = make

    def __format__(self, spec: str) -> str:
        return format(self._make(), spec)


def validate_feeds(
    spec: InputSpec, feeds: Mapping[str, Any], defaulted: Collection[str] = ()
) -> dict[str, np.ndarray]:
    """Check ``feeds`` against the model's inputs; return them as contiguous arrays.

    Every input must be fed, with a numpy array of exactly the declared dtype (no silent
    casts: a float64 array fed to a float32 model is a mistake worth hearing about), the
    declared rank, the fixed sizes, and the same size for a symbolic dimension wherever it
    appears. Unknown feed names are errors too, feeds for the ``defaulted`` inputs
    (:func:`defaulted_inputs`) with their own message. Raises :class:`InputError` naming
    the input with the expected and the received shape or dtype.
    """
    if not isinstance(feeds, Mapping):
        raise InputError(f"feeds must be a dict of input name -> numpy array, not {type(feeds)}")
    _check_names(spec, feeds, defaulted)
    symbols: dict[str, tuple[int, str]] = {}
    checked: dict[str, np.ndarray] = {}
    for name, (shape, dtype) in spec.items():
        array = feeds[name] if name in feeds else _missing(name, shape, dtype, feeds)
        if not isinstance(array, np.ndarray):
            raise InputError(
                f"input {name!r}: expected a numpy array ({dtype} {format_shape(shape)}), got "
                f"{type(array).__name__}; convert with numpy.asarray(value, dtype='{dtype}')"
            )
        _check_feed(name, shape, dtype, array.shape, array.dtype, symbols)
        # Not np.ascontiguousarray: it turns a rank-0 array into shape (1,).
        checked[name] = np.asarray(array, order="C")
    return checked


def check_feed_headers(
    spec: InputSpec,
    headers: Mapping[str, tuple[tuple[int, ...], np.dtype[Any]]],
    defaulted: Collection[str] = (),
) -> None:
    """:func:`validate_feeds` for feeds known by their shape and dtype alone (``.npy``
    headers: ``meshgpu submit`` checks its files before it sends them), with the same
    messages."""
    _check_names(spec, headers, defaulted)
    symbols: dict[str, tuple[int, str]] = {}
    for name, (shape, dtype) in spec.items():
        got_shape, got_dtype = (
            headers[name] if name in headers else _missing(name, shape, dtype, headers)
        )
        _check_feed(name, shape, dtype, got_shape, got_dtype, symbols)


def _check_names(spec: InputSpec, feeds: Mapping[str, Any], defaulted: Collection[str]) -> None:
    unknown = sorted(set(feeds) - set(spec))
    if overriding := [name for name in unknown if name in defaulted]:
        raise InputError(defaulted_input_message(overriding))
    if unknown:
        raise InputError(f"unknown input(s) {unknown}; the model's inputs are {sorted(spec)}")


def _missing(name: str, shape: Shape, dtype: np.dtype[Any], feeds: Mapping[str, Any]) -> NoReturn:
    raise InputError(
        f"missing input {name!r}: expected {dtype} {format_shape(shape)}; got feeds "
        f"for {sorted(feeds)}"
    )


def _check_feed(
    name: str,
    shape: Shape,
    dtype: np.dtype[Any],
    got_shape: tuple[int, ...],
    got_dtype: np.dtype[Any],
    symbols: dict[str, tuple[int, str]],
) -> None:
    """One feed's dtype, rank and sizes against its input's (``symbols``: the sizes of
    the symbolic dimensions met so far, and the input that set each)."""
    # The messages are built only on the way out: this runs for every run.
    expected = _Lazy(lambda: f"{dtype} {format_shape(shape)}")
    got = _Lazy(lambda: f"{got_dtype} {list(got_shape)}")
    if got_dtype != dtype:
        raise InputError(
            f"input {name!r} has dtype {got_dtype}, expected {dtype} "
            f"(expected {expected}, got {got}); cast it with .astype('{dtype}')"
        )
    if len(got_shape) != len(shape):
        raise InputError(
            f"input {name!r} has rank {len(got_shape)}, expected {len(shape)} "
            f"(expected {expected}, got {got})"
        )
    for axis, (want, size) in enumerate(zip(shape, got_shape, strict=True)):
        if isinstance(want, int) and want != size:
            raise InputError(
                f"input {name!r} has size {size} on axis {axis}, expected {want} "
                f"(expected {expected}, got {got})"
            )
        if isinstance(want, str):
            bound = symbols.setdefault(want, (size, name))
            if bound[0] != size:
                raise InputError(
                    f"input {name!r} has {want}={size} on axis {axis}, but input "
                    f"{bound[1]!r} has {want}={bound[0]}; a symbolic dimension must "
                    f"agree across inputs (expected {expected}, got {got})"
                )


def initializer_bytes(proto: onnx.ModelProto) -> int:
    """Bytes of every weight, including those a ConstantOfShape or Constant node makes."""
    total = 0
    for tensor in proto.graph.initializer:
        total += _tensor_bytes(tensor)
    for node in proto.graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    total += _tensor_bytes(attribute.t)
    return total


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    count = math.prod(tensor.dims)
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    return int(count * itemsize)


def largest_tensor(
    proto: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]] | None = None
) -> tuple[str, int]:
    """(name, bytes) of the largest tensor shape inference can size, given input shapes.

    Symbolic input dimensions without a given shape count as 1, so the estimate is a lower
    bound: every execution plan needs at least this much memory at once.
    """
    model = skeleton(proto)
    fixed = dict(input_shapes or {})
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        given = fixed.get(value.name)
        for axis, dim in enumerate(dims):
            if given is not None and axis < len(given):
                dim.dim_value = int(given[axis])
            elif not dim.HasField("dim_value"):
                dim.dim_value = 1
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except (onnx.shape_inference.InferenceError, RuntimeError):
        return ("", 0)
    best = ("", 0)
    graph = inferred.graph
    weights = {tensor.name for tensor in proto.graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if value.name in weights:
            continue  # counted by initializer_bytes
        tensor_type = value.type.tensor_type
        dims = tensor_type.shape.dim
        if not dims or not all(dim.HasField("dim_value") for dim in dims):
            continue
        try:
            itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        except (KeyError, TypeError, ValueError):
            continue
        size = math.prod(dim.dim_value for dim in dims) * itemsize.itemsize
        if size > best[1]:
            best = (value.name, size)
    return best
