"""How a daemon runs: every knob of ``meshgpu join`` in one frozen object, and the
TOML file (``meshgpu join --config FILE``) that can set each of them.

The file has two tables, both optional, and nothing else::

    [daemon]            # any option of `meshgpu join`, named as in JOIN_FILE_KEYS
    mesh = "lab"
    peers = ["10.0.0.5:7946"]
    data_dir = "/var/lib/meshgpu"

    [mesh]              # protocol timings: meshgpu.core.config.MeshConfig
    profile = "wan"     # start from a timing profile (lan, the default, or wan)
    probe_interval = 0.2

Flags given on the command line override the file; the file overrides the built-in
defaults (and ``MESHGPU_DATA_DIR``). An unknown table or key, or a value of the wrong
type, is a :class:`~meshgpu.errors.ConfigError` that names the key and the file: a typo
in a config file must not silently leave a default in place. Relative paths in the file
are relative to the file's folder, so a file and its key can move together.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshgpu.core.config import MeshConfig
from meshgpu.daemon.api import (
    DEFAULT_HANDSHAKE_TIMEOUT_S,
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
)
from meshgpu.daemon.auth import MeshKey
from meshgpu.daemon.framing import DEFAULT_MAX_FRAME_BYTES
from meshgpu.errors import ConfigError
from meshgpu.http.settings import HttpSettings

BACKENDS = ("auto", "opencl", "onnxruntime")


@dataclass(frozen=True)
class DaemonSettings:
    """How one daemon runs; ``meshgpu join`` builds this from its flags."""

    data_dir: Path
    name: str | None = None
    bind: str = "0.0.0.0"
    port: int = 7946
    peers: tuple[str, ...] = ()
    mdns: bool = True
    mesh: str = "default"
    key: MeshKey | None = None
    """The key given at start (--key-file or MESHGPU_KEY); the keyring in the data dir
    holds the keys the node uses (auth/keyring.py)."""
    encrypt_verify_incoming: bool = True
    """Refuse envelopes that come without a key (false while migrating an open mesh)."""
    encrypt_verify_outgoing: bool = True
    """Seal with the primary key (false: send without it, while migrating an open mesh)."""
    slots: int = 1
    labels: tuple[tuple[str, str], ...] = ()
    """``(key, value)`` pairs gossiped with the load; tasks require or prefer them."""
    backend: str = "auto"
    device: str | None = None
    interface: str | None = None
    advertise: str | None = None
    mesh_config: MeshConfig = field(default_factory=MeshConfig)
    model_cache_bytes: int = 4 << 30
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    api_max_connections: int = DEFAULT_MAX_CONNECTIONS
    """Open TCP API connections at most; a new one takes the place of the idlest."""
    api_idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    """A TCP API connection with no request in flight and no complete frame this long
    is closed."""
    api_max_connections_per_client: int = DEFAULT_MAX_CONNECTIONS_PER_CLIENT
    """Open TCP API connections from one address at most; more are closed at once."""
    api_handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT_S
    """A new TCP API connection that has not begun a frame this long is closed."""
    seed_interval: float = 2.0
    load_interval: float = 0.5
    drain_timeout: float = 30.0
    duplicate_grace: float = 15.0
    max_clock_skew: float = 120.0
    http: HttpSettings | None = None
    """The HTTP port (meshgpu/http/); None: none (``meshgpu join`` serves one by default)."""


JOIN_FILE_KEYS: dict[str, str] = {
    "name": "string: node id used the first time (--name)",
    "bind": "string: address to listen on (--bind)",
    "port": "integer 0-65535 (--port)",
    "peers": 'list of "HOST:PORT" strings (--peer, repeated)',
    "mdns": "true or false (false is --no-mdns)",
    "mesh": "string: mesh name (--mesh)",
    "key_file": "path (--key-file)",
    "encrypt_verify_incoming": "true or false (--no-encrypt-verify-incoming is false)",
    "encrypt_verify_outgoing": "true or false (--no-encrypt-verify-outgoing is false)",
    "data_dir": "path (--data-dir)",
    "device": "string: device id (--device)",
    "backend": f"one of {', '.join(BACKENDS)} (--backend)",
    "slots": "integer >= 1 (--slots)",
    "labels": 'list of "KEY=VALUE" strings (--label, repeated)',
    "interface": "string: network interface (--interface)",
    "advertise": 'string "HOST" or "HOST:PORT": address peers should use (--advertise)',
    "verbose": "integer >= 0 (-v is 1, -vv is 2)",
    "max_frame_bytes": "integer >= 1048576: largest TCP frame sent or accepted (64 MiB)",
    "api_max_connections": "integer >= 1: open TCP API connections at most (512)",
    "api_idle_timeout_s": "number > 0: seconds an idle TCP API connection stays open (120)",
    "api_max_connections_per_client": "integer >= 1: TCP API connections from one address (100)",
    "api_handshake_timeout_s": "number > 0: seconds a new TCP API connection has to begin a "
    "frame (5)",
    "http_port": "integer 0-65535, 0 for no HTTP (--http-port)",
    "http_bind": "string: address of the HTTP port (--http-bind)",
    "http_max_connections": "integer >= 1: open HTTP connections at most (256)",
    "http_max_connections_per_client": "integer >= 1: HTTP connections from one address (128)",
    "http_header_timeout_s": "number > 0: seconds a request head may take to arrive (10)",
    "api_tokens": "path: hashed HTTP API tokens (--api-tokens)",
    "tls_cert": "path: HTTPS certificate (--tls-cert)",
    "tls_key": "path: HTTPS private key (--tls-key)",
}
"""Every key the ``[daemon]`` table accepts, with what its value must be."""
FILE_ONLY_KEYS = frozenset(
    {
        "max_frame_bytes",
        "api_max_connections",
        "api_idle_timeout_s",
        "api_max_connections_per_client",
        "api_handshake_timeout_s",
    }
)
"""Keys with no flag of ``meshgpu join``: settings a lab rarely changes (tests lower the
frame limit to exercise large payloads with small ones)."""
HTTP_FILE_ONLY_KEYS = {
    "http_max_connections": "max_connections",
    "http_max_connections_per_client": "max_connections_per_client",
    "http_header_timeout_s": "header_timeout_s",
}
"""Keys with no flag that go to the HTTP port's settings (``HttpSettings`` field names)."""

