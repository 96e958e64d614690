"""``meshgpu join``: run this machine's daemon in the foreground.

Every option can also come from a TOML file (``--config``; format and checks in
:mod:`meshgpu.daemon.settings`): a flag given on the command line wins over the file,
the file wins over the defaults shown by ``--help``.
"""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

DEFAULT_DATA_DIR = Path(
    os.environ.get("MESHGPU_DATA_DIR")
    or Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "meshgpu"
)
STATE_FILE = "daemon.json"
"""Written in the data dir while the daemon runs: how local clients find it."""


@click.command("join")
@click.option(
    "--name",
    help="Node id, given at the first start: 1 to 64 bytes, no control characters (kept "
    "in the data dir; a different one later is refused).",
)
@click.option("--bind", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=7946,
    show_default=True,
    help="UDP gossip and TCP API port (0: any free port).",
)
@click.option(
    "--peer",
    "peers",
    multiple=True,
    metavar="HOST:PORT",
    help="Static seed peer (repeatable), for networks without multicast.",
)
@click.option("--no-mdns", is_flag=True, help="Do not announce or browse with mDNS.")
@click.option("--mesh", default="default", show_default=True, help="Mesh name (mDNS TXT).")
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Mesh key from `meshgpu keygen` (or set MESHGPU_KEY).",
)
@click.option(
    "--encrypt-verify-incoming/--no-encrypt-verify-incoming",
    default=True,
    show_default=True,
    help="With a key: refuse traffic that comes without it. Off only while migrating an "
    "open mesh to encryption (docs/operations.md).",
)
@click.option(
    "--encrypt-verify-outgoing/--no-encrypt-verify-outgoing",
    default=True,
    show_default=True,
    help="With a key: encrypt what this node sends. Off only while migrating an open mesh "
    "to encryption (docs/operations.md).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DATA_DIR,
    show_default=True,
    help="Identity, journal, payloads and model cache.",
)
@click.option(
    "--device",
    help="Device id to run on (see `meshgpu devices`). synthetic:MS (benchmarks and tests "
    "only) holds a slot for MS milliseconds and runs no inference.",
)
@click.option(
    "--backend",
    type=click.Choice(["auto", "opencl", "onnxruntime"]),  # settings.BACKENDS
    default="auto",
    show_default=True,
    help="Inference backend.",
)
@click.option(
    "--slots", type=click.IntRange(min=1), default=1, show_default=True, help="Tasks run at once."
)
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="Label of this node (repeatable), gossiped with its load: tasks submitted with "
    "--require KEY=VALUE run only on nodes carrying it, --prefer KEY=VALUE prefer them.",
)
@click.option("--interface", help="Pin mDNS and gossip to this network interface (e.g. eth0).")
@click.option(
    "--advertise",
    metavar="HOST[:PORT]",
    help="Address peers should use to reach this node (gossiped and announced instead of "
    "the bound one): a NAT or port forward's outside address; PORT defaults to --port.",
)
@click.option(
    "--profile",
    type=click.Choice(["lan", "wan"]),  # core.config.PROFILES
    help="Timing profile of the mesh (every node of a mesh uses the same): lan (the "
    "default) or wan, for sites joined across a wide-area network [default: the config "
    "file's [mesh] profile, else lan].",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="TOML file: a [daemon] table with any option above (data_dir, key_file, "
    "peers = [...], mdns = false, slots, ...; see docs/operations.md) and a [mesh] table "
    "of protocol timings. Flags given here override the file; unknown keys are errors.",
)
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="HTTP port: Open Inference Protocol, /mesh, /metrics, dashboard (0: no HTTP).",
)
@click.option(
    "--http-bind",
    help="Address of the HTTP port [default: 127.0.0.1; with --api-tokens, --bind's].",
)
@click.option(
    "--api-tokens",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Hashed HTTP API tokens with roles (see `meshgpu http-token`); every HTTP request "
    "then needs 'Authorization: Bearer TOKEN', and --http-bind may be any address.",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="HTTPS certificate (PEM).",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="HTTPS private key (PEM).",
)
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
def join(
    name: str | None,
    bind: str,
    port: int,
    peers: tuple[str, ...],
    no_mdns: bool,
    mesh: str,
    key_file: Path | None,
    encrypt_verify_incoming: bool,
    encrypt_verify_outgoing: bool,
    data_dir: Path,
    device: str | None,
    backend: str,
    slots: int,
    labels: tuple[str, ...],
    interface: str | None,
    advertise: str | None,
    profile: str | None,
    config_file: Path | None,
    http_port: int,
    http_bind: str | None,
    api_tokens: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    verbose: int,
) -> None:
    """Join (or start) a mesh: run this machine's meshgpu daemon until SIGINT/SIGTERM.

    Peers are found by mDNS on the LAN and by --peer seeds. The first signal leaves
    gracefully (running tasks finish or are handed back); a second stops at once.

    Options can also be set in a --config file (flags on the command line win).
    """
    import logging

    import trio

    from meshgpu.core.config import MeshConfig
    from meshgpu.core.tasks.spec import parse_labels
    from meshgpu.daemon.auth import load_mesh_key
    from meshgpu.daemon.discovery import parse_advertise, parse_peer
    from meshgpu.daemon.foreground import serve_until_signalled
    from meshgpu.daemon.framing import keep_frame_memory
    from meshgpu.daemon.runtime import Daemon
    from meshgpu.daemon.settings import (
        FILE_ONLY_KEYS,
        HTTP_FILE_ONLY_KEYS,
        DaemonSettings,
        read_config_file,
    )
    from meshgpu.errors import MeshError
    from meshgpu.http.settings import HttpSettings, checked_bind

    options: dict[str, Any] = {
        "name": name,
        "bind": bind,
        "port": port,
        "peers": peers,
        "mdns": not no_mdns,
        "mesh": mesh,
        "key_file": key_file,
        "encrypt_verify_incoming": encrypt_verify_incoming,
        "encrypt_verify_outgoing": encrypt_verify_outgoing,
        "data_dir": data_dir,
        "device": device,
        "backend": backend,
        "slots": slots,
        "labels": labels,
        "interface": interface,
        "advertise": advertise,
        "verbose": verbose,
        "max_frame_bytes": None,  # config file only
        "api_max_connections": None,  # config file only
        "api_idle_timeout_s": None,  # config file only
        "api_max_connections_per_client": None,  # config file only
        "api_handshake_timeout_s": None,  # config file only
        "http_max_connections": None,  # config file only
        "http_max_connections_per_client": None,  # config file only
        "http_header_timeout_s": None,  # config file only
        "http_port": http_port,
        "http_bind": http_bind,
        "api_tokens": api_tokens,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
    }
    try:
        mesh_table: dict[str, Any] = {}
        if config_file is not None:
            from_file = read_config_file(config_file)
            mesh_table = dict(from_file.mesh_table)
            context = click.get_current_context()
            for key, value in from_file.daemon.items():
                parameter = _PARAMETER_OF_KEY.get(key, key)
                if context.get_parameter_source(parameter) in _NOT_GIVEN:
                    options[key] = value
        if profile is not None:
            mesh_table["profile"] = profile  # the flag wins over the file's profile
        mesh_config = MeshConfig.from_mapping(mesh_table)
        for peer in options["peers"]:
            parse_peer(peer)  # refuse a malformed seed before anything starts
        if options["advertise"]:
            parse_advertise(options["advertise"], options["port"])
        verbose = options["verbose"]
        http = None
        if options["http_port"]:
            http = HttpSettings(
                port=options["http_port"],
                bind=options["http_bind"],
                tokens=options["api_tokens"],
                tls_cert=options["tls_cert"],
                tls_key=options["tls_key"],
                **{
                    field: options[key]
                    for key, field in HTTP_FILE_ONLY_KEYS.items()
                    if options[key] is not None
                },
            )
            checked_bind(http, options["bind"])  # refuse an open bind before anything starts
        settings = DaemonSettings(
            data_dir=Path(options["data_dir"]).expanduser(),
            name=options["name"],
            bind=options["bind"],
            port=options["port"],
            peers=tuple(options["peers"]),
            mdns=options["mdns"],
            mesh=options["mesh"],
            key=load_mesh_key(options["key_file"], os.environ),
            encrypt_verify_incoming=options["encrypt_verify_incoming"],
            encrypt_verify_outgoing=options["encrypt_verify_outgoing"],
            slots=options["slots"],
            labels=parse_labels(list(options["labels"]), "node label"),
            backend=options["backend"],
            device=options["device"],
            interface=options["interface"],
            advertise=options["advertise"],
            mesh_config=mesh_config,
            http=http,
            **{key: options[key] for key in FILE_ONLY_KEYS if options[key] is not None},
        )
    except (MeshError, OSError) as error:
        raise click.ClickException(str(error)) from None

    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if verbose < 2:
        logging.getLogger("zeroconf").setLevel(logging.WARNING)

    state_path = settings.data_dir / STATE_FILE
    wrote_state: list[Path] = []

    def started(daemon: Daemon) -> None:
        host, bound_port = daemon.listen_address
        key = daemon.keyring.primary
        outside = daemon.address
        click.echo(
            f"meshgpu node {daemon.node_id} listening on {host}:{bound_port} "
            + (
                f"(advertised as {outside[0]}:{outside[1]}) "
                if outside != (host, bound_port)
                else ""
            )
            + f"(udp gossip + tcp api), mesh {settings.mesh!r}, "
            + (f"mesh key {key.fingerprint}" if key else "NO MESH KEY (open mesh)"),
        )
        state_path.write_text(
            json.dumps(
                {
                    "node_id": daemon.node_id,
                    "host": host,
                    "port": bound_port,
                    "pid": os.getpid(),
                    "mesh": settings.mesh,
                }
            )
            + "\n"
        )
        wrote_state.append(state_path)

    keep_frame_memory()  # large frames reuse the heap's pages (daemon/framing.py)
    try:
        trio.run(serve_until_signalled, Daemon(settings), started)
    except MeshError as error:
        raise click.ClickException(str(error)) from None
    finally:
        for path in wrote_state:  # never another daemon's file (a refused second start)
            path.unlink(missing_ok=True)
        # The daemon stopped and closed its files. Python's last garbage collection, as
        # the process exits, would walk every object left (onnxruntime's, onnx's, the
        # daemon's): 0.3 CPU s, 5 s and more of a refused start's exit on a loaded
        # machine. Frozen objects are skipped by it (and freed with the process).
        gc.freeze()


_PARAMETER_OF_KEY = {"mdns": "no_mdns"}
"""Config-file keys whose click parameter has another name (``mdns = false`` is --no-mdns)."""
_NOT_GIVEN = (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
"""Parameter sources that a config-file value overrides (the flag was not typed)."""
