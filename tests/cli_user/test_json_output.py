"""Every ``--json`` output is one line holding one JSON document, so a script reads it with
one ``readline`` (or ``jq`` line by line) whatever the command."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from meshgpu.cli import main


def one_document(stdout: str) -> Any:
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    return json.loads(lines[0])


def test_models_list_json_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from meshgpu.cli import models as models_module

    rows = [
        {"name": f"model-{n}", "version": 1, "digest": "ab" * 32, "shipped": False,
         "here": True, "max_batch": None}
        for n in range(3)
    ]  # fmt: skip
    monkeypatch.setattr(models_module, "_run", lambda *args, **kwargs: rows)
    outcome = CliRunner().invoke(main, ["models", "list", "--json"])
    assert outcome.exit_code == 0, outcome.output
    assert one_document(outcome.stdout) == rows


def test_keyring_list_json_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from meshgpu.cli import keyring as keyring_module

    answer = {"nodes": [{"node_id": "n-1", "ok": True, "keys": ["f" * 16], "primary": "f" * 16}]}
    monkeypatch.setattr(keyring_module, "_ask", lambda *args, **kwargs: answer)
    outcome = CliRunner().invoke(main, ["keyring", "list", "--json"])
    assert outcome.exit_code == 0, outcome.output
    assert one_document(outcome.stdout) == answer


def test_status_json_holds_the_status_without_the_request_id(tmp_path: Any) -> None:
    """``status --json`` and ``keyring list --json`` printed the API's request id as
    ``"id"`` among the status's fields."""
    from tests.cli_user.test_collect import cli, serve_and_run

    outcomes = serve_and_run(
        tmp_path,
        lambda peer: [cli(*command, "--json", "--peer", peer) for command in COMMANDS],
    )
    for command, outcome in zip(COMMANDS, outcomes, strict=True):
        assert outcome.exit_code == 0, outcome.output
        document = one_document(outcome.stdout)
        assert "id" not in document, (command, sorted(document))
    assert one_document(outcomes[0].stdout)["node"]["node_id"] == "solo"


COMMANDS = [("status",), ("keyring", "list")]
