"""``meshgpu keygen``: make a mesh key file."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("keygen")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path), default="mesh.key")
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
def keygen(path: Path, force: bool) -> None:
    """Write a new random 32-byte mesh key to PATH (mode 0600).

    Copy the file to every machine of the mesh and start each daemon with
    `meshgpu join --key-file PATH` (or put its contents in MESHGPU_KEY). With a key,
    every datagram and frame is authenticated; peers without it are refused.
    """
    from meshgpu.daemon.auth import MeshKey

    if path.exists():
        if not force:
            raise click.ClickException(f"{path} exists; use --force to replace it")
        path.unlink()
    key = MeshKey.generate()
    try:
        key.write(path)
    except OSError as error:
        raise click.ClickException(f"cannot write {path}: {error}") from None
    click.echo(f"wrote mesh key {path} (fingerprint {key.fingerprint}); keep it secret")
