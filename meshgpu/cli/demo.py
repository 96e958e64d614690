"""``meshgpu demo``: a mesh on this machine, a crash, and nothing lost.

Starts ``--nodes`` daemons on loopback (:class:`meshgpu.client.localmesh.LocalMesh`),
submits the shipped digits classifier over its held-out test set through the Python
client, SIGKILLs one node a third of the way in, and ends with a summary: accuracy,
tasks lost, and how long the mesh took to fail over. Everything it starts (processes,
the temporary directory) is cleaned up on every exit path, Ctrl-C included.

Which node dies (``--kill``): by default the current leader, the node whose loss
matters most to the queue (assignment stops until the survivors agree on a new one). If
the leader is also the client's entry node the client fails over too, and the summary
says so. ``worker`` kills the non-entry node running the most tasks, ``entry`` the node
the client talks to.

Measured (all from the SIGKILL):

* ``failover_s``: until the client's peer has declared the victim dead and names a live
  leader, i.e. the mesh works without it (read with the ``wait`` op, no polling);
* ``recovered_s``: until every task the victim was running has been finished elsewhere.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import click

from meshgpu.cli.options import SECONDS

KILL_CHOICES = ("leader", "worker", "entry", "none")


@dataclass
class Kill:
    """The node the demo killed, and what the mesh did about it."""

    node: str
    role: str
    entry: bool
    after_tasks: int
    at: float = field(repr=False)
    running: set[str] = field(default_factory=set, repr=False)
    running_at_kill: int = 0
    running_answered: int = 0
    """Of those, how many the client received a result for, by the id they had."""
    failover_s: float | None = None
    recovered_s: float | None = None
    answered_s: float | None = None
    """When the last of those results arrived, seconds after the kill."""


@click.command("demo")
@click.option(
    "--nodes", type=click.IntRange(min=2, max=8), default=3, show_default=True, help="Daemons."
)
@click.option(
    "--tasks",
    type=click.IntRange(min=1),
    default=120,
    show_default=True,
    help="Tasks to submit (each a batch of --batch test samples; 450 samples ship).",
)
@click.option(
    "--batch", type=click.IntRange(min=1), default=3, show_default=True, help="Samples per task."
)
@click.option(
    "--kill",
    "kill_choice",
    type=click.Choice(KILL_CHOICES),
    default="leader",
    show_default=True,
    help="Which node to SIGKILL a third of the way in.",
)
@click.option(
    "--backend",
    type=click.Choice(["onnxruntime", "opencl", "auto"]),
    default="onnxruntime",
    show_default=True,
    help="Inference backend of the demo daemons.",
)
@click.option("--json", "as_json", is_flag=True, help="End with one JSON object on stdout.")
@click.option("--keep", is_flag=True, help="Keep the temporary directory (daemon logs).")
@click.option(
    "--timeout",
    type=SECONDS,
    default=180.0,
    show_default=True,
    help="Give up waiting for results after this many seconds (the rest count as lost).",
)
def demo(
    nodes: int,
    tasks: int,
    batch: int,
    kill_choice: str,
    backend: str,
    as_json: bool,
    keep: bool,
    timeout: float,
) -> None:
    """Start a mesh on this machine, run the digits model on it, kill a node, lose nothing.

    The daemons are real `meshgpu join` processes on 127.0.0.1 with their own names and
    temporary data dirs; the client submits one task per batch of test digits and shows
    which node ran what. A node is killed with SIGKILL a third of the way in; the
    summary gives accuracy, tasks lost (0 expected) and the failover time. Exit status
    is non-zero if any task was lost or failed.
    """
    import numpy as np
    import trio

    from meshgpu.client.localmesh import LocalMesh
    from meshgpu.errors import MeshError
    from meshgpu.inference.model import SHIPPED_MODELS_DIR

    test_set = np.load(SHIPPED_MODELS_DIR / "digits_test.npz")
    if tasks * batch > len(test_set["pixels"]):
        raise click.BadParameter(
            f"{tasks} tasks of {batch} need {tasks * batch} samples; the test set has "
            f"{len(test_set['pixels'])}",
            param_hint="--tasks/--batch",
        )
    root = Path(tempfile.mkdtemp(prefix="meshgpu-demo-"))
    previous = signal.signal(signal.SIGTERM, _interrupt)
    # SIGTERM is delivered as SIGINT, so SIGINT must not be ignored (it is for `cmd &`).
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.monotonic()
    try:
        with LocalMesh(root, nodes, prefix="demo", backend=backend) as mesh:
            report = trio.run(
                _run, mesh, test_set["pixels"], test_set["labels"], tasks, batch, kill_choice,
                timeout, started,
            )  # fmt: skip
    except (KeyboardInterrupt, BaseExceptionGroup) as error:
        if isinstance(error, BaseExceptionGroup) and error.split(KeyboardInterrupt)[0] is None:
            raise
        click.echo("interrupted: every demo daemon stopped, temporary files removed", err=True)
        sys.exit(130)
    except MeshError as error:
        raise click.ClickException(f"{error} (logs in {root})" if keep else str(error)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
        if keep:
            click.echo(f"demo files kept in {root}", err=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
    if as_json:
        click.echo(json.dumps(report))
    else:
        _print_summary(report)
    if report["lost"] or report["failed"]:
        sys.exit(1)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM does what Ctrl-C does: re-sent as SIGINT, trio turns it into a
    KeyboardInterrupt at a safe point (raising here could land inside trio's machinery)."""
    signal.raise_signal(signal.SIGINT)


