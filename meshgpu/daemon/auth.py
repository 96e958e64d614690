"""The mesh key and the envelope every datagram and frame travels in.

Why an envelope at all: the daemon must (a) authenticate traffic when the mesh has a key,
(b) refuse replays, and (c) know *which node* sent a datagram before the core has decoded
it, so that two live nodes with one id (a copied data dir) can be told apart. One small
binary header does all three and is the same with or without a key::

    magic "MG" | version | flags | channel | sender-len | sender | session(8)
    | counter(8) | timestamp_ms(8) | payload | tag(32, only when keyed)

* ``sender`` is the node id (or a client's id); ``session`` is random per sending
  session (one per daemon process for UDP, one per TCP connection), so a restarted
  node or a second process with the same id is a *different* session.
* ``counter`` increases by one per envelope of a session; the receiver keeps a
  sliding window per (sender, session) as IPsec does (RFC 4303 section 3.4.3) and drops
  anything it has seen or that is older than the window.
* ``timestamp_ms`` is the sender's wall clock; envelopes older or newer than
  ``max_clock_skew`` are dropped, so a replay recorded before the receiver restarted
  (its windows are in memory only) is still refused.
* ``tag`` is HMAC-SHA256 (RFC 2104) over everything before it, keyed with a key
  derived from the mesh key, and checked in constant time.
* ``channel`` (datagram or frame) is under the tag, so a captured datagram cannot be
  injected into a TCP stream or the other way round.

Rejected alternatives: AEAD (ChaCha20-Poly1305) would also hide payloads, but needs the
``cryptography`` package, which is not in the fixed stack, and a lab mesh's threat is a
stray or hostile sender, not eavesdropping; a challenge-response handshake per TCP
connection costs a round trip per connection and does nothing for UDP.

Without a key the envelope is the same minus the tag; nothing is authenticated and the
daemon says so loudly at start.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import NoReturn

from meshgpu.errors import AuthenticationError, ConfigError, DecodeError

MAGIC = b"MG"
VERSION = 1
FLAG_KEYED = 0x01
TAG_BYTES = 32
SESSION_BYTES = 8
KEY_BYTES = 32
MAX_SENDER_BYTES = 64
KEY_ENV = "MESHGPU_KEY"

_FIXED = struct.Struct("!2sBBBB")  # magic, version, flags, channel, sender length
_NONCE = struct.Struct("!8sQQ")  # session, counter, timestamp_ms


class Channel(IntEnum):
    """What the envelope travels on; authenticated, so one cannot pose as the other."""

    DATAGRAM = 0
    FRAME = 1


@dataclass(frozen=True)
class MeshKey:
    """A shared 32-byte secret; holders of it are members of the mesh."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise ConfigError(
                f"a mesh key must be {KEY_BYTES} bytes, got {len(self.secret)}; "
                "make one with `meshgpu keygen`"
            )

    @classmethod
    def generate(cls) -> MeshKey:
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def from_text(cls, text: str, *, origin: str) -> MeshKey:
        """Parse the 64 hex digits `meshgpu keygen` writes (whitespace ignored)."""
        cleaned = "".join(text.split())
        try:
            secret = bytes.fromhex(cleaned)
        except ValueError:
            raise ConfigError(
                f"{origin} does not hold a mesh key: expected {KEY_BYTES * 2} hex digits; "
                "make one with `meshgpu keygen`"
            ) from None
        if len(secret) != KEY_BYTES:
            raise ConfigError(
                f"{origin} holds {len(secret)} bytes, a mesh key has {KEY_BYTES}; "
                "make one with `meshgpu keygen`"
            )
        return cls(secret)

    @classmethod
    def from_file(cls, path: Path) -> MeshKey:
        try:
            text = path.read_text(encoding="ascii")
        except FileNotFoundError:
            raise ConfigError(
                f"mesh key file {path} does not exist; make one with `meshgpu keygen {path}`"
            ) from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"cannot read mesh key file {path}: {error}") from None
        return cls.from_text(text, origin=str(path))

    def write(self, path: Path) -> None:
        """Write the key as hex text, readable by its owner only (mode 0600)."""
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(self.secret.hex() + "\n")
        os.chmod(path, 0o600)

    @property
    def fingerprint(self) -> str:
        """A short, non-secret name for the key, safe to print and compare across nodes."""
        return hashlib.sha256(b"meshgpu/fingerprint/" + self.secret).hexdigest()[:12]

    def mac_key(self) -> bytes:
        """The HMAC key, derived so the raw secret is used for nothing else."""
        return hmac.new(self.secret, b"meshgpu/v1/envelope-mac", hashlib.sha256).digest()


