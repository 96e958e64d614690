"""``meshgpu collect``: save the results of tasks submitted earlier with ``--no-wait``.

``meshgpu submit --no-wait`` prints one ``TASK_ID<TAB>STEM`` line per task (or, with
``--json``, an object whose ``tasks`` rows carry ``task_id`` and ``stem``). This command
reads those ids (arguments, or ``--ids FILE``, ``-`` for stdin, in either format), waits
for each task's outcome through :meth:`meshgpu.client.AsyncClient.attach`, and writes
``<output>/<stem>.npz`` exactly as a waiting ``submit`` would have. Without this command
a ``--no-wait`` submission had no command-line way to get its results back.

Ids the peer's task table does not hold (a typo, another mesh, a task collected and
dropped long ago), and tasks it marks delivered, are refused before waiting: the mesh
answers neither, so attaching to them would wait forever. Rejected: checking the ids
on every peer (the table is replicated to all of them, so one peer's view is the
mesh's, a few gossip periods after submission).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, TextIO

import click

from meshgpu.cli.options import SECONDS, connection_options, first_mesh_error, output_option
from meshgpu.cli.report import collect_hint, tasks_line


def read_ids(text: str) -> list[tuple[str, str]]:
    """(task id, output stem) pairs from ``submit --no-wait`` output, text or JSON.

    Text: one ``TASK_ID<TAB>STEM`` per line as ``submit`` writes it (the stem is the
    rest of the line, spaces and ``#`` included), or ``TASK_ID`` or ``TASK_ID STEM``
    typed by hand (blank lines and ``#`` comments skipped). JSON: ``{"tasks":
    [{"task_id", "stem"}, ...]}`` or a list of such rows; rows without a ``task_id``
    (tasks that were refused) are skipped."""
    from meshgpu.errors import ConfigError

    stripped = text.strip()
    if stripped.startswith(("{", "[")):
        try:
            parsed = json.loads(stripped)
        except json.JSONDecodeError as error:
            raise ConfigError(f"task ids: not valid JSON ({error})") from None
        rows = parsed.get("tasks", []) if isinstance(parsed, dict) else parsed
        if not isinstance(rows, list):
            raise ConfigError("task ids: expected {'tasks': [...]} or a list of rows")
        return [
            (str(row["task_id"]), str(row.get("stem") or stem_of(str(row["task_id"]))))
            for row in rows
            if isinstance(row, dict) and row.get("task_id")
        ]
    pairs = []
    for line in stripped.splitlines():
        task_id, tab, stem = line.strip(" \r\n").partition("\t")
        if tab and task_id and not task_id.startswith("#"):
            # submit's own TASK_ID<TAB>STEM: the stem as it was, spaces and '#' included
            # (it was cut at the first of them, and stems "a 1" and "a 2" both wrote a.npz).
            pairs.append((task_id.strip(), stem.strip("\r\n") or stem_of(task_id.strip())))
            continue
        fields = line.split("#", 1)[0].split()
        if fields:
            pairs.append((fields[0], fields[1] if len(fields) > 1 else stem_of(fields[0])))
    return pairs


def stem_of(task_id: str) -> str:
    """A file name for a task given without a stem: ``a/123`` -> ``a-123``."""
    return task_id.replace("/", "-").replace(":", "-")


@click.command("collect")
@click.argument("task_ids", nargs=-1, metavar="[TASK_ID]...")
@click.option(
    "--ids",
    "ids_file",
    type=click.File("r"),
    help="Read task ids from this file ('-': stdin): the output of `submit --no-wait`, "
    "text or --json.",
)
@output_option("Directory for the outputs: one <stem>.npz per task.")
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--timeout", type=SECONDS, metavar="SECONDS", help="Give up waiting after this.")
def collect(
    task_ids: tuple[str, ...],
    ids_file: TextIO | None,
    output: Path,
    peer: str | None,
    key_file: Path | None,
    as_json: bool,
    timeout: float | None,
) -> None:
    """Wait for tasks submitted with `submit --no-wait` and save their outputs.

    \b
    Examples:
      meshgpu submit model.onnx -i x=data/ --no-wait > ids.txt
      meshgpu collect --ids ids.txt -o results/
      meshgpu collect a/1234 a/1235

    Each task's outputs are saved as OUTPUT/<stem>.npz (the stem printed by --no-wait,
    else the task id with / replaced by -). A result can be collected once: after that
    the mesh may drop it; it counts as collected once its file is written. The exit
    status is 0 only if every task's result was saved. Ctrl-C stops at once (status
    130) and prints the ids still to collect.
    """
    import trio

    from meshgpu.cli.interrupt import EXIT_INTERRUPTED, Interruption, owning_sigint
    from meshgpu.client.mapping import STOP_GRACE_S
    from meshgpu.errors import MeshError

    pairs = [(task_id, stem_of(task_id)) for task_id in task_ids]
    try:
        if ids_file is not None:
            from_file = read_ids(ids_file.read())
            if not from_file and not pairs:
                name = "stdin" if ids_file.name == "<stdin>" else ids_file.name
                raise click.UsageError(
                    f"{name} holds no task ids (expected the output of `submit --no-wait`: "
                    "one TASK_ID [STEM] per line, or its --json)"
                )
            pairs += from_file
        if not pairs:
            raise click.UsageError("give task ids as arguments or with --ids FILE")
        stop = Interruption(STOP_GRACE_S)
        with owning_sigint(stop):
            report = trio.run(_collect, pairs, output, peer, key_file, timeout, stop)
    except KeyboardInterrupt:  # before the command owned SIGINT: nothing was collected
        click.echo("interrupted: nothing was collected", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except MeshError as error:
        raise click.ClickException(str(error)) from None
    except BaseExceptionGroup as group:
        mesh_error = first_mesh_error(group)
        if mesh_error is None:
            raise
        raise click.ClickException(str(mesh_error)) from None
    if as_json:
        click.echo(json.dumps(report))
    left = [row for row in report["tasks"] if row["state"] == "interrupted"]
    failed = [row for row in report["tasks"] if row["state"] not in ("done", "interrupted")]
    for row in failed:
        click.echo(f"error: {row['task_id']}: {row['error']}", err=True)
    if not as_json:
        line = tasks_line(report["done"], len(pairs), "done")
        if len(failed):
            line += f", {len(failed)} failed"
        if left:
            line = f"interrupted: {line}, {len(left)} not collected yet"
            for row in left:
                click.echo(f"{row['task_id']}\t{row['stem']}")
        click.echo(line + (f"; outputs in {output}{os.sep}" if report["done"] else ""), err=True)
    if left:
        click.echo(collect_hint(left, None, output, peer, key_file), err=True)
    if report.get("interrupted"):
        sys.exit(EXIT_INTERRUPTED)
    if failed:
        sys.exit(1)


async def _collect(
    pairs: list[tuple[str, str]],
    output: Path,
    peer: str | None,
    key_file: Path | None,
    timeout: float | None,
    stop: Any,
) -> dict[str, Any]:
    import trio

    from meshgpu.cli.interrupt import run_guarded
    from meshgpu.cli.preflight import prepare_output_dir
    from meshgpu.cli.report import save_outputs
    from meshgpu.client import AsyncClient
    from meshgpu.daemon.direct import is_direct_id
    from meshgpu.daemon.groups import group_of

    rows: list[dict[str, Any]] = [{"task_id": t, "stem": s} for t, s in pairs]

    async def body() -> None:
        async with AsyncClient(peer, key_file) as client:
            try:
                await _collect_rows(client, rows, output, timeout, stop)
            finally:
                if stop.requested:
                    client.flush_timeout = 0.3

    async def _collect_rows(
        client: Any, rows: list[dict[str, Any]], output: Path, timeout: float | None, stop: Any
    ) -> None:
        known = {str(row["task_id"]): row for row in await client.tasks()}
        node = client.peer[0] if client.peer else "the peer"
        waiting = []
        for row in rows:
            # a task group's member id is "<group id>:<index>"; the table holds the group
            # (cut at the last ':', as the daemon does: a node id may hold one, "lab:1")
            entry = known.get(group_of(row["task_id"]) or row["task_id"])
            if entry is None and is_direct_id(row["task_id"]):
                row.update(
                    state="failed",
                    error="a direct run's id (an HTTP answer's task_id, a submit's): its "
                    "result was in that answer and is not kept in the mesh; to collect "
                    "later, submit with --no-wait",
                )
            elif entry is None:
                row.update(
                    state="failed",
                    error=f"not in the task table of {node}: a mistyped id, one of another "
                    "mesh, or a result collected before and dropped",
                )
            elif entry.get("delivered"):
                # Asked for, a delivered result is never answered (the mesh gives each
                # result out once): waiting would hang.
                row.update(state="failed", error="already collected: a result is given out once")
            else:
                waiting.append(row)
        if waiting:
            prepare_output_dir(output)

        async def one(row: dict[str, Any]) -> None:
            # Marked collected only once the file is written: a stop in between leaves
            # the result in the mesh for the next collect.
            outcome = await client.attach(row["task_id"], acknowledge=False).wait()
            row["worker"] = outcome.worker
            if outcome.error is None and outcome.outputs is not None:
                save_outputs(row, output / f"{row['stem']}.npz", outcome.outputs)
                if row["state"] == "done":
                    client.collected([row["task_id"]])
            else:
                row.update(state="failed", error=str(outcome.error))
                client.collected([row["task_id"]])  # the failure is reported: given out

        with trio.move_on_after(math.inf if timeout is None else timeout), stop.waiting():
            async with trio.open_nursery() as nursery:
                for row in waiting:
                    nursery.start_soon(one, row)

    await run_guarded(stop, body)
    for row in rows:
        if "state" not in row:
            if stop.requested:
                row.update(state="interrupted", error="stopped by Ctrl-C; it waits in the mesh")
            else:
                row.update(state="timeout", error=f"no result within {timeout} s; it goes on")
    done = sum(1 for row in rows if row["state"] == "done")
    failed = sum(1 for row in rows if row["state"] not in ("done", "interrupted"))
    report = {"tasks": rows, "done": done, "failed": failed}
    if stop.requested:
        report["interrupted"] = True
    return report