async def _run(
    mesh: Any,
    pixels: Any,
    labels: Any,
    tasks: int,
    batch: int,
    kill_choice: str,
    timeout: float,
    started: float,
) -> dict[str, Any]:
    import trio
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from meshgpu.client import AsyncClient
    from meshgpu.daemon.groups import group_of
    from meshgpu.errors import TaskFailedError

    console = Console(stderr=True)
    _log_to(console)
    entry = mesh.nodes[0]
    async with AsyncClient(entry.peer, status_interval=0.5) as client:
        status = await client.call("wait", alive=len(mesh.nodes), timeout=30.0)
        formed_s = time.monotonic() - started
        console.print(
            f"mesh of {len(mesh.nodes)} formed after {formed_s:.1f} s: "
            + ", ".join(f"{n.name} ({n.peer})" for n in mesh.nodes)
            + f"; leader {status['leader']}; the client talks to {entry.name}"
        )
        ran: Counter[str] = Counter()
        outcome = {"done": 0, "failed": 0, "lost": 0, "correct": 0, "samples": 0}
        failures: list[str] = []
        delivered: set[str] = set()
        kill: Kill | None = None
        measured = trio.Event()
        kill_at = max(1, tasks // 3) if kill_choice != "none" else None
        batches = [pixels[i * batch : (i + 1) * batch] for i in range(tasks)]
        progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            "{task.fields[ran]}",
            console=console,
        )
        async with trio.open_nursery() as nursery:
            with progress, trio.move_on_after(timeout):
                bar = progress.add_task("digits", total=tasks, ran="")
                inputs = ({"pixels": rows} for rows in batches)
                async for item in client.map("digits", inputs, window=32, raise_errors=False):
                    if item.error is None and item.outputs is not None:
                        outcome["done"] += 1
                        ran[str(item.worker)] += 1
                        predicted = item.outputs["probabilities"].argmax(axis=1)
                        expected = labels[item.index * batch : (item.index + 1) * batch]
                        outcome["correct"] += int((predicted == expected).sum())
                        outcome["samples"] += len(expected)
                    elif isinstance(item.error, TaskFailedError):
                        outcome["failed"] += 1
                        failures.append(str(item.error))
                    else:
                        outcome["lost"] += 1
                        failures.append(str(item.error))
                    # A member of a task group stands for its group (the table's rows
                    # name groups): one member's result means the whole group's arrived.
                    entry_id = group_of(str(item.task_id)) or str(item.task_id)
                    delivered.add(entry_id)
                    if kill is not None and entry_id in kill.running:
                        kill.running.discard(entry_id)
                        kill.running_answered += 1
                        kill.answered_s = time.monotonic() - kill.at
                        if not kill.running:
                            kill.recovered_s = kill.answered_s
                    finished = outcome["done"] + outcome["failed"] + outcome["lost"]
                    progress.update(
                        bar,
                        completed=finished,
                        ran=" ".join(f"{name} {count}" for name, count in sorted(ran.items())),
                    )
                    if kill_at is not None and kill is None and finished >= kill_at:
                        kill = await _kill(client, mesh, kill_choice, finished, delivered)
                        progress.console.print(
                            f"[bold red]SIGKILL {kill.node}[/bold red] ({kill.role}"
                            + (", the client's entry node" if kill.entry else "")
                            + f") after {finished} tasks; "
                            + _running_text(len(kill.running))
                        )
                        nursery.start_soon(_measure_failover, client, kill, measured)
            if kill is not None:  # the tasks may all be done before the victim is declared dead
                with trio.move_on_after(min(timeout, 30.0)):
                    await measured.wait()
            nursery.cancel_scope.cancel()
    received = outcome["done"] + outcome["failed"] + outcome["lost"]
    outcome["lost"] += tasks - received  # no answer before the timeout
    return {
        "nodes": len(mesh.nodes),
        "tasks": tasks,
        "samples": tasks * batch,
        "done": outcome["done"],
        "failed": outcome["failed"],
        "lost": outcome["lost"],
        "accuracy": round(outcome["correct"] / outcome["samples"], 4) if outcome["samples"] else 0,
        "failover_s": None if kill is None else _round(kill.failover_s),
        "recovered_s": None if kill is None else _round(kill.recovered_s),
        "killed": None
        if kill is None
        else {k: v for k, v in asdict(kill).items() if k not in ("at", "running")},
        "ran": dict(sorted(ran.items())),
        "client_failovers": [
            {"from": f.from_node, "to": f.to_node, "seconds": _round(f.seconds)}
            for f in client.failovers
        ],
        "duplicates_dropped": client.duplicates,
        "formed_s": _round(formed_s),
        "duration_s": _round(time.monotonic() - started),
        "failures": failures[:10],
    }