def load_mesh_key(key_file: Path | None, environ: Mapping[str, str]) -> MeshKey | None:
    """The mesh key from ``--key-file`` (first) or ``MESHGPU_KEY``; None means an open mesh."""
    if key_file is not None:
        return MeshKey.from_file(key_file)
    text = environ.get(KEY_ENV, "").strip()
    if text:
        return MeshKey.from_text(text, origin=f"${KEY_ENV}")
    return None


@dataclass(frozen=True, slots=True)
class Envelope:
    """An opened envelope: who sent it, in which session, and the payload inside."""

    sender: str
    session: bytes
    counter: int
    timestamp_ms: int
    channel: Channel
    payload: bytes
    from_self: bool = False
    """True when the session is one this authenticator sealed (a self-send or a reflection)."""


@dataclass
class _ReplayWindow:
    """Sliding window of seen counters for one (sender, session), RFC 4303 style."""

    highest: int = -1
    seen: int = 0  # bit i set <=> counter (highest - i) was accepted
    last_used: float = 0.0

    def check(self, counter: int, size: int) -> str | None:
        """Why ``counter`` must be refused, or None if it is new."""
        if counter > self.highest:
            return None
        offset = self.highest - counter
        if offset >= size:
            return "older than the replay window"
        if self.seen >> offset & 1:
            return "replayed"
        return None

    def accept(self, counter: int, size: int) -> None:
        if counter > self.highest:
            shift = counter - self.highest
            self.seen = (self.seen << shift | 1) & ((1 << size) - 1)
            self.highest = counter
        else:
            self.seen |= 1 << (self.highest - counter)


class Sealer:
    """One sending session: seals payloads with an increasing counter."""

    def __init__(self, authenticator: Authenticator, channel: Channel, session: bytes) -> None:
        self._authenticator = authenticator
        self._channel = channel
        self.session = session
        self._counter = 0

    def seal(self, payload: bytes) -> bytes:
        counter = self._counter
        self._counter += 1
        return self._authenticator.seal_with(self._channel, self.session, counter, payload)


