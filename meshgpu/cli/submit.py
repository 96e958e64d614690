"""``meshgpu submit``: send inference tasks to the mesh and save their outputs.

Thin: the input files are expanded by :mod:`meshgpu.client.inputs`, the tasks go through
:class:`meshgpu.client.AsyncClient` (which finds a peer, uploads the model only where it
is missing, fails over and delivers each result once), and this module renders a
progress bar on stderr and writes ``<output>/<stem>.npz`` per task.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from meshgpu.cli.options import SECONDS, connection_options, first_mesh_error, output_option
from meshgpu.cli.report import (
    ERRORS_SHOWN,
    LEFT_IN_MESH,
    STOPPED,
    collect_hint,
    outcome_line,
    save_outputs,
    write_ids,
)

PRIORITIES = ("low", "normal", "high", "critical")


def _labels(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    """``--require``/``--prefer`` checked here, once: a malformed one failed every task,
    one line per input file."""
    from meshgpu.core.tasks.spec import parse_labels
    from meshgpu.errors import TaskError

    try:
        parse_labels(list(value), "label")
    except TaskError as error:
        raise click.BadParameter(str(error), ctx, param) from None
    return value


def model_input_names(model: Any) -> list[str]:
    """The graph inputs of a model that are not initializers (for a bare ``--input PATH``);
    empty for a file that is not ONNX (:mod:`meshgpu.cli.preflight` says why)."""
    from meshgpu.cli.preflight import model_inputs
    from meshgpu.client.models import ModelBlob
    from meshgpu.errors import MeshError

    try:
        return list(model_inputs(ModelBlob.of(model)).required)
    except MeshError:
        return []


@click.command("submit")
@click.argument("model")
@click.option(
    "--input",
    "-i",
    "input_specs",
    multiple=True,
    required=True,
    metavar="NAME=PATH",
    help="A model input: NAME=PATH where PATH is a .npy or .npz file (the array named "
    "NAME, or its only one), a directory of them, or a glob ('data/*.npy'). Each file "
    "is one task; several inputs pair up by file name. NAME= may be left out when the "
    "model has one input. Repeat per input.",
)
@output_option("Directory for the outputs: one <stem>.npz per task (arrays by output name).")
@connection_options
@click.option(
    "--priority",
    type=click.Choice(PRIORITIES),
    default="normal",
    show_default=True,
    help="Queue priority: critical > high > normal > low, first come first served within.",
)
@click.option(
    "--replicas",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Nodes that must journal each task (and its inputs) before it is acknowledged.",
)
@click.option("--deadline", type=SECONDS, metavar="SECONDS", help="Fail a task not done by then.")
@click.option(
    "--no-wait",
    is_flag=True,
    help="Print the task ids once the mesh has acknowledged them, and exit without results "
    "(save them later with `meshgpu collect --ids FILE`).",
)
@click.option(
    "--max-task-bytes",
    type=click.IntRange(min=1),
    metavar="BYTES",
    help="Refuse a task whose inputs hold more array bytes than this, before sending "
    "anything (else MESHGPU_MAX_TASK_BYTES, else 4 GiB).",
)
@click.option(
    "--ids",
    "ids_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the ids of tasks left in the mesh (--no-wait, Ctrl-C, --timeout) to this "
    "file instead of stdout, as `meshgpu collect --ids FILE` reads them.",
)
@click.option(
    "--require",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_labels,
    help="Run only on nodes joined with --label KEY=VALUE (repeatable; all must match). "
    "A task no live node can satisfy fails at once.",
)
@click.option(
    "--prefer",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_labels,
    help="Prefer nodes with this label (repeatable) when one can take the task now.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--timeout", type=SECONDS, metavar="SECONDS", help="Give up waiting after this.")
def submit(
    model: str,
    input_specs: tuple[str, ...],
    output: Path,
    peer: str | None,
    key_file: Path | None,
    priority: str,
    replicas: int,
    deadline: float | None,
    no_wait: bool,
    max_task_bytes: int | None,
    ids_file: Path | None,
    require: tuple[str, ...],
    prefer: tuple[str, ...],
    as_json: bool,
    timeout: float | None,
) -> None:
    """Run MODEL (an .onnx file, `digits` for the shipped example, or a model of the
    mesh's catalog by name: `meshgpu models add NAME FILE`) on the mesh.

    \b
    Examples:
      meshgpu submit digits --input pixels=sample.npy
      meshgpu submit model.onnx --input x=batches/ --output results/
      meshgpu submit model.onnx -i a='left/*.npy' -i b=right/ --priority high

    One task per input file; its outputs are saved as OUTPUT/<stem>.npz. A progress bar
    goes to stderr. The exit status is 0 only if every task succeeded; a failed task
    is reported with the reason the mesh gave (a bad model, a wrong input shape).

    Ctrl-C stops within a second: the ids of the tasks the mesh accepted and this
    command did not save are printed (or written to --ids FILE) with the `meshgpu
    collect` command that fetches them; exit status 130. A second Ctrl-C stops at once.
    """
    import trio

    from meshgpu.cli.interrupt import EXIT_INTERRUPTED, Interruption, owning_sigint
    from meshgpu.cli.preflight import (
        check_input_names,
        check_npy_files,
        check_task_sizes,
        model_inputs,
        prepare_output_dir,
    )
    from meshgpu.client.batches import resolve_max_task_bytes
    from meshgpu.client.inputs import expand_inputs, parse_input_spec
    from meshgpu.client.mapping import STOP_GRACE_S
    from meshgpu.errors import InferenceError, MeshError

    try:
        blob = _model_blob(model, peer, key_file)  # reported before the inputs
        inputs = model_inputs(blob)
        default_name = inputs.required[0] if len(inputs.required) == 1 else None
        specs = [parse_input_spec(spec, default_name) for spec in input_specs]
        check_input_names(inputs, [name for name, _ in specs], blob.name)
        tasks = expand_inputs(specs)
        check_npy_files(tasks, inputs)  # before anything is sent: see meshgpu.cli.preflight
        max_task_bytes = resolve_max_task_bytes(max_task_bytes, os.environ)
        check_task_sizes(tasks, max_task_bytes)
        if not no_wait:
            prepare_output_dir(output)
        options: dict[str, Any] = {
            "priority": priority,
            "replicas": replicas,
            "deadline_s": deadline,
        }
        if require:
            options["require"] = list(require)
        if prefer:
            options["prefer"] = list(prefer)
        stop = Interruption(STOP_GRACE_S)
        with owning_sigint(stop):
            report = trio.run(
                _run, blob, tasks, output, peer, key_file, options, no_wait, timeout, stop,
                max_task_bytes,
            )  # fmt: skip
    except KeyboardInterrupt:  # before the command owned SIGINT: nothing was sent
        click.echo("interrupted: nothing was submitted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except InferenceError as error:  # named like the mesh names a failed task's reason
        raise click.ClickException(f"{type(error).__name__}: {error}") from None
    except MeshError as error:
        raise click.ClickException(str(error)) from None
    except BaseExceptionGroup as group:  # raised inside the client's nurseries
        mesh_error = first_mesh_error(group)
        if mesh_error is None:
            raise
        raise click.ClickException(str(mesh_error)) from None
    # By id: a row --timeout stopped before its task was sent has none (a KeyError
    # traceback from the ids file and the stdout list).
    left = [
        row
        for row in report["tasks"]
        if row.get("state") in LEFT_IN_MESH and row.get("task_id") is not None
    ]
    if as_json:
        click.echo(json.dumps(report, indent=None))
    if ids_file is not None:
        write_ids(ids_file, left)
    elif not as_json:
        for row in left:
            click.echo(f"{row['task_id']}\t{row['stem']}")
    failed = [
        row for row in report["tasks"] if row.get("state") not in ("done", "submitted", *STOPPED)
    ]
    for row in failed[:ERRORS_SHOWN]:
        click.echo(f"error: {row['stem']}: {row.get('error')}", err=True)
    if len(failed) > ERRORS_SHOWN:
        more = len(failed) - ERRORS_SHOWN
        click.echo(f"error: ... and {more} more failed (--json lists each)", err=True)
    if not as_json:
        click.echo(outcome_line(report, output, no_wait, replicas), err=True)
    if left and not no_wait:
        click.echo(collect_hint(left, ids_file, output, peer, key_file), err=True)
    if report.get("unanswered"):
        click.echo(
            f"{report['unanswered']} submission(s) were cut off before the mesh answered: it "
            "may have accepted them (`meshgpu tasks` shows their input file names as labels)",
            err=True,
        )
    if report.get("interrupted"):
        sys.exit(EXIT_INTERRUPTED)
    if failed:
        sys.exit(1)


def _model_blob(model: str, peer: str | None, key_file: Path | None) -> Any:
    """MODEL's bytes: a file, a shipped model, or else a name of the mesh's catalog
    (``meshgpu models add``), fetched from the peer. A bare name that is neither was
    said to be no file with a pointer to the HTTP port, even after ``models add NAME``."""
    import trio

    from meshgpu.client import AsyncClient
    from meshgpu.client.models import SHIPPED, ModelBlob
    from meshgpu.errors import ConfigError, MeshError

    try:
        return ModelBlob.of(model)
    except ConfigError as not_a_file:
        if "/" in model or os.sep in model or Path(model).exists():
            raise

        async def fetch() -> Any:
            async with AsyncClient(peer, key_file) as client:
                return await client.catalog_model(model)

        shipped = ", ".join(sorted(SHIPPED))
        try:
            return trio.run(fetch)
        except ConfigError as error:  # no such catalog model, or not on the peer yet
            raise ConfigError(
                f"no model file {model!r}, and {error}; shipped models: {shipped}"
            ) from None
        except MeshError as error:  # no daemon to ask: say so, and what it would be
            raise ConfigError(
                f"no model file {model!r}, and no daemon answered to look the name up in "
                f"the mesh's catalog ({str(error).splitlines()[0]}); shipped models: "
                f"{shipped}"
            ) from not_a_file


def _load(paths: dict[str, Path]) -> dict[str, Any]:
    from meshgpu.client.inputs import load_input

    return {name: load_input(path, name) for name, path in paths.items()}


async def _run(
    model: Any,
    tasks: list[Any],
    output: Path,
    peer: str | None,
    key_file: Path | None,
    options: dict[str, Any],
    no_wait: bool,
    timeout: float | None,
    stop: Any,
    max_task_bytes: int | None = None,
) -> dict[str, Any]:
    import dataclasses

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from meshgpu.cli.interrupt import run_guarded
    from meshgpu.client import AsyncClient
    from meshgpu.client.models import ModelBlob

    blob = ModelBlob.of(model)
    rows: list[dict[str, Any]] = [{"stem": task.stem} for task in tasks]
    report: dict[str, Any] = {"tasks": rows}
    console = Console(stderr=True)
    _log_to(console)
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        "{task.fields[note]}",
        console=console,
        transient=False,
    )

    async def body() -> None:
        async with AsyncClient(peer, key_file, max_task_bytes=max_task_bytes) as client:
            try:
                node_id, (host, port) = client.peer or ("?", ("?", 0))
                console.print(
                    f"[dim]submitting {len(tasks)} task(s) of {blob.name} to {node_id} "
                    f"at {host}:{port}[/dim]"
                )
                with progress:
                    bar = progress.add_task("tasks", total=len(tasks), note="")
                    sending = _Sending(client, blob, tasks, rows, options, stop, progress, bar)
                    if no_wait:
                        await sending.submit_only()
                    else:
                        await sending.submit_and_wait(output, timeout)
            finally:
                report["failovers"] = [dataclasses.asdict(f) for f in client.failovers]
                report["unanswered"] = client.unanswered + report.get("unanswered", 0)
                if stop.requested:  # acknowledgements of saved results: best effort, quick
                    client.flush_timeout = 0.3

    await run_guarded(stop, body)
    if stop.requested:
        report["interrupted"] = True
        for row in rows:
            if "state" not in row:
                row.update(state="not submitted")
    done = sum(1 for row in rows if row.get("state") == "done")
    if not no_wait:
        stopped = sum(1 for row in rows if row.get("state") in STOPPED)
        report.update(done=done, failed=len(rows) - done - stopped)
    else:
        report["submitted"] = sum(1 for row in rows if row.get("state") == "submitted")
    return report


@dataclass
class _Sending:
    """What both ways of sending share: the client, the model, the tasks and their report
    rows, the task options, the Ctrl-C guard and the progress bar."""

    client: Any
    blob: Any
    tasks: list[Any]
    rows: list[dict[str, Any]]
    options: dict[str, Any]
    stop: Any
    progress: Any
    bar: Any

    async def submit_and_wait(self, output: Path, timeout: float | None) -> None:
        """Submit every task through ``map`` and save each result as it comes; a stop
        (Ctrl-C, ``--timeout``) leaves the accepted, unsaved tasks in the mesh, named in
        ``rows`` by id (``client.uncollected()``, labelled by stem)."""
        import contextlib
        import math

        import trio

        failures = 0
        by_stem = {row["stem"]: row for row in self.rows}
        with trio.move_on_after(math.inf if timeout is None else timeout), self.stop.waiting():
            many = (_load(task.paths) for task in self.tasks)
            items = self.client.map(
                self.blob,
                many,
                raise_errors=False,
                label=lambda index: self.tasks[index].stem,
                **self.options,
            )
            async with contextlib.aclosing(items):
                async for item in items:
                    row = self.rows[item.index]
                    row.update(task_id=item.task_id, worker=item.worker)
                    if item.error is None and item.outputs is not None:
                        save_outputs(
                            row, output / f"{self.tasks[item.index].stem}.npz", item.outputs
                        )
                        failures += row["state"] != "done"
                    else:
                        failures += 1
                        row.update(state="failed", error=str(item.error))
                    self.progress.update(
                        self.bar,
                        advance=1,
                        note=f"[red]{failures} failed[/red]" if failures else "",
                    )
        for stem in self.client.unanswered_labels:  # cut off, and not settled
            row = by_stem.get(str(stem))
            if row is not None and "state" not in row:
                row.update(
                    state="unanswered" if self.stop.requested else "timeout",
                    error="cut off before the mesh answered: it may have accepted it",
                )
        for task_id, stem in self.client.uncollected():
            row = by_stem.get(str(stem))
            if row is None or "state" in row:
                continue
            if self.stop.requested:
                row.update(task_id=task_id, state="interrupted", error="stopped by Ctrl-C")
            else:
                row.update(
                    task_id=task_id,
                    state="timeout",
                    error=f"no result within {timeout} s; it goes on in the mesh",
                )
        if not self.stop.requested:
            for row in self.rows:
                if "state" not in row:
                    row.update(state="timeout", error=f"not submitted within {timeout} s")

    async def submit_only(self) -> None:
        """``--no-wait``: submit in batches (``submit_many``), not watched: this client
        neither runs them directly (a direct run's result lives only in the submit's answer)
        nor collects their results itself; a later ``meshgpu collect`` does. Ctrl-C lets the
        batch on the wire be answered (its ids are printed), then stops."""
        from meshgpu.client.batches import BATCH_MAX, new_submission_id
        from meshgpu.errors import MeshError

        for start in range(0, len(self.tasks), BATCH_MAX):
            if self.stop.requested:
                return
            chunk = self.tasks[start : start + BATCH_MAX]
            inputs = [_load(task.paths) for task in chunk]
            answers = None
            submissions = [new_submission_id() for _ in chunk]
            sent_on: list[Any] = []
            with self.stop.sending():
                try:
                    answers = await self.client.submit_many(
                        self.blob,
                        inputs,
                        watch=False,
                        label=[task.stem for task in chunk],
                        submissions=submissions,
                        sent_on=sent_on,
                        **self.options,
                    )
                except MeshError as error:
                    answers = [error] * len(chunk)
            if answers is None:  # cut off by Ctrl-C before the mesh answered
                await self._settle(self.rows[start : start + len(chunk)], submissions, sent_on)
                continue
            for row, answer in zip(self.rows[start : start + len(chunk)], answers, strict=True):
                if isinstance(answer, MeshError):
                    row.update(state="failed", error=str(answer))
                else:
                    row.update(task_id=answer.task_id, copies=answer.copies, state="submitted")
            self.progress.advance(self.bar, len(chunk))

    async def _settle(
        self, rows: list[dict[str, Any]], submissions: list[str], sent_on: list[Any]
    ) -> None:
        """Ask the peer which tasks of a batch cut off by Ctrl-C it accepted (listed by
        id like the others); those it never saw were not submitted (``client.settle``)."""
        import trio

        from meshgpu.client.mapping import SETTLE_S

        settled: list[Any] = [None] * len(rows)
        try:  # a second Ctrl-C cuts this off too: then every row is unanswered
            with trio.move_on_after(SETTLE_S):
                settled = await self.client.settle(submissions, sent_on)
        finally:
            for row, answer in zip(rows, settled, strict=True):
                if answer is None:
                    row.update(state="unanswered", error="cut off before the mesh answered")
                elif answer.get("task_id"):
                    row.update(task_id=str(answer["task_id"]), state="submitted")
                else:
                    row.update(state="not submitted")


def _log_to(console: Any) -> None:
    """Client warnings (a failover) go above the progress bar instead of through it."""
    import logging

    from rich.logging import RichHandler

    handler = RichHandler(console=console, show_time=False, show_path=False)
    logging.getLogger("meshgpu.client").addHandler(handler)
