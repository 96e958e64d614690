"""``--input NAME=PATH`` arguments of ``meshgpu submit`` as a list of tasks.

Each PATH is a ``.npy`` or ``.npz`` file, a directory (its ``*.npy`` and ``*.npz``
files) or a glob. Every file is one task, named by its stem; the outputs go to
``<output dir>/<stem>.npz``. With several
inputs, tasks are matched by stem (``--input a=left/ --input b=right/`` pairs
``left/7.npy`` with ``right/7.npy``), and an input given as one file is shared by every
task. Anything ambiguous is an error that says what to fix, before anything is sent:
a stem present for one input and not another, two files with one stem (their outputs
would overwrite each other), a pattern that matches nothing.

Files are checked and read here (:func:`check_input_file`, :func:`load_input`), by what
their first bytes say, not by their suffix:

* a ``.npy`` file is the array;
* an ``.npz`` archive (what ``meshgpu submit`` writes, ``numpy.savez``) gives the array
  named like the input, else its only array; one with several arrays and none of that
  name is refused with their names (an archive's own names are what ``--input`` should
  say, so outputs can feed the next model unchanged);
* a text file (CSV, TSV, a list of numbers) is refused with the one-line ``numpy`` call
  that turns it into a ``.npy``;
* an array of strings, objects or anything else non-numeric is refused with its dtype,
  before anything is sent (a file of strings needs pickles or a fixed width; string
  tensors go through ``submit``'s arrays instead).

Nothing is ever unpickled: numpy's advice to pass ``allow_pickle=True`` (for a file that
is not an array at all) is never shown. Rejected: trusting the suffix (a CSV renamed
``.npy`` got numpy's pickle message), and reading the whole file to check it (the check
reads headers, so 200 large files cost 200 headers).
"""

from __future__ import annotations

import glob
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from meshgpu.errors import ConfigError

if TYPE_CHECKING:  # numpy is imported where arrays are read (``meshgpu --help`` stays fast)
    import numpy as np

ARRAY_SUFFIXES = (".npy", ".npz")
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
NUMERIC_KINDS = "biufc"
"""numpy dtype kinds the mesh can run: bool, signed and unsigned ints, floats, complex."""


@dataclass(frozen=True)
class TaskInputs:
    """One task of a submission: its name (output stem) and a file per model input."""

    stem: str
    paths: Mapping[str, Path] = field(hash=False)


def parse_input_spec(text: str, default_name: str | None = None) -> tuple[str, str]:
    """``NAME=PATH`` as (name, path); a bare ``PATH`` takes ``default_name`` (the model's
    only input) when there is one."""
    name, separator, path = text.partition("=")
    if separator and name and path and not Path(text).exists():
        return name, path
    if default_name is not None:
        return default_name, text
    raise ConfigError(
        f"--input {text!r}: write NAME=PATH (the model input's name, then a .npy file, "
        "a directory of them or a glob)"
    )


def expand_path(pattern: str) -> list[Path]:
    """The array files a PATH names: the file, a directory's ``.npy`` and ``.npz``
    files, or a glob's."""
    path = Path(pattern).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in ARRAY_SUFFIXES and p.is_file())
        if not files:
            raise ConfigError(f"directory {pattern} has no .npy or .npz files")
        return files
    if path.is_file():
        return [path]
    matches = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
    files = [p for p in matches if p.suffix in ARRAY_SUFFIXES]
    if not files:
        detail = f" ({len(matches)} files, none .npy or .npz)" if matches else ""
        raise ConfigError(f"--input {pattern}: no such .npy/.npz file, directory or glob{detail}")
    return files