async def _kill(client: Any, mesh: Any, choice: str, finished: int, delivered: set[str]) -> Kill:
    """Pick the victim as ``--kill`` says, note what it is running, SIGKILL it."""
    status = await client.status()
    rows = await client.tasks(state="assigned")
    entry = mesh.nodes[0]
    by_name = {node.name: node for node in mesh.nodes}
    busy = Counter(str(row["worker"]) for row in rows)
    if choice == "leader" and status.get("leader") in by_name:
        victim, role = by_name[status["leader"]], "leader"
    elif choice == "entry":
        victim, role = entry, "entry node"
    else:
        others = [n for n in mesh.nodes if n is not entry and n.name != status.get("leader")]
        others = others or [n for n in mesh.nodes if n is not entry]
        victim = max(others, key=lambda n: busy[n.name])
        role = "worker"
    # a row can still say "assigned" after its result reached us (gossip lags the data plane)
    running = {
        str(row["task_id"])
        for row in rows
        if row["worker"] == victim.name and str(row["task_id"]) not in delivered
    }
    victim.kill()
    return Kill(
        victim.name, role, victim is entry, finished, time.monotonic(), running, len(running)
    )


async def _measure_failover(client: Any, kill: Kill, measured: Any) -> None:
    """Wait (on membership changes, via the ``wait`` op) until the victim is dead and a
    live leader is named; records ``failover_s``; sets ``measured`` when it gives up or
    has the figure."""
    from meshgpu.errors import MeshError

    generation = -1
    try:
        while True:
            try:
                status = await client.call("wait", after_generation=generation, timeout=30.0)
            except MeshError:
                return  # the summary shows no failover time
            generation = status["generation"]
            states = {m["node_id"]: m["state"] for m in status["members"]}
            leader = status.get("leader")
            if states.get(kill.node) in ("dead", "left") and leader and leader != kill.node:
                kill.failover_s = time.monotonic() - kill.at
                return
    finally:
        measured.set()


