"""How the HTTP port listens (``meshgpu join --http-*``): no heavy imports, so the
daemon's settings can hold it without loading the web stack."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from meshgpu.errors import ConfigError

LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class HttpSettings:
    """Where and how the HTTP port listens (``meshgpu join --http-*``)."""

    port: int
    """0: any free port (tests); the CLI's ``--http-port 0`` turns HTTP off instead."""
    bind: str | None = None
    """None: 127.0.0.1 without API tokens, the gossip bind address with them."""
    tokens: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_body_bytes: int = 64 << 20
    max_connections: int = 256
    """Open connections at most (``http_max_connections``); the idlest makes room."""
    max_connections_per_client: int = 128
    """Open connections from one address at most (``http_max_connections_per_client``)."""
    header_timeout_s: float = 10.0
    """Seconds a request head may take to arrive whole (``http_header_timeout_s``)."""


def checked_bind(settings: HttpSettings, gossip_bind: str) -> str:
    """The address to listen on; refuses a non-loopback one without API tokens."""
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if settings.bind is None:
        return gossip_bind if settings.tokens is not None else "127.0.0.1"
    if settings.tokens is None and settings.bind not in LOOPBACK:
        raise ConfigError(
            f"--http-bind {settings.bind} would open the HTTP API (inference, the task table, "
            "the catalog) to the network without authentication; give --api-tokens FILE, or "
            "bind to 127.0.0.1"
        )
    return settings.bind
