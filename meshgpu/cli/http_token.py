"""``meshgpu http-token``: make an HTTP API token and the line of its token file."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("http-token")
@click.argument("role", type=click.Choice(["read", "infer", "admin"]))
@click.option("--label", default="", help="A name for whoever holds it (kept in the file).")
@click.option(
    "--append",
    "append_to",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Append the hashed line to this token file (for --api-tokens).",
)
def http_token(role: str, label: str, append_to: Path | None) -> None:
    """Print a new random HTTP API token with ROLE, and the line that lets it in.

    The token file (`meshgpu join --api-tokens FILE`) keeps only the token's sha256, so
    the file is not a secret; hand the token itself to its user, who sends it as
    'Authorization: Bearer TOKEN'. ROLE read sees, infer also runs inference, admin also
    changes the model catalog.
    """
    from meshgpu.http.tokens import hash_token, new_token

    token = new_token()
    line = f"{role} {hash_token(token)}" + (f" {label}" if label else "")
    if append_to is not None:
        with open(append_to, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        click.echo(f"appended to {append_to}: {line}", err=True)
    else:
        click.echo(f"token file line: {line}", err=True)
    click.echo(token)