_PATHS = ("key_file", "data_dir", "api_tokens", "tls_cert", "tls_key")
_STRINGS = ("name", "bind", "mesh", "device", "interface", "advertise", "http_bind")


@dataclass(frozen=True)
class ConfigFile:
    """A parsed and checked ``--config`` file.

    ``daemon`` holds only the keys the file sets, with checked values (paths made
    absolute, ``peers`` as a tuple); ``mesh`` is the ``[mesh]`` table applied to the
    defaults (or to its ``profile``), ``mesh_table`` the table itself (for a
    ``--profile`` flag that overrides the file's).
    """

    path: Path
    daemon: Mapping[str, Any]
    mesh: MeshConfig
    mesh_table: Mapping[str, Any] = field(default_factory=dict)


def read_config_file(path: Path) -> ConfigFile:
    """Read and check ``path``; every problem is a ConfigError naming the file."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror or error}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    for key, value in document.items():
        if key not in ("daemon", "mesh"):
            raise ConfigError(
                f"config file {path}: unknown {'table' if isinstance(value, dict) else 'key'} "
                f"{key!r}; the file has a [daemon] table (options of `meshgpu join`) and a "
                "[mesh] table (protocol timings), and nothing else"
            )
        if not isinstance(value, dict):
            raise ConfigError(f"config file {path}: {key} must be a table ([{key}])")
    try:
        mesh = MeshConfig.from_mapping(document.get("mesh", {}))
    except ConfigError as error:
        raise ConfigError(f"config file {path}, [mesh] table: {error}") from None
    daemon = {key: _checked(path, key, value) for key, value in document.get("daemon", {}).items()}
    return ConfigFile(path=path, daemon=daemon, mesh=mesh, mesh_table=document.get("mesh", {}))


def _checked(path: Path, key: str, value: object) -> object:
    """``value`` of ``[daemon]`` key ``key``, checked (and paths resolved against ``path``)."""

    def wrong() -> ConfigError:
        return ConfigError(
            f"config file {path}, [daemon] table: {key} must be {JOIN_FILE_KEYS[key]}, "
            f"got {value!r}"
        )

    if key not in JOIN_FILE_KEYS:
        raise ConfigError(
            f"config file {path}, [daemon] table: unknown key {key!r}; known keys are "
            f"{', '.join(JOIN_FILE_KEYS)} (protocol timings go in the [mesh] table)"
        )
    if key in _STRINGS:
        if not isinstance(value, str) or not value:
            raise wrong()
        return value
    if key in _PATHS:
        if not isinstance(value, str) or not value:
            raise wrong()
        return (path.parent / Path(value).expanduser()).absolute()
    if key == "peers":
        if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
            raise wrong()
        return tuple(value)
    if key == "labels":
        if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
            raise wrong()
        return tuple(value)
    if key in ("mdns", "encrypt_verify_incoming", "encrypt_verify_outgoing"):
        if not isinstance(value, bool):
            raise wrong()
        return value
    if key == "backend":
        if value not in BACKENDS:
            raise wrong()
        return value
    if key in ("api_idle_timeout_s", "api_handshake_timeout_s", "http_header_timeout_s"):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise wrong()
        return float(value)
    bounds = {
        "api_max_connections": (1, None),
        "api_max_connections_per_client": (1, None),
        "http_max_connections": (1, None),
        "http_max_connections_per_client": (1, None),
        "port": (0, 65535),
        "http_port": (0, 65535),
        "slots": (1, None),
        "verbose": (0, None),
        "max_frame_bytes": (1 << 20, None),
    }[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise wrong()
    low, high = bounds
    if value < low or (high is not None and value > high):
        raise wrong()
    return value
