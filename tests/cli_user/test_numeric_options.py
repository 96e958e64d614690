"""Numeric CLI options refuse values outside their meaning before anything runs: a
``--limit -5`` used to show every row, a negative ``--port`` to fail deep in the socket
layer."""

from __future__ import annotations

import click

from meshgpu.cli import main
from tests.cli_user.test_collect import cli

# Options where every integer means something (a seed is any integer).
UNBOUNDED = {("simulate", "seed")}


def _commands(group: click.Group) -> list[tuple[str, click.Command]]:
    """Every command under ``group`` (the lazy top group imports each one)."""
    context = click.Context(group)
    found: list[tuple[str, click.Command]] = []
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        assert command is not None
        if isinstance(command, click.Group):
            found += [(f"{name} {sub}", inner) for sub, inner in _commands(command)]
        else:
            found.append((name, command))
    return found


def test_every_numeric_option_has_a_range() -> None:
    open_ended = [
        (name, param.name)
        for name, command in _commands(main)
        for param in command.params
        if isinstance(param, click.Option)
        and param.type in (click.INT, click.FLOAT)
        and (name, param.name) not in UNBOUNDED
    ]
    assert len(_commands(main)) >= 14
    assert open_ended == []


def test_a_negative_limit_is_refused_with_the_range() -> None:
    outcome = cli("tasks", "--limit", "-5", "--peer", "127.0.0.1:9")
    assert outcome.exit_code == 2, outcome.output
    assert "--limit" in outcome.output and "x>=0" in outcome.output


def test_a_port_outside_the_port_range_is_refused() -> None:
    outcome = cli("join", "--port", "-1")
    assert outcome.exit_code == 2, outcome.output
    assert "--port" in outcome.output