def _log_to(console: Any) -> None:
    """Client warnings (a failover) go above the progress bar instead of through it."""
    import logging

    from rich.logging import RichHandler

    handler = RichHandler(console=console, show_time=False, show_path=False)
    logging.getLogger("meshgpu.client").addHandler(handler)


def _running_text(count: int) -> str:
    """``it was running no task`` / ``1 task`` / ``N tasks``: a bare count read as a
    truncated sentence (``it was running 0``)."""
    if count == 0:
        return "it was running no task"
    return f"it was running {count} task" + ("s" if count > 1 else "")


def _running_after_kill(killed: dict[str, Any], every_task_answered: bool) -> str:
    """What became of the tasks the killed node was running, as the client saw it. A task
    it was running but the client never got a result for by that id is a copy: the
    victim had journaled a submission whose answer the kill cut off, and the client sent
    it again through another node (client/session.py), where it ran under a new id. When
    every task was answered, that is all it can be; otherwise results are missing."""
    count = killed["running_at_kill"]
    if not count:
        return "it was running no task"
    answered = killed["running_answered"]
    when = f" after {_round(killed['answered_s'])} s" if answered else ""
    if answered == count:
        return f"its {count} running task(s) finished elsewhere{when}"
    unseen = count - answered
    first = (
        f"{answered} of its {count} running task(s) finished elsewhere{when}; " if answered else ""
    )
    if every_task_answered:
        return (
            first + f"{'the other' if answered else 'the'} {unseen} it was running were copies of "
            "submissions the client sent again through another node, where they ran under "
            "new ids; every task was answered"
        )
    return (
        first
        + f"[red]no result seen after the kill for {unseen} of its {count} running task(s)[/red]"
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _print_summary(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="meshgpu demo", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("result")
    table.add_row("nodes", f"{report['nodes']} (formed after {report['formed_s']} s)")
    table.add_row("tasks", f"{report['tasks']} x {report['samples'] // report['tasks']} samples")
    lost = report["lost"]
    table.add_row(
        "done / failed / lost",
        f"{report['done']} / {report['failed']} / "
        + (f"[green]{lost}[/green]" if lost == 0 else f"[red]{lost}[/red]"),
    )
    table.add_row("accuracy", f"{report['accuracy']:.1%}")
    table.add_row("which node ran what", ", ".join(f"{k}: {v}" for k, v in report["ran"].items()))
    killed = report["killed"]
    if killed is not None:
        table.add_row(
            "killed",
            f"{killed['node']} ({killed['role']}"
            + (", the client's entry node" if killed["entry"] else "")
            + f") with SIGKILL after {killed['after_tasks']} tasks",
        )
        rerun = _running_after_kill(killed, every_task_answered=lost == 0)
        if report["failover_s"] is None:  # the run ended before the mesh had failed over
            failover = "not measured (the last result came before a new leader was named)"
        else:
            failover = f"declared dead, new leader after {report['failover_s']} s"
        table.add_row("failover", f"{failover}; {rerun}")
    moves = report["client_failovers"]
    table.add_row(
        "client failover",
        ", ".join(f"{m['from']} -> {m['to']} in {m['seconds']} s" for m in moves) or "none needed",
    )
    table.add_row("duplicates dropped", str(report["duplicates_dropped"]))
    table.add_row("total time", f"{report['duration_s']} s")
    console.print(table)
    for failure in report["failures"]:
        console.print(f"[red]{failure}[/red]")
