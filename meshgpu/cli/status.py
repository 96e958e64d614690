"""``meshgpu status`` and ``meshgpu tasks``: what one peer knows of the mesh.

Both ask one daemon (found as for ``submit``) and render its answer; ``--json`` prints the
answer itself (its shape is in docs/client-api.md, section 5).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from meshgpu.cli.options import connection_options
from meshgpu.core.tasks.state import TASK_STATES


def _ask(peer: str | None, key_file: Path | None, op: str, **fields: Any) -> dict[str, Any]:
    import trio

    from meshgpu.client import AsyncClient
    from meshgpu.errors import MeshError

    async def ask() -> dict[str, Any]:
        async with AsyncClient(peer, key_file) as client:
            return await client.call(op, **fields)

    try:
        return trio.run(ask)
    except MeshError as error:
        raise click.ClickException(str(error)) from None


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _load_text(load: dict[str, Any] | None) -> tuple[str, str]:
    if not load:
        return "", ""
    busy = f"{load['active_tasks']} running, {load['free_slots']} free"
    if load.get("queue_length"):
        busy += f", {load['queue_length']} queued"
    if load.get("utilisation"):
        busy += f", {load['utilisation']:.0%} busy"
    devices = ",".join(load.get("devices") or []) + (" fp16" if load.get("fp16") else "")
    if load.get("usable_devices"):  # what passed its probe, by id and name
        devices = ", ".join(load["usable_devices"]) + (" (fp16)" if load.get("fp16") else "")
    if load.get("fallback_models"):
        devices += "; on onnxruntime: " + ", ".join(load["fallback_models"])
    if load.get("labels"):  # meshgpu join --label
        devices += "; " + " ".join(f"{k}={v}" for k, v in sorted(load["labels"].items()))
    return busy, devices


def member_rows(status: dict[str, Any]) -> list[dict[str, str]]:
    """One display row per member: who, where, state and, for a gone peer, when and why."""
    rows = []
    for member in status.get("members", []):
        state = str(member.get("state"))
        since = _ago(member.get("since_s"))
        reason = member.get("reason") or ""
        if state == "alive":
            note = ""
        elif state == "suspect":
            note = f"suspect for {since}: {reason}"
        elif state == "dead":
            note = f"declared dead {since} ago: {reason}"
        elif state == "left":
            note = f"left {since} ago: {reason}"
        else:
            note = f"{state} for {since}: {reason}"
        busy, devices = _load_text(member.get("load"))
        rows.append(_row(status, member, state, busy, devices, note))
    for gone in status.get("gone", []):
        if gone.get("state") == "refused":  # never a member: another version or mesh
            reason = gone.get("reason") or ""
            rows.append(_row(status, gone, "refused", "", "", f"refused: {reason}"))
    return rows


def _row(
    status: dict[str, Any],
    member: dict[str, Any],
    state: str,
    busy: str,
    devices: str,
    note: str,
) -> dict[str, str]:
    """One display row of ``member_rows``."""
    name = str(member.get("node_id"))
    marks = []
    if name == status.get("leader"):
        marks.append("leader")
    if name == status.get("node", {}).get("node_id"):
        marks.append("this peer")
    host, port = member.get("address") or ("?", 0)
    return {
        "name": name + (f" ({', '.join(marks)})" if marks else ""),
        "address": f"{host}:{port}",
        "state": state,
        "incarnation": str(member.get("incarnation", "")),
        "load": busy,
        "devices": devices,
        "note": note,
    }


def _groups_note(groups: Any) -> str:
    """`` (N of them task groups, M tasks in all)`` when the table holds any group.

    ``M`` counts the members of all N groups together; the former wording ("task groups
    of M members") read as M tasks in each group."""
    if not isinstance(groups, dict) or not groups.get("entries"):
        return ""
    return f" ({groups['entries']} of them task groups, {groups.get('members')} tasks in all)"


@click.command("status")
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's status answer as JSON.")
def status(peer: str | None, key_file: Path | None, as_json: bool) -> None:
    """Show the mesh as one peer sees it: members, leader, view, queue and tasks.

    Each member is listed with its address, state (alive, suspect, dead, left),
    incarnation, load and devices; a peer that was seen and is gone says when and why
    (suspected by whom, declared dead, left), and a node refused for speaking another
    protocol version or belonging to another mesh is listed as ``refused``, both sides
    named.
    """
    answer = _ask(peer, key_file, "status")
    if as_json:
        click.echo(json.dumps(answer))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    node = answer.get("node", {})
    key = f"key {node.get('key_fingerprint')}" if node.get("keyed") else "[red]OPEN (no key)[/red]"
    console.print(
        f"mesh [bold]{node.get('mesh')}[/bold] seen from [bold]{node.get('node_id')}[/bold] "
        f"({':'.join(map(str, node.get('address', [])))}), {key}, "
        f"up {_ago(node.get('uptime_s'))}"
        + (
            " [yellow]LEAVING: finishing or handing back its tasks, then it stops[/yellow]"
            if node.get("leaving")
            else ""
        )
    )
    console.print(
        f"leader [bold]{answer.get('leader')}[/bold] (view {answer.get('view')}), "
        f"queue length {answer.get('queue_length')}, tasks "
        + (", ".join(f"{k} {v}" for k, v in sorted(answer.get("tasks", {}).items())) or "none")
        + _groups_note(answer.get("groups"))
    )
    table = Table(show_lines=False)
    for column in ("name", "address", "state", "incarnation", "load", "devices", "note"):
        table.add_column(column, overflow="fold")
    colours = {
        "alive": "green",
        "suspect": "yellow",
        "dead": "red",
        "left": "dim",
        "refused": "magenta",
    }
    for row in member_rows(answer):
        colour = colours.get(row["state"], "white")
        table.add_row(*[f"[{colour}]{v}[/{colour}]" if k == "state" else v for k, v in row.items()])
    console.print(table)


@click.command("tasks")
@connection_options
@click.option("--state", type=click.Choice(TASK_STATES), help="Only tasks in this state.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as a JSON list.")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Rows shown, the newest (not JSON); 0 shows every row.",
)
def tasks(
    peer: str | None, key_file: Path | None, state: str | None, as_json: bool, limit: int
) -> None:
    """List the tasks one peer's replicated table holds: label, state, attempt, worker,
    holders. The label is the input file's name (`meshgpu submit`) or `label=` of the
    Python client; a task group's lists its members'.

    The table is a CRDT replicated across the mesh, so any peer shows (eventually) every
    task not yet collected; a failed task's row carries the reason.
    """
    fields = {} if state is None else {"state": state}
    rows = _ask(peer, key_file, "tasks", **fields)["tasks"]
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:  # an empty table's frame read as a failure to list
        click.echo(f"no {state} tasks in the table" if state else "no tasks in the table")
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table()
    # Ids are what people copy: kept on one line (the other columns fold).
    widest = max((len(str(row["task_id"])) for row in rows), default=4)
    table.add_column("task", no_wrap=True, min_width=widest)
    table.add_column("label", overflow="fold")
    for column in ("state", "try", "worker", "priority", "holders", "reason"):
        table.add_column(column, overflow="fold")
    for row in rows[-limit:] if limit > 0 else rows:
        members = int(row.get("members", 1))
        table.add_row(
            row["task_id"] + (f" (group of {members})" if members != 1 else ""),
            str(row.get("label") or ""),
            row["state"] + (" (collected)" if row.get("delivered") else ""),
            str(row["attempt"]),
            str(row.get("worker") or ""),
            row["priority"],
            ",".join(row.get("holders", [])),
            str(row.get("reason") or ""),
        )
    console.print(table)
    if 0 < limit < len(rows):
        print(f"({len(rows) - limit} older rows not shown; --limit 0 shows all)", file=sys.stderr)
