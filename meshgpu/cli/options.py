"""The CLI's shared options and error unwrapping: what every command that talks to a
daemon takes (``--peer``, ``--key-file``), the output directory of ``submit`` and
``collect``, and the one-line message of an error raised inside the client's nurseries."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


class Seconds(click.ParamType[float]):
    """A duration in seconds, finite and above zero (``--deadline``, ``--timeout``): a
    negative one was a traceback from trio, and 0 or NaN a task refused by the mesh."""

    name = "seconds"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds <= 0:
            self.fail(f"{value!r} is not a positive, finite number of seconds", param, ctx)
        return seconds


SECONDS = Seconds()


def connection_options(command: F) -> F:
    """``--peer`` and ``--key-file``, shared by every command that talks to a daemon."""
    command = click.option(
        "--key-file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Mesh key from `meshgpu keygen` (else MESHGPU_KEY; none for an open mesh).",
    )(command)
    return click.option(
        "--peer",
        metavar="HOST:PORT",
        help="Daemon to talk to. Default: MESHGPU_PEER, else the daemon on this machine "
        "(its data dir's daemon.json, then 127.0.0.1:7946), else one found by mDNS.",
    )(command)


def output_option(help: str) -> Callable[[F], F]:
    """``--output``/``-o``: the directory for outputs (``submit`` and ``collect``)."""
    return click.option(
        "--output",
        "-o",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("."),
        show_default=True,
        help=help,
    )


def first_mesh_error(group: BaseExceptionGroup[Any]) -> Exception | None:
    """The first MeshError in a (nested) exception group, for a one-line message.

    The client runs its work in trio nurseries, so an error raised there (an input file
    that became unreadable mid-submission) reaches the command wrapped in groups; the
    user should see the error's message, not the groups' traceback."""
    from meshgpu.errors import MeshError

    matched, _ = group.split(MeshError)
    while isinstance(matched, BaseExceptionGroup):
        matched = matched.exceptions[0]  # type: ignore[assignment]
    return matched if isinstance(matched, MeshError) else None