class Authenticator:
    """Seals outgoing envelopes and opens incoming ones for one node (or client).

    ``open`` raises :class:`AuthenticationError` or :class:`DecodeError` for anything it
    refuses, after counting it in ``counters`` under a key that says why; callers drop
    the datagram (or close the connection) and go on serving.
    """

    def __init__(
        self,
        key: MeshKey | None,
        sender: str,
        *,
        max_clock_skew: float = 120.0,
        window: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        encoded = sender.encode()
        if not encoded or len(encoded) > MAX_SENDER_BYTES:
            raise ConfigError(f"sender id {sender!r} must be 1 to {MAX_SENDER_BYTES} bytes")
        self.key = key
        self.sender = sender
        self._sender_bytes = encoded
        self._mac_key = key.mac_key() if key is not None else None
        self._max_skew_ms = int(max_clock_skew * 1000)
        self._window = window
        self._clock = clock
        self._windows: dict[tuple[str, bytes], _ReplayWindow] = {}
        self._own_sessions: set[bytes] = set()
        self._opens_since_prune = 0
        self.counters: dict[str, int] = {}

    @property
    def keyed(self) -> bool:
        return self._mac_key is not None

    def new_session(self, channel: Channel) -> Sealer:
        """A fresh sending session (one per process for UDP, one per TCP connection)."""
        session = secrets.token_bytes(SESSION_BYTES)
        self._own_sessions.add(session)
        return Sealer(self, channel, session)

    def end_session(self, sealer: Sealer) -> None:
        """Forget a finished TCP session so the set of own sessions stays small."""
        self._own_sessions.discard(sealer.session)

    def overhead(self) -> int:
        """Bytes the envelope adds to a payload (keep datagrams under the MTU with it)."""
        tag = TAG_BYTES if self.keyed else 0
        return _FIXED.size + len(self._sender_bytes) + _NONCE.size + tag

    def seal_with(self, channel: Channel, session: bytes, counter: int, payload: bytes) -> bytes:
        flags = FLAG_KEYED if self._mac_key is not None else 0
        header = _FIXED.pack(MAGIC, VERSION, flags, channel, len(self._sender_bytes))
        nonce = _NONCE.pack(session, counter, int(self._clock() * 1000))
        body = b"".join((header, self._sender_bytes, nonce, payload))
        if self._mac_key is None:
            return body
        return body + hmac.new(self._mac_key, body, hashlib.sha256).digest()

    def open(self, data: bytes, channel: Channel) -> Envelope:
        """Check and unwrap one envelope; raises (and counts) when it must be dropped."""
        if len(data) < _FIXED.size:
            self._refuse("malformed", "envelope shorter than its header", DecodeError)
        magic, version, flags, wire_channel, sender_length = _FIXED.unpack_from(data)
        if magic != MAGIC:
            self._refuse("malformed", "not a meshgpu envelope (bad magic)", DecodeError)
        if version != VERSION:
            self._refuse(
                "bad_version",
                f"envelope version {version}, this node speaks {VERSION}; upgrade the older node",
                DecodeError,
            )
        keyed = bool(flags & FLAG_KEYED)
        tag_length = TAG_BYTES if keyed else 0
        nonce_at = _FIXED.size + sender_length
        payload_at = nonce_at + _NONCE.size
        if len(data) < payload_at + tag_length:
            self._refuse("malformed", "envelope truncated", DecodeError)
        try:
            sender = data[_FIXED.size : nonce_at].decode()
        except UnicodeDecodeError:
            self._refuse("malformed", "sender id is not UTF-8", DecodeError)
        session, counter, timestamp_ms = _NONCE.unpack_from(data, nonce_at)
        if self._mac_key is None:
            if keyed:
                self._refuse(
                    "keyed_peer_but_no_key",
                    f"{sender} uses a mesh key and this node has none; "
                    "start it with --key-file or MESHGPU_KEY",
                    AuthenticationError,
                )
        else:
            if not keyed:
                self._refuse(
                    "unauthenticated",
                    f"{sender} sent without a mesh key; give it the mesh key file",
                    AuthenticationError,
                )
            body, tag = data[:-TAG_BYTES], data[-TAG_BYTES:]
            expected = hmac.new(self._mac_key, body, hashlib.sha256).digest()
            if not hmac.compare_digest(tag, expected):
                self._refuse(
                    "bad_tag",
                    f"envelope claiming to be from {sender} fails authentication "
                    "(wrong mesh key, or altered in transit)",
                    AuthenticationError,
                )
        if wire_channel != channel:
            self._refuse("wrong_channel", "envelope sealed for another channel", DecodeError)
        envelope = Envelope(
            sender=sender,
            session=session,
            counter=counter,
            timestamp_ms=timestamp_ms,
            channel=Channel(wire_channel),
            payload=bytes(data[payload_at : len(data) - tag_length]),
            from_self=session in self._own_sessions,
        )
        if self._mac_key is not None and not envelope.from_self:
            self._check_fresh(envelope)
        self._count("accepted")
        return envelope

    def _check_fresh(self, envelope: Envelope) -> None:
        now = self._clock()
        now_ms = int(now * 1000)
        if abs(now_ms - envelope.timestamp_ms) > self._max_skew_ms:
            self._refuse(
                "stale",
                f"envelope from {envelope.sender} is {(now_ms - envelope.timestamp_ms) / 1000:.0f}"
                f" s old by our clock (limit {self._max_skew_ms / 1000:.0f} s): a replay, or "
                "clocks out of step (run NTP)",
                AuthenticationError,
            )
        slot = (envelope.sender, envelope.session)
        window = self._windows.get(slot)
        if window is None:
            window = self._windows[slot] = _ReplayWindow()
        reason = window.check(envelope.counter, self._window)
        if reason is not None:
            self._refuse(
                "replayed",
                f"envelope {envelope.counter} from {envelope.sender} {reason}",
                AuthenticationError,
            )
        window.accept(envelope.counter, self._window)
        window.last_used = now
        self._opens_since_prune += 1
        if self._opens_since_prune >= 1024:
            self._prune(now)

    def _prune(self, now: float) -> None:
        """Forget windows idle for twice the skew: their envelopes would be stale anyway."""
        self._opens_since_prune = 0
        horizon = now - 2 * self._max_skew_ms / 1000
        for slot in [slot for slot, w in self._windows.items() if w.last_used < horizon]:
            del self._windows[slot]

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _refuse(self, counter: str, message: str, kind: type[Exception]) -> NoReturn:
        self._count(counter)
        self._count("rejected")
        if issubclass(kind, AuthenticationError):
            raise kind(message, counter)
        raise kind(message)