def check_input_file(path: Path, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """Refuse (ConfigError naming ``path`` and the input) a file that will not give a
    numeric array for input ``name``; reads headers only (see the module docstring).
    Returns the array's shape and dtype."""
    kind = _file_kind(path, name)
    if kind == "npz":
        with _open_npz(path, name) as archive:
            member = _npz_member(archive, path, name)
            with archive.open(member) as handle:
                shape, dtype = _npy_header(handle, path, name, within=member)
    else:
        with open(path, "rb") as handle:
            shape, dtype = _npy_header(handle, path, name)
        _read_npy(path, name, mmap=True)  # the header against the file's size
    _check_dtype(dtype, path, name)
    return shape, dtype


def load_input(path: Path, name: str) -> np.ndarray:
    """The array ``path`` gives input ``name`` (``.npy``, or the array of that name in an
    ``.npz``), with the errors of :func:`check_input_file` (the file may have changed
    since it was checked)."""
    import numpy as np

    if _file_kind(path, name) == "npz":
        with _open_npz(path, name) as archive:
            member = _npz_member(archive, path, name)
            with archive.open(member) as handle:
                try:
                    array = np.lib.format.read_array(handle, allow_pickle=False)
                except (OSError, ValueError, EOFError) as error:
                    raise _unreadable(path, name, error, within=member) from None
    else:
        array = _read_npy(path, name, mmap=False)
    _check_dtype(array.dtype, path, name)
    return array


def _file_kind(path: Path, name: str) -> str:
    """``npy`` or ``npz`` by the file's first bytes; anything else is refused here."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError as error:
        raise ConfigError(
            f"cannot read {path} for input {name!r}: {error.strerror or error}"
        ) from None
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(ZIP_MAGIC):
        return "npz"
    if not head:
        raise ConfigError(
            f"cannot read {path} for input {name!r}: the file is empty; write it with numpy.save"
        )
    if _looks_like_text(head):
        separator = "," if b"," in head else None
        how = (
            f"np.save('{path.with_suffix('.npy').name}', np.loadtxt('{path.name}'"
            + (", delimiter=','" if separator else "")
            + ", dtype=np.float32))"
        )
        raise ConfigError(
            f"{path} (input {name!r}) is a text file, not a .npy array; convert it once "
            f'with: python -c "import numpy as np; {how}" (add ndmin=2 or a reshape if '
            "the model wants a batch axis)"
        )
    raise ConfigError(
        f"{path} (input {name!r}) is not a .npy or .npz array file; write the array "
        "with numpy.save (or numpy.savez for several)"
    )


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(char.isprintable() or char in "\t\r\n" for char in text)


def _open_npz(path: Path, name: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as error:
        raise ConfigError(
            f"cannot read {path} for input {name!r}: not a complete .npz archive ({error}); "
            "write it with numpy.savez"
        ) from None


def _npz_member(archive: zipfile.ZipFile, path: Path, name: str) -> str:
    """The archive member that is input ``name``'s array: ``name.npy``, else the only
    array; otherwise a refusal that lists the arrays it holds."""
    arrays = [m for m in archive.namelist() if m.endswith(".npy")]
    if f"{name}.npy" in arrays:
        return f"{name}.npy"
    if len(arrays) == 1:
        return arrays[0]
    held = ", ".join(repr(m[: -len(".npy")]) for m in arrays) or "no arrays"
    raise ConfigError(
        f"{path} holds {held} and no array named {name!r}: save the input's array under "
        f"that name (numpy.savez(path, {name}=array)) or as the archive's only array"
    )


def _npy_header(
    handle: IO[bytes], path: Path, name: str, within: str | None = None
) -> tuple[tuple[int, ...], np.dtype]:
    import numpy as np

    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
    except (OSError, ValueError, EOFError) as error:
        raise _unreadable(path, name, error, within) from None
    return tuple(shape), dtype


def _read_npy(path: Path, name: str, mmap: bool) -> np.ndarray:
    import numpy as np

    try:
        array: np.ndarray = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        if mmap and "pickle" not in str(error):  # some files cannot be mapped: read them
            return _read_npy(path, name, mmap=False)
        raise _unreadable(path, name, error) from None
    return array


def _unreadable(
    path: Path, name: str, error: BaseException, within: str | None = None
) -> ConfigError:
    detail = str(error) or type(error).__name__
    if isinstance(error, EOFError):
        detail = "the file ends before its header says"
    elif "pickle" in detail:  # an array of Python objects: never unpickled
        detail = "it holds Python objects, not numbers"
    where = f"{path} ({within})" if within else str(path)
    return ConfigError(
        f"cannot read {where} for input {name!r}: {detail}; write it with numpy.save"
    )


def _check_dtype(dtype: np.dtype, path: Path, name: str) -> None:
    if dtype.kind not in NUMERIC_KINDS:
        what = {"U": "strings", "S": "byte strings", "O": "Python objects"}.get(dtype.kind)
        raise ConfigError(
            f"{path} (input {name!r}) holds a {dtype.str} array"
            + (f" ({what})" if what else "")
            + "; the mesh runs numeric tensors: convert it first, e.g. "
            "array.astype(np.float32), and save that"
        )


def expand_inputs(specs: Sequence[tuple[str, str]]) -> list[TaskInputs]:
    """Tasks from (input name, PATH) pairs, in stem order (see the module docstring)."""
    if not specs:
        raise ConfigError("give at least one --input NAME=PATH")
    by_name: dict[str, dict[str, Path]] = {}
    for name, pattern in specs:
        if name in by_name:
            raise ConfigError(f"input {name!r} is given twice; give each model input once")
        stems: dict[str, Path] = {}
        for path in expand_path(pattern):
            previous = stems.setdefault(path.stem, path)
            if previous != path:
                raise ConfigError(
                    f"input {name!r}: {previous} and {path} have the same name; their "
                    f"outputs would both be {path.stem}.npz: rename one"
                )
        by_name[name] = stems
    shared = {name: next(iter(s.values())) for name, s in by_name.items() if len(s) == 1}
    varying = {name: s for name, s in by_name.items() if len(s) > 1}
    if not varying:
        first = next(iter(shared.values()))
        return [TaskInputs(first.stem, dict(shared))]
    names = list(varying)
    common = set(varying[names[0]])
    for name in names[1:]:
        other = set(varying[name])
        if other != common:
            only = sorted(common ^ other)[:5]
            raise ConfigError(
                f"inputs {names[0]!r} and {name!r} do not pair up by file name: "
                f"{', '.join(only)} present for only one of them"
            )
    return [
        TaskInputs(stem, {**shared, **{name: varying[name][stem] for name in names}})
        for stem in sorted(common, key=_natural)
    ]


def _natural(stem: str) -> tuple[object, ...]:
    """Sort ``2`` before ``10`` (stems are often sample numbers)."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", stem))
