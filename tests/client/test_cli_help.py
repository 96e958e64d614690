"""Every client-side command explains itself and fails clearly before talking to a mesh."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from meshgpu.cli import main


@pytest.mark.parametrize("command", ["submit", "status", "tasks", "demo"])
def test_help_explains_the_command(command: str) -> None:
    outcome = CliRunner().invoke(main, [command, "--help"])
    assert outcome.exit_code == 0
    assert "Usage: " in outcome.output and len(outcome.output.splitlines()) > 8


def test_submit_without_inputs_is_a_usage_error() -> None:
    outcome = CliRunner().invoke(main, ["submit", "digits"])
    assert outcome.exit_code == 2 and "--input" in outcome.output


def test_submit_with_a_missing_input_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.npy"
    outcome = CliRunner().invoke(main, ["submit", "digits", "-i", f"pixels={missing}"])
    assert outcome.exit_code == 1 and "nope.npy" in outcome.output


def test_submit_with_an_unreadable_model_names_the_shipped_ones() -> None:
    outcome = CliRunner().invoke(main, ["submit", "digitz", "-i", "x=y.npy"])
    assert outcome.exit_code == 1 and "digits" in outcome.output


def test_demo_refuses_more_samples_than_ship() -> None:
    outcome = CliRunner().invoke(main, ["demo", "--tasks", "400", "--batch", "2"])
    assert outcome.exit_code == 2 and "test set has" in outcome.output
