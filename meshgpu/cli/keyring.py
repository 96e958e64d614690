"""``meshgpu keyring``: the mesh keys of a running mesh (list, install, use, remove).

Each change is made by the daemon asked and pushed by it to every live member at once;
the answer lists, node by node, who took it. A node that was down or did not answer
takes it at its next keyring exchange with any member (docs/operations.md, rotating keys).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from meshgpu.cli.options import connection_options


def _ask(peer: str | None, key_file: Path | None, op: str, **fields: Any) -> dict[str, Any]:
    import trio

    from meshgpu.client import AsyncClient
    from meshgpu.errors import MeshError

    async def main() -> dict[str, Any]:
        async with AsyncClient(peer, key_file) as client:
            answer: dict[str, Any] = await client.call(op, **fields)
            return answer

    try:
        return trio.run(main)
    except MeshError as error:
        raise click.ClickException(str(error)) from None


def _report(answer: dict[str, Any], done: str) -> None:
    """One line per node; exit status 1 if a node did not take the change."""
    nodes = answer["nodes"]
    missed = [node for node in nodes if not node["ok"]]
    click.echo(f"{done}: {len(nodes) - len(missed)} of {len(nodes)} live nodes took it")
    for node in nodes:
        if node["ok"]:
            click.echo(f"  {node['node_id']}: primary {node['primary']}, keys {_keys(node)}")
        else:
            click.echo(f"  {node['node_id']}: NOT REACHED: {node['error']}")
    if missed:
        raise click.ClickException(
            f"{len(missed)} node(s) did not take it now; each takes it at its next keyring "
            "exchange with a member (within a minute once reachable): check again with "
            "`meshgpu keyring list`"
        )


def _keys(node: dict[str, Any]) -> str:
    return ", ".join(node["keys"]) or "none"


@click.group("keyring")
def keyring() -> None:
    """The mesh keys of a running mesh: list, install, use (make primary), remove.

    A rotation is three steps, each across the running mesh: `install NEW.key`,
    `use NEWID`, `remove OLDID`. Only the primary key encrypts; every installed key
    decrypts. Each node keeps its keyring in its data dir (keyring.json).
    """


@keyring.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@connection_options
def list_keys(as_json: bool, peer: str | None, key_file: Path | None) -> None:
    """Each key of the mesh: how many live nodes hold it, and which is primary where."""
    answer = _ask(peer, key_file, "keyring_list")
    nodes = answer["nodes"]
    if as_json:
        click.echo(json.dumps(answer))
        return
    reached = [node for node in nodes if node["ok"]]
    fingerprints = sorted({f for node in reached for f in node["keys"]})
    click.echo(f"{len(reached)} of {len(nodes)} live nodes answered")
    for fingerprint in fingerprints:
        holders = sum(1 for node in reached if fingerprint in node["keys"])
        primaries = sum(1 for node in reached if node["primary"] == fingerprint)
        role = f"primary on {primaries}" if primaries else "installed"
        click.echo(f"  {fingerprint}  held by {holders}/{len(reached)}  {role}")
    removed = sorted({f for node in reached for f in node["removed"]})
    if removed:
        click.echo(f"  removed: {', '.join(removed)}")
    for node in nodes:
        if not node["ok"]:
            click.echo(f"  {node['node_id']}: NOT REACHED: {node['error']}")


@keyring.command("install")
@click.argument("keyfile", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@connection_options
def install(keyfile: Path, peer: str | None, key_file: Path | None) -> None:
    """Install the key in KEYFILE (from `meshgpu keygen`) on every node: it decrypts."""
    from meshgpu.daemon.auth import MeshKey
    from meshgpu.errors import MeshError

    try:
        key = MeshKey.from_file(keyfile)
    except MeshError as error:
        raise click.ClickException(str(error)) from None
    answer = _ask(peer, key_file, "keyring_install", key=key.secret)
    _report(answer, f"installed key {answer['key']}")


@keyring.command("use")
@click.argument("keyid")
@connection_options
def use(keyid: str, peer: str | None, key_file: Path | None) -> None:
    """Make the installed key KEYID (its fingerprint, or 4+ hex digits of it) primary."""
    answer = _ask(peer, key_file, "keyring_use", key_id=keyid)
    _report(answer, f"key {answer['key']} is primary")


@keyring.command("remove")
@click.argument("keyid")
@connection_options
def remove(keyid: str, peer: str | None, key_file: Path | None) -> None:
    """Remove the key KEYID from every node (refused for the primary key)."""
    answer = _ask(peer, key_file, "keyring_remove", key_id=keyid)
    _report(answer, f"removed key {answer['key']}")
