"""``meshgpu models``: the mesh-wide model catalog (name -> sha256 and version).

A name added on one node is served by every node (the HTTP API's Open Inference
Protocol, ``/v2/models/NAME``); the bytes are uploaded to the node asked and fetched by
the others when first used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from meshgpu.cli.options import connection_options


def _run(peer: str | None, key_file: Path | None, work: Any) -> Any:
    import trio

    from meshgpu.client import AsyncClient
    from meshgpu.errors import MeshError

    async def main() -> Any:
        async with AsyncClient(peer, key_file) as client:
            return await work(client)

    try:
        return trio.run(main)
    except MeshError as error:
        raise click.ClickException(str(error)) from None


@click.group("models")
def models() -> None:
    """The mesh-wide model catalog: add, list and remove models by name."""


@models.command("add")
@click.argument("name")
@click.argument("model", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--max-batch",
    type=click.IntRange(1, 1024),
    default=None,
    help="Most rows of the first dimension a worker runs at once, concatenating tasks "
    "(1: no batching). Default: 8 when every input and output has the same symbolic "
    "first dimension, else 1.",
)
@click.option(
    "--max-delay-ms",
    type=click.FloatRange(0, 10_000),
    default=None,
    help="Longest a worker waits for more tasks when a batch is not full (default 0: "
    "batch only what is already waiting).",
)
@connection_options
def add(
    name: str,
    model: Path,
    max_batch: int | None,
    max_delay_ms: float | None,
    peer: str | None,
    key_file: Path | None,
) -> None:
    """Name the ONNX model file MODEL NAME in every node's catalog, with its dynamic
    batching settings (docs/task-queue.md, "Dynamic batching on the worker")."""
    from meshgpu.cli.preflight import model_inputs
    from meshgpu.client.link import UPLOAD_CHUNK_BYTES
    from meshgpu.client.models import ModelBlob
    from meshgpu.errors import MeshError

    blob = ModelBlob.of(model)
    try:  # named by the user's file, before anything is uploaded
        model_inputs(blob)
    except MeshError as error:
        raise click.ClickException(str(error)) from None

    async def work(client: Any) -> dict[str, Any]:
        if not (await client.call("has_model", digest=blob.digest))["has"]:
            for start in range(0, len(blob.data), UPLOAD_CHUNK_BYTES):
                end = start + UPLOAD_CHUNK_BYTES
                await client.call(
                    "put_model",
                    digest=blob.digest,
                    data=blob.data[start:end],
                    more=end < len(blob.data),
                )
        settings: dict[str, Any] = {}
        if max_batch is not None:
            settings["max_batch"] = max_batch
        if max_delay_ms is not None:
            settings["max_delay_ms"] = max_delay_ms
        answer: dict[str, Any] = await client.call(
            "catalog_set", name=name, digest=blob.digest, **settings
        )
        return answer

    answer = _run(peer, key_file, work)
    click.echo(
        f"{answer['name']}: version {answer['version']}, sha256 {answer['digest']}, "
        f"{_batching_text(answer)}"
    )


def _batching_text(row: dict[str, Any]) -> str:
    """How a catalog row batches, in words."""
    max_batch = row.get("max_batch")
    if max_batch is None:
        return "batching: worker default"
    if max_batch <= 1:
        return "no batching"
    return f"batch <= {max_batch}, delay {row.get('max_delay_ms', 0):g} ms"


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@connection_options
def list_models(as_json: bool, peer: str | None, key_file: Path | None) -> None:
    """Every model of the catalog: name, version, sha256, and whether this node has it."""

    async def work(client: Any) -> list[dict[str, Any]]:
        return list((await client.call("catalog"))["models"])

    rows = _run(peer, key_file, work)
    if as_json:
        # one line, one document, as every other --json output (a pipe reads it line by line)
        click.echo(json.dumps(rows))
        return
    for row in rows:
        notes = [n for n, on in (("shipped", row["shipped"]), ("here", row["here"])) if on]
        click.echo(
            f"{row['name']:<24} v{row['version']:<4} {row['digest'][:16]}  "
            f"{_batching_text(row):<28} {', '.join(notes)}"
        )


@models.command("remove")
@click.argument("name")
@connection_options
def remove(name: str, peer: str | None, key_file: Path | None) -> None:
    """Take NAME out of the catalog on every node (its bytes stay in the model caches)."""

    async def work(client: Any) -> dict[str, Any]:
        answer: dict[str, Any] = await client.call("catalog_remove", name=name)
        return answer

    answer = _run(peer, key_file, work)
    if not answer["removed"]:
        raise click.ClickException(f"no model named {name!r} in the catalog")
    click.echo(f"removed {name}")
