"""Which daemon a client talks to first, and which ones it fails over to.

A client needs one live peer; any peer serves the whole API. When the caller names none,
the candidates come, in this order, from:

1. ``MESHGPU_PEER`` (``HOST:PORT``, or several separated by commas);
2. a daemon on this machine: the ``daemon.json`` that ``meshgpu join`` writes in its data
   dir (``$MESHGPU_DATA_DIR``, else the XDG default), then ``127.0.0.1:7946``;
3. mDNS: a short browse for ``_meshgpu._udp.local.`` (the service port is the API port),
   only when nothing above answered, because a browse costs a second or two.

The first candidate that answers a ``ping`` wins. After that the member list from the
daemon's ``status`` is the better source, so :func:`failover_order` ranks the known
members (alive first, then suspect) ahead of the original candidates. When none answers,
:func:`no_daemon_error` and :func:`key_refusal` say why in one line.

Rejected: browsing mDNS first. It is the slowest source, and on a laptop with a local
daemon the local one is the right answer; users who want a particular peer say so.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshgpu.daemon.discovery import DEFAULT_PORT, parse_peer
from meshgpu.errors import (
    AuthenticationError,
    ClientError,
    ConfigError,
    IncompatibleDaemonError,
    IncompatiblePeerError,
    MeshKeyError,
)

if TYPE_CHECKING:
    from meshgpu.daemon.auth import MeshKey

LOCAL_DEFAULT = ("127.0.0.1", DEFAULT_PORT)
PEER_ENV = "MESHGPU_PEER"
STATE_FILE = "daemon.json"

Address = tuple[str, int]


@dataclass(frozen=True)
class Candidate:
    """A daemon address to try, and where it came from (for error messages)."""

    address: Address
    source: str

    def __str__(self) -> str:
        return f"{self.address[0]}:{self.address[1]} ({self.source})"


def parse_address(text: str, default_port: int = DEFAULT_PORT) -> Address:
    """``HOST:PORT`` (or ``HOST``, or ``[V6]:PORT``) as a (host, port) pair."""
    return parse_peer(text.strip(), default_port)


def default_data_dir(environ: Mapping[str, str]) -> Path:
    """The data dir ``meshgpu join`` uses when given none (same rule as the daemon)."""
    explicit = environ.get("MESHGPU_DATA_DIR")
    if explicit:
        return Path(explicit)
    base = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "meshgpu"


def local_daemon(data_dir: Path) -> Address | None:
    """The address a running local daemon wrote in its data dir, if it is readable."""
    try:
        state = json.loads((data_dir / STATE_FILE).read_text())
        host, port = str(state["host"]), int(state["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    return host, port


def initial_candidates(
    peer: str | Address | Sequence[str | Address] | None,
    environ: Mapping[str, str],
) -> list[Candidate]:
    """The peers to try, best first, before mDNS (see the module docstring)."""
    if peer is not None:
        given: list[str | Address] = []
        if isinstance(peer, str) or _is_address(peer):
            given.append(peer)  # type: ignore[arg-type]
        else:
            given.extend(peer)  # type: ignore[arg-type]
        return [Candidate(_as_address(item), "given") for item in given]
    found: list[Candidate] = []
    from_env = environ.get(PEER_ENV, "").strip()
    if from_env:
        for text in from_env.split(","):
            if text.strip():
                found.append(Candidate(parse_address(text), PEER_ENV))
        return found
    local = local_daemon(default_data_dir(environ))
    if local is not None:
        found.append(Candidate(local, "local daemon.json"))
    found.append(Candidate(LOCAL_DEFAULT, "local default port"))
    return _unique(found)


def failover_order(
    members: Iterable[Mapping[str, Any]],
    seeds: Iterable[Candidate],
    exclude: Iterable[Address] = (),
) -> list[Candidate]:
    """Where to reconnect: alive members, then suspect ones, then the original seeds.

    ``members`` are rows of a ``status`` answer; dead or departed members and the
    ``exclude``\\ d addresses (the peer that just failed) come last, not never: a node
    declared dead may be back (restarted), and the list is all the client has.
    """
    excluded = set(exclude)
    rank = {"alive": 0, "suspect": 1}
    rows = sorted(
        (row for row in members if isinstance(row.get("address"), list | tuple)),
        key=lambda row: (rank.get(str(row.get("state")), 2), str(row.get("node_id"))),
    )
    ordered = [
        Candidate((str(row["address"][0]), int(row["address"][1])), f"member {row['node_id']}")
        for row in rows
        if rank.get(str(row.get("state")), 2) < 2
    ]
    ordered += list(seeds)
    ordered += [
        Candidate((str(row["address"][0]), int(row["address"][1])), f"member {row['node_id']}")
        for row in rows
        if rank.get(str(row.get("state")), 2) == 2
    ]
    unique = _unique(ordered)
    return [c for c in unique if c.address not in excluded] + [
        c for c in unique if c.address in excluded
    ]


def browse_mdns(timeout: float = 2.0, mesh: str | None = None) -> list[Candidate]:
    """Daemons announcing ``_meshgpu._udp.local.`` within ``timeout`` (blocking; call it
    in a worker thread). Only ``mesh`` members when a mesh name is given."""
    from zeroconf import IPVersion, ServiceBrowser, ServiceStateChange, Zeroconf

    from meshgpu.daemon.discovery import SERVICE_TYPE

    found: list[Candidate] = []
    seen = threading.Event()
    zeroconf = Zeroconf(ip_version=IPVersion.V4Only)

    def on_change(zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        if state_change is ServiceStateChange.Removed:
            return
        info = zeroconf.get_service_info(service_type, name, timeout=int(timeout * 1000))
        if info is None or not info.port:
            return
        properties = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in (info.properties or {}).items()
        }
        if mesh is not None and properties.get("mesh") != mesh:
            return
        for host in info.parsed_addresses(IPVersion.V4Only)[:1]:
            found.append(Candidate((host, int(info.port)), f"mDNS {properties.get('id', name)}"))
            seen.set()

    browser = ServiceBrowser(zeroconf, SERVICE_TYPE, handlers=[on_change])
    try:
        seen.wait(timeout)
    finally:
        browser.cancel()
        zeroconf.close()
    return _unique(list(found))


def _is_address(value: object) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
    )


def _as_address(value: str | Address) -> Address:
    if isinstance(value, str):
        return parse_address(value)
    if _is_address(value):
        return value
    raise ConfigError(f"peer {value!r} must be 'HOST:PORT' or a (host, port) pair")


def _unique(candidates: Iterable[Candidate]) -> list[Candidate]:
    seen: set[Address] = set()
    result = []
    for candidate in candidates:
        if candidate.address not in seen:
            seen.add(candidate.address)
            result.append(candidate)
    return result


def no_daemon_error(tried: list[str]) -> ClientError:
    """Why the client found no daemon to talk to (none answered at all: a daemon that
    answered with another mesh key is :func:`key_refusal`'s case)."""
    reasons = "; ".join(reason.rstrip(".?") for reason in tried)
    return ClientError(
        f"no meshgpu daemon answered; tried {reasons}. Start one with `meshgpu join`, or "
        "name a peer (--peer HOST:PORT or MESHGPU_PEER)"
    )


KEY_HINT = "give it the mesh's key with --key-file PATH or MESHGPU_KEY"


def key_refusal(
    error: BaseException, candidate: Candidate, key: MeshKey | None
) -> MeshKeyError | IncompatibleDaemonError | None:
    """The one-line error for a daemon that answered but whose mesh key is not this
    client's (no key here, another key, or an open mesh and a key here), or that refused
    this client's protocol version (a daemon of another meshgpu release: its refusal
    names both versions); None for any other failure. Decided by the refusal's
    ``reason``, which the authenticator sets, not by the wording of its message."""
    cause = error.__cause__
    where = f"the meshgpu daemon at {candidate.address[0]}:{candidate.address[1]}"
    if isinstance(cause, IncompatiblePeerError) and cause.reason == "refused_by_peer":
        return IncompatibleDaemonError(f"{where} refused this client: {cause}")
    if not isinstance(cause, AuthenticationError):
        return None
    if cause.reason == "keyed_peer_but_no_key" or key is None:
        return MeshKeyError(f"{where} uses a mesh key and this client has none: {KEY_HINT}")
    if cause.reason == "unauthenticated":
        return MeshKeyError(
            f"{where} runs an open mesh (no key) and this client has key {key.fingerprint}: "
            "leave out --key-file and MESHGPU_KEY, or start the daemons with that key"
        )
    if cause.reason == "bad_tag":
        return MeshKeyError(
            f"{where} uses another mesh key than this client's ({key.fingerprint}): {KEY_HINT}"
        )
    return None
