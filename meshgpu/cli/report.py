"""What ``submit`` and ``collect`` tell the user and write when they are done: the
summary line (one wording of "N of M tasks" for every command), the ``collect`` hint and
ids file for the tasks left in the mesh, and each task's outputs as ``<stem>.npz``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

LEFT_IN_MESH = ("submitted", "interrupted", "timeout")
"""Row states of tasks the mesh accepted whose results this command did not save."""
STOPPED = ("interrupted", "not submitted", "unanswered")
"""Row states a stop (Ctrl-C) leaves: not failures of the task."""


def write_ids(path: Path, rows: list[dict[str, Any]]) -> None:
    """``TASK_ID<TAB>STEM`` lines, as ``meshgpu collect --ids`` reads them."""
    try:
        path.write_text("".join(f"{row['task_id']}\t{row['stem']}\n" for row in rows))
    except OSError as error:
        raise click.ClickException(f"cannot write --ids {path}: {error}") from None


def collect_hint(
    rows: list[dict[str, Any]],
    ids_file: Path | None,
    output: Path,
    peer: str | None,
    key_file: Path | None,
) -> str:
    """The ``meshgpu collect`` command that fetches the results left in the mesh."""
    import shlex

    where = (f" --peer {shlex.quote(peer)}" if peer else "") + (
        f" --key-file {shlex.quote(str(key_file))}" if key_file else ""
    )
    out = f" -o {shlex.quote(str(output))}"
    count = f"{len(rows)} accepted task{'' if len(rows) == 1 else 's'}"
    if ids_file is not None:
        return (
            f"the ids of the {count} left in the mesh are in {ids_file}; fetch their "
            f"results with: meshgpu collect --ids {shlex.quote(str(ids_file))}{out}{where}"
        )
    if len(rows) <= 5:
        ids = " ".join(shlex.quote(str(row["task_id"])) for row in rows)
        return (
            f"fetch the results of the {count} left in the mesh with: "
            f"meshgpu collect{out}{where} {ids}"
        )
    return (
        f"the ids of the {count} left in the mesh are on stdout; save them to a file and "
        f"fetch their results with: meshgpu collect --ids FILE{out}{where} (or rerun with "
        "--ids FILE)"
    )


def tasks_line(count: int, total: int, what: str) -> str:
    """The one wording of every "N of M tasks" summary of the CLI (submit, submit
    --no-wait, collect, an interrupted run): ``3 of 4 tasks done``."""
    return f"{count} of {total} task{'' if total == 1 else 's'} {what}"


ERRORS_SHOWN = 10
"""Failed tasks whose reason is printed; a full disk or a wrong model fails every task
with one reason, and 200 identical lines hide the summary under them."""


def outcome_line(report: dict[str, Any], output: Path, no_wait: bool, replicas: int) -> str:
    """The last line a person reads: how many tasks did what, and where the outputs are.

    Without it a successful submit printed nothing but a progress bar, and a --no-wait
    submission whose tasks were journaled on fewer nodes than --replicas asked for (a
    mesh smaller than that) said so only in --json's ``copies``."""
    rows = report["tasks"]
    if report.get("interrupted"):
        return interrupted_line(rows)
    failed = sum(1 for row in rows if row.get("state") not in ("done", "submitted"))
    if no_wait:
        submitted = len(rows) - failed
        line = tasks_line(submitted, len(rows), "submitted")
        copies = [row["copies"] for row in rows if row.get("copies")]
        if copies and min(copies) < replicas:
            line += (
                f"; some are journaled on only {min(copies)} node(s), fewer than "
                f"--replicas {replicas} (the mesh has fewer live nodes): losing that "
                "node before they run loses them"
            )
        return line + ("; collect the results with `meshgpu collect`" if submitted else "")
    done = sum(1 for row in rows if row.get("state") == "done")
    line = tasks_line(done, len(rows), "done")
    if failed:
        line += f", {failed} failed"
    if done:
        line += f"; outputs in {output}{os.sep}"
    return line


def interrupted_line(rows: list[dict[str, Any]]) -> str:
    """The summary of a run stopped by Ctrl-C: what got done, what waits in the mesh."""
    states = [row.get("state") for row in rows]
    done = states.count("done") + states.count("submitted")
    what = "submitted" if states.count("submitted") and not states.count("done") else "done"
    parts = [tasks_line(done, len(rows), what)]
    for state, words in (
        ("failed", "failed"),
        ("interrupted", "accepted and left in the mesh"),
        ("not submitted", "not submitted"),
    ):
        if states.count(state):
            parts.append(f"{states.count(state)} {words}")
    return "interrupted: " + ", ".join(parts)


def save_outputs(row: dict[str, Any], target: Path, outputs: dict[str, Any]) -> None:
    """Write one task's outputs and mark ``row`` done, or failed with why (a full disk
    on this machine must not stop the other tasks' results from being saved)."""
    import numpy as np

    try:
        np.savez(target, **outputs)
    except OSError as error:
        row.update(state="failed", error=f"result received but not saved: {target}: {error}")
    else:
        row.update(state="done", output=str(target))
