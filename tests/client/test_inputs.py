"""Expanding `meshgpu submit --input NAME=PATH` into tasks (files, directories, globs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from meshgpu.client.inputs import expand_inputs, expand_path, parse_input_spec
from meshgpu.errors import ConfigError


def write(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.zeros(2, np.float32))
    return path


def test_a_single_file_is_one_task_named_by_its_stem(tmp_path: Path) -> None:
    sample = write(tmp_path / "sample.npy")
    [task] = expand_inputs([("x", str(sample))])
    assert task.stem == "sample"
    assert task.paths == {"x": sample}


def test_a_directory_is_one_task_per_npy_file_in_natural_order(tmp_path: Path) -> None:
    for stem in ("10", "2", "1"):
        write(tmp_path / "d" / f"{stem}.npy")
    (tmp_path / "d" / "notes.txt").write_text("ignored")
    tasks = expand_inputs([("x", str(tmp_path / "d"))])
    assert [t.stem for t in tasks] == ["1", "2", "10"]


def test_a_glob_selects_matching_npy_files(tmp_path: Path) -> None:
    write(tmp_path / "a1.npy")
    write(tmp_path / "a2.npy")
    write(tmp_path / "b1.npy")
    tasks = expand_inputs([("x", str(tmp_path / "a*.npy"))])
    assert [t.stem for t in tasks] == ["a1", "a2"]


def test_several_inputs_pair_by_stem_and_a_single_file_is_shared(tmp_path: Path) -> None:
    for stem in ("p", "q"):
        write(tmp_path / "left" / f"{stem}.npy")
        write(tmp_path / "right" / f"{stem}.npy")
    weights = write(tmp_path / "w.npy")
    tasks = expand_inputs(
        [("a", str(tmp_path / "left")), ("b", str(tmp_path / "right")), ("w", str(weights))]
    )
    assert [t.stem for t in tasks] == ["p", "q"]
    assert tasks[1].paths == {
        "a": tmp_path / "left" / "q.npy",
        "b": tmp_path / "right" / "q.npy",
        "w": weights,
    }


def test_inputs_that_do_not_pair_up_are_refused_naming_the_stems(tmp_path: Path) -> None:
    write(tmp_path / "left" / "p.npy")
    write(tmp_path / "left" / "q.npy")
    write(tmp_path / "right" / "p.npy")
    write(tmp_path / "right" / "r.npy")
    with pytest.raises(ConfigError, match="q, r"):
        expand_inputs([("a", str(tmp_path / "left")), ("b", str(tmp_path / "right"))])


def test_two_files_with_one_stem_are_refused_since_outputs_would_collide(tmp_path: Path) -> None:
    write(tmp_path / "one" / "x.npy")
    write(tmp_path / "two" / "x.npy")
    with pytest.raises(ConfigError, match="same name"):
        expand_inputs([("a", str(tmp_path / "*" / "x.npy"))])


@pytest.mark.parametrize("pattern", ["missing.npy", "nothing*.npy", "emptydir"])
def test_a_path_that_names_no_npy_file_is_an_error(tmp_path: Path, pattern: str) -> None:
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "nothing.txt").write_text("")
    with pytest.raises(ConfigError, match=r"\.npy"):
        expand_path(str(tmp_path / pattern))


def test_an_input_given_twice_is_refused(tmp_path: Path) -> None:
    sample = write(tmp_path / "s.npy")
    with pytest.raises(ConfigError, match="twice"):
        expand_inputs([("x", str(sample)), ("x", str(sample))])


def test_input_spec_takes_the_models_only_input_when_name_is_left_out(tmp_path: Path) -> None:
    assert parse_input_spec("pixels=a.npy") == ("pixels", "a.npy")
    assert parse_input_spec("a.npy", default_name="pixels") == ("pixels", "a.npy")
    odd = write(tmp_path / "k=v.npy")  # an existing path with '=' is a path
    assert parse_input_spec(str(odd), default_name="x") == ("x", str(odd))
    with pytest.raises(ConfigError, match="NAME=PATH"):
        parse_input_spec("a.npy")
