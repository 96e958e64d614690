"""What ``meshgpu submit`` checks on this machine before anything is sent to the mesh.

A mistake found here costs nothing and is reported once, naming the user's file. Found
by the mesh, the same mistake costs a model upload and one failed task per input file,
each failing with the same message (200 files, 200 lines), and a corrupt model's
message names the daemon's cache path instead of the file the user gave. A ``.npy``
file that cannot be read used to surface as a traceback from inside the client's
submission loop, after part of the submission had been sent.

Checked: the model parses as ONNX, passes the engine's structural check (the ONNX
checker, strict shape inference: ``meshgpu.inference.model.check_model``, on the graph
without its weights) and keeps no weights in external data files (only the
``.onnx`` file is sent); every ``--input`` name is one of the model's inputs and every
input without a default (an initializer) is given; every ``.npy`` file has a
readable header and holds the bytes its header promises; the output directory can be
created. Files are memory-mapped, so
checking 200 large files reads 200 headers, not their contents.

Checked too: each file's dtype and shape (from its header) against the model's inputs,
by the engine's own check (``meshgpu.inference.model.check_feed_headers``, the same code
and messages as ``validate_feeds``, symbolic dimensions included): a float64 file
for a float32 input is one error naming the file, not one failed task per file.
Rejected: loading every array up front (the client streams inputs so that a directory
larger than memory can be submitted).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshgpu.errors import ConfigError, InputError, ModelError

if TYPE_CHECKING:  # importing the client loads trio and numpy: not for `meshgpu --help`
    from meshgpu.client.inputs import TaskInputs
    from meshgpu.client.models import ModelBlob


@dataclass(frozen=True)
class ModelInputs:
    """A model's graph inputs: all of them, and those that must be fed (no initializer)."""

    names: tuple[str, ...]
    required: tuple[str, ...]
    spec: Any = None
    """The required inputs' shapes and dtypes (``meshgpu.inference.model.InputSpec``);
    None where the model has inputs meshgpu cannot feed (the mesh says so)."""


def model_inputs(blob: ModelBlob) -> ModelInputs:
    """The inputs of ``blob``; a ModelError naming the model if it is not valid ONNX."""
    import onnx

    try:
        proto = onnx.load_model_from_string(blob.data)
    except Exception as error:  # protobuf's DecodeError and onnx's own: all mean "not ONNX"
        raise ModelError(
            f"model {blob.name} is not a valid ONNX file ({error}); export it again "
            "(torch.onnx.export, tf2onnx) or check that the download is complete"
        ) from None
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer):
        # Only the .onnx file is sent: the weights beside it would be missing on every
        # worker, each failing the task with its own cache path instead of this file's name.
        raise ModelError(
            f"model {blob.name} keeps weights in external data files, which are not sent "
            "to the mesh; embed them first: onnx.save_model(onnx.load(PATH), NEW_PATH) "
            "(up to 2 GB)"
        )
    from meshgpu.inference.model import check_model, graph_inputs, skeleton

    # The engine's check (the weights left out): failed by the mesh, it named the
    # daemon's cache path of the model, not the user's file.
    check_model(skeleton(proto), blob.name)
    constants = {init.name for init in proto.graph.initializer}
    names = tuple(value.name for value in proto.graph.input)
    try:
        spec = graph_inputs(proto)
    except ModelError:
        spec = None
    return ModelInputs(names, tuple(name for name in names if name not in constants), spec)


def check_input_names(model: ModelInputs, given: Iterable[str], model_name: str) -> None:
    """Refuse (InputError) ``--input`` names the model does not have, and required
    inputs left out."""
    from meshgpu.inference.model import defaulted_input_message

    given = list(given)
    known = ", ".join(model.names) or "none"
    defaulted = [name for name in given if name in model.names and name not in model.required]
    if defaulted:
        raise InputError(f"model {model_name}: {defaulted_input_message(defaulted)}")
    unknown = [name for name in given if name not in model.names]
    if unknown:
        raise InputError(
            f"model {model_name} has no input named {', '.join(map(repr, unknown))}; "
            f"its inputs are: {known}"
        )
    missing = [name for name in model.required if name not in given]
    if missing:
        raise InputError(
            f"model {model_name} needs input(s) {', '.join(map(repr, missing))} too: "
            f"add --input NAME=PATH for each (its inputs are: {known})"
        )


def check_npy_files(tasks: Iterable[TaskInputs], model: ModelInputs | None = None) -> None:
    """Every file of every task gives its input a numeric array
    (:func:`meshgpu.client.inputs.check_input_file`: headers only), of the dtype and
    shape ``model`` declares for it (the engine's own check, on the headers: an
    InputError naming the task's files)."""
    from meshgpu.client.inputs import check_input_file
    from meshgpu.inference.model import check_feed_headers

    headers: dict[tuple[Path, str], Any] = {}
    for task in tasks:
        for name, path in task.paths.items():
            if (path, name) not in headers:
                shape, dtype = check_input_file(path, name)
                # The elements are sent little-endian whatever the file's order
                # (tensor_types.tensor_bytes): a ">f4" file feeds a float32 input.
                headers[path, name] = (shape, dtype.newbyteorder("<"))
        if model is None or model.spec is None:
            continue
        try:
            check_feed_headers(
                model.spec, {name: headers[path, name] for name, path in task.paths.items()}
            )
        except InputError as error:
            files = ", ".join(str(path) for path in task.paths.values())
            raise InputError(f"{files}: {error}") from None


def prepare_output_dir(path: Path) -> None:
    """Create the outputs' directory now: unwritable, it must stop the command before
    any task is sent (results that cannot be saved are collected from the mesh anyway,
    and then lost)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"cannot create the output directory {path}: {error.strerror}; pick another "
            "with --output"
        ) from None


def check_task_sizes(tasks: Iterable[TaskInputs], max_task_bytes: int) -> None:
    """A ConfigError naming the first task whose input files hold more array bytes than
    ``max_task_bytes``, with both sizes: before any task is sent, not after the first
    were (the client checks each task again as it sends it). Reads array headers only."""
    from meshgpu.client.batches import MAX_TASK_BYTES_ENV

    for task in tasks:
        size = sum(_array_bytes(path, name) for name, path in task.paths.items())
        if size > max_task_bytes:
            raise ConfigError(
                f"{task.stem}: the task's inputs are {size:,} bytes, more than max_task_bytes "
                f"({max_task_bytes:,}); raise the limit (--max-task-bytes or "
                f"{MAX_TASK_BYTES_ENV}) or split the inputs into several tasks"
            )


def _array_bytes(path: Path, name: str) -> int:
    """The data bytes of the array a ``.npy`` (or an ``.npz``'s member for ``name``: the
    array of that name, else the only one) holds, by its header; 0 when unreadable (the
    file checks name that)."""
    import math
    import zipfile

    import numpy as np

    def from_header(handle: Any) -> int:
        version = np.lib.format.read_magic(handle)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read(handle)
        return math.prod(shape) * dtype.itemsize

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                arrays = [m for m in archive.namelist() if m.endswith(".npy")]
                member = f"{name}.npy" if f"{name}.npy" in arrays else arrays[0]
                with archive.open(member) as handle:
                    return from_header(handle)
        with open(path, "rb") as handle:
            return from_header(handle)
    except (OSError, ValueError, EOFError, IndexError, zipfile.BadZipFile):
        return 0
