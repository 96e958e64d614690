"""``--input NAME=PATH`` arguments of ``meshgpu submit`` as a list of tasks.

Each PATH is a ``.npy`` file, a directory (its ``*.npy`` files) or a glob. Every file is
one task, named by its stem; the outputs go to ``<output dir>/<stem>.npz``. With several
inputs, tasks are matched by stem (``--input a=left/ --input b=right/`` pairs
``left/7.npy`` with ``right/7.npy``), and an input given as one file is shared by every
task. Anything ambiguous is an error that says what to fix, before anything is sent:
a stem present for one input and not another, two files with one stem (their outputs
would overwrite each other), a pattern that matches nothing.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from meshgpu.errors import ConfigError


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
    """The ``.npy`` files a PATH names: the file, a directory's files, or a glob's."""
    path = Path(pattern).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.npy"))
        if not files:
            raise ConfigError(f"directory {pattern} has no .npy files")
        return files
    if path.is_file():
        return [path]
    matches = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
    files = [p for p in matches if p.suffix == ".npy"]
    if not files:
        detail = f" ({len(matches)} files, none .npy)" if matches else ""
        raise ConfigError(f"--input {pattern}: no such .npy file, directory or glob{detail}")
    return files


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
