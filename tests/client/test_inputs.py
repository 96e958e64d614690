"""Expanding `meshgpu submit --input NAME=PATH` into tasks (files, directories, globs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from meshgpu.client.inputs import (
    check_input_file,
    expand_inputs,
    expand_path,
    load_input,
    parse_input_spec,
)
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


# --- reading the files (check_input_file: headers; load_input: the array) -----------


def test_an_npz_gives_the_array_named_like_the_input(tmp_path: Path) -> None:
    archive = tmp_path / "pair.npz"
    np.savez(archive, a=np.arange(3, dtype=np.float32), b=np.ones((2, 2), np.int64))
    for name, expected in (("a", np.arange(3, dtype=np.float32)), ("b", np.ones((2, 2)))):
        check_input_file(archive, name)
        np.testing.assert_array_equal(load_input(archive, name), expected)


def test_an_npz_with_one_array_gives_it_whatever_its_name(tmp_path: Path) -> None:
    archive = tmp_path / "out.npz"
    np.savez(archive, probabilities=np.full((1, 10), 0.1, np.float32))
    check_input_file(archive, "x")
    assert load_input(archive, "x").shape == (1, 10)


def test_an_npz_without_the_inputs_array_lists_what_it_holds(tmp_path: Path) -> None:
    archive = tmp_path / "two.npz"
    np.savez(archive, left=np.zeros(2), right=np.zeros(2))
    for read in (check_input_file, load_input):
        with pytest.raises(ConfigError, match=r"holds 'left', 'right' and no array named 'x'"):
            read(archive, "x")


def test_a_csv_is_refused_with_how_to_make_a_npy(tmp_path: Path) -> None:
    table = tmp_path / "rows.csv"
    table.write_text("1.0,2.0,3.0\n4.0,5.0,6.0\n")
    for read in (check_input_file, load_input):
        with pytest.raises(ConfigError) as refused:
            read(table, "x")
        message = str(refused.value)
        assert "is a text file" in message and "np.loadtxt('rows.csv', delimiter=','" in message
        assert "pickle" not in message
    # the advice works: running it makes a .npy the check accepts
    converted = tmp_path / "rows.npy"
    np.save(converted, np.loadtxt(table, delimiter=",", dtype=np.float32))
    check_input_file(converted, "x")


def test_a_text_file_named_npy_is_still_text(tmp_path: Path) -> None:
    fake = tmp_path / "x.npy"
    fake.write_text("0.5 0.25\n")
    with pytest.raises(ConfigError, match="is a text file") as refused:
        check_input_file(fake, "x")
    assert "pickle" not in str(refused.value) and "delimiter" not in str(refused.value)


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_a_string_array_is_refused_before_sending(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"words{suffix}"
    words = np.array(["hello", "world"])  # dtype <U5
    if suffix == ".npy":
        np.save(path, words)
    else:
        np.savez(path, x=words)
    for read in (check_input_file, load_input):
        with pytest.raises(ConfigError, match=r"holds a <U5 array \(strings\).*astype"):
            read(path, "x")


def test_an_object_array_is_refused_without_unpickling_or_pickle_advice(tmp_path: Path) -> None:
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    for read in (check_input_file, load_input):
        with pytest.raises(ConfigError) as refused:
            read(path, "x")
        assert "allow_pickle" not in str(refused.value)
        assert "|O" in str(refused.value) or "Python objects" in str(refused.value)


def test_binary_junk_is_not_an_array(tmp_path: Path) -> None:
    junk = tmp_path / "x.bin"
    junk.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match=r"not a \.npy or \.npz array file"):
        check_input_file(junk, "x")


def test_a_directory_gives_its_npz_files_too(tmp_path: Path) -> None:
    write(tmp_path / "d" / "1.npy")
    np.savez(tmp_path / "d" / "2.npz", x=np.zeros(2, np.float32))
    (tmp_path / "d" / "notes.txt").write_text("skip me")
    assert [p.name for p in expand_path(str(tmp_path / "d"))] == ["1.npy", "2.npz"]
