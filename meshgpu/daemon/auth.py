"""The mesh key and the envelope every datagram and frame travels in.

Why an envelope at all: the daemon must (a) keep a lab's traffic (task inputs and results,
model bytes, member names and addresses) secret and authenticated when the mesh has a
key, (b) refuse replays, (c) refuse nodes of another mesh or protocol version with a
message that names both, and (d) know *which node* sent a datagram before the core has
decoded it, so that two live nodes with one id (a copied data dir) can be told apart. One
small binary header does all of it and is the same with or without a key::

    open:  magic "MG" | version | flags | channel | sender-len | sender | mesh-len | mesh
           | session(8) | counter(4) | timestamp_ms(8) | payload
    keyed: magic "MG" | version | flags | channel | 0 | mesh-len | mesh | key-id(4)
           | session(8) | counter(4) | timestamp_ms(8)
           | AES-256-GCM(sender-len | sender | payload) | tag(16)

* ``sender`` is the node id (or a client's id), inside the ciphertext when keyed so
  that a capture names no node; ``session`` is random per sending
  session (one per daemon process for UDP, one per TCP connection), so a restarted
  node or a second process with the same id is a *different* session.
* ``mesh`` is the mesh name (empty from a client that did not name one); a daemon drops
  envelopes of another mesh, so static seeds of two meshes never merge.
* ``counter`` increases by one per envelope of a session; the receiver keeps a
  sliding window per (sender, session) as IPsec does (RFC 4303 section 3.4.3) and drops
  anything it has seen or that is older than the window. A session that would wrap
  its 32-bit counter starts a fresh session instead.
* ``timestamp_ms`` is the sender's wall clock; envelopes older or newer than
  ``max_clock_skew`` are dropped, so a replay recorded before the receiver restarted
  (its windows are in memory only) is still refused.
* With a key, the payload is sealed with AES-256-GCM under a key derived (HKDF-SHA256)
  from the mesh key; the nonce is ``session || counter`` (unique per key: a session is
  8 random bytes and never reuses a counter), and the whole header, mesh name and key id
  included, is the associated data: nothing in it can be altered, and ``channel`` under
  the tag means a captured datagram cannot be injected into a TCP stream or the other
  way round. ``key-id`` names the key (the first 4 bytes of its fingerprint) so a
  receiver knows which key to open it with.

AES-256-GCM over ChaCha20-Poly1305, measured with ``python bench/aead.py`` on the
project's x86 machines (AES-NI): a seal+open of a 1.2 KiB datagram 5.5 us against 8.8 us,
a 16 KiB frame 13 us against 33 us, a 16 MiB payload range 48 ms against 108 ms (and the
HMAC-SHA256 it replaced took 14.5 us, 29 us and 68 ms: encryption costs less than the
integrity check alone did). ChaCha20-Poly1305 is the better choice only on CPUs without
AES instructions, which no lab GPU host lacks. Memberlist uses AES-GCM too.

Rejected alternatives: random 96-bit nonces (memberlist's choice) are unique only with
high probability and NIST limits them to 2^32 messages per key, which a busy mesh
reaches in days; the session and counter already in the header make a unique nonce for
free. A challenge-response handshake per TCP connection costs a round trip per
connection and does nothing for UDP. Encrypting with the raw mesh secret: the derived key
keeps the secret's other uses (the fingerprint) apart.

Without a key the envelope is the same minus the key id and tag; nothing is encrypted or
authenticated and the daemon says so loudly at start.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from meshgpu.errors import AuthenticationError, ConfigError, DecodeError, IncompatiblePeerError

MAGIC = b"MG"
VERSION = 2
"""The protocol version: 1 authenticated with HMAC, 2 encrypts with AES-256-GCM."""
FLAG_KEYED = 0x01
FLAG_REFUSAL = 0x80
"""A refusal: a peer of another version or mesh tells the sender why it drops its traffic."""
MAX_REFUSAL_TEXT = 512
TAG_BYTES = 16
KEY_ID_BYTES = 4
SESSION_BYTES = 8
KEY_BYTES = 32
MAX_SENDER_BYTES = 64
MAX_MESH_BYTES = 64
KEY_ENV = "MESHGPU_KEY"

_FIXED = struct.Struct("!2sBBBB")  # magic, version, flags, channel, sender length
"""Kept by every protocol version (1 had it too): a node reads who sent an envelope of
another version, and any version reads a refusal."""
_NONCE = struct.Struct("!8sIQ")  # session, counter, timestamp_ms
_COUNTER_LIMIT = 1 << 32
MAX_OVERHEAD = (
    _FIXED.size + 1 + MAX_SENDER_BYTES + 1 + MAX_MESH_BYTES + KEY_ID_BYTES + _NONCE.size + TAG_BYTES
)
"""The most bytes an envelope adds to a payload."""


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

    @property
    def key_id(self) -> bytes:
        """The 4 bytes that name this key in an envelope (the fingerprint's first 8 hex)."""
        return bytes.fromhex(self.fingerprint[: KEY_ID_BYTES * 2])

    def cipher(self) -> AESGCM:
        """The envelope's AEAD, keyed with a key derived so the raw secret is used for
        nothing else."""
        derived = HKDF(
            algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=b"meshgpu/v2/envelope"
        ).derive(self.secret)
        return AESGCM(derived)


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

    def seal(self, payload: bytes) -> bytes | bytearray:
        if self._counter >= _COUNTER_LIMIT:  # never reuse a nonce: a fresh session
            self._authenticator.forget_session(self.session)
            self.session = self._authenticator.fresh_session()
            self._counter = 0
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
        mesh: str | None = None,
        max_clock_skew: float = 120.0,
        window: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        encoded = sender.encode()
        if not encoded or len(encoded) > MAX_SENDER_BYTES:
            raise ConfigError(f"sender id {sender!r} must be 1 to {MAX_SENDER_BYTES} bytes")
        mesh_bytes = (mesh or "").encode()
        if len(mesh_bytes) > MAX_MESH_BYTES:
            raise ConfigError(f"mesh name {mesh!r} must be at most {MAX_MESH_BYTES} bytes")
        self.key = key
        self.sender = sender
        self.mesh = mesh
        """This node's mesh; None (a client that named none) accepts any mesh."""
        self._sender_bytes = encoded
        self._mesh_bytes = mesh_bytes
        self._mesh_named = bytes([len(mesh_bytes)]) + mesh_bytes
        self._inner = bytes([len(encoded)]) + encoded  # the sender, inside the ciphertext
        self._cipher = key.cipher() if key is not None else None
        self._key_id = key.key_id if key is not None else b""
        self._max_skew_ms = int(max_clock_skew * 1000)
        self._window = window
        self._clock = clock
        self._windows: dict[tuple[str, bytes], _ReplayWindow] = {}
        self._own_sessions: set[bytes] = set()
        self._opens_since_prune = 0
        self.counters: dict[str, int] = {}
        self.refused: dict[str, dict[str, Any]] = {}
        """sender -> why its traffic (or ours, at its end) was refused: another protocol
        version or mesh (``status`` lists these among the peers that are gone)."""

    @property
    def keyed(self) -> bool:
        return self._cipher is not None

    def fresh_session(self) -> bytes:
        session = secrets.token_bytes(SESSION_BYTES)
        self._own_sessions.add(session)
        return session

    def forget_session(self, session: bytes) -> None:
        self._own_sessions.discard(session)

    def new_session(self, channel: Channel) -> Sealer:
        """A fresh sending session (one per process for UDP, one per TCP connection)."""
        return Sealer(self, channel, self.fresh_session())

    def end_session(self, sealer: Sealer) -> None:
        """Forget a finished TCP session so the set of own sessions stays small."""
        self.forget_session(sealer.session)

    def overhead(self) -> int:
        """Bytes the envelope adds to a payload (keep datagrams under the MTU with it)."""
        keyed = KEY_ID_BYTES + TAG_BYTES if self.keyed else 0
        named = len(self._sender_bytes) + (1 if self.keyed else 0) + 1 + len(self._mesh_bytes)
        return _FIXED.size + named + _NONCE.size + keyed

    def seal_with(
        self, channel: Channel, session: bytes, counter: int, payload: bytes
    ) -> bytes | bytearray:
        nonce = _NONCE.pack(session, counter, int(self._clock() * 1000))
        cipher = self._cipher
        if cipher is None:
            fixed = _FIXED.pack(MAGIC, VERSION, 0, channel, len(self._sender_bytes))
            return b"".join((fixed, self._sender_bytes, self._mesh_named, nonce, payload))
        # Keyed: the sender travels inside the ciphertext (no node name in clear).
        fixed = _FIXED.pack(MAGIC, VERSION, FLAG_KEYED, channel, 0)
        header = b"".join((fixed, self._mesh_named, self._key_id, nonce))
        sealed = bytearray(len(header) + len(self._inner) + len(payload) + TAG_BYTES)
        sealed[: len(header)] = header
        cipher.encrypt_into(
            session + counter.to_bytes(4, "big"),
            self._inner + payload,
            header,
            memoryview(sealed)[len(header) :],
        )
        return sealed

    def open(
        self, data: bytes | bytearray, channel: Channel, source: tuple[str, int] | None = None
    ) -> Envelope:
        """Check and unwrap one envelope; raises (and counts) when it must be dropped.

        ``source`` (the datagram's address) names a peer whose name is encrypted when it
        is refused for another mesh or version."""
        if len(data) < _FIXED.size:
            self._refuse("malformed", "envelope shorter than its header", DecodeError)
        _, version, flags, wire_channel, sender_length = _FIXED.unpack_from(data)
        mesh_length_at = _FIXED.size + sender_length
        if len(data) <= mesh_length_at:
            self._refuse("malformed", "envelope truncated", DecodeError)
        if data[:2] != MAGIC:
            self._refuse("malformed", "not a meshgpu envelope (bad magic)", DecodeError)
        clear_sender = bytes(data[_FIXED.size : mesh_length_at]).decode(errors="replace")
        where = f"{source[0]}:{source[1]}" if source is not None else "a peer"
        label = clear_sender or where
        if flags & FLAG_REFUSAL:
            self._refused_by_peer(data, version, mesh_length_at, label, source)
        if version != VERSION:
            self._incompatible(
                label,
                source,
                "bad_version",
                f"{label} speaks protocol version {version}, this node speaks {VERSION}; "
                "run one meshgpu version across the mesh",
            )
        keyed = bool(flags & FLAG_KEYED)
        mesh_at = mesh_length_at + 1
        key_id_at = mesh_at + data[mesh_length_at]
        nonce_at = key_id_at + (KEY_ID_BYTES if keyed else 0)
        payload_at = nonce_at + _NONCE.size
        if len(data) < payload_at + (TAG_BYTES + 1 if keyed else 0):
            self._refuse("malformed", "envelope truncated", DecodeError)
        try:
            mesh = bytes(data[mesh_at:key_id_at]).decode()
        except UnicodeDecodeError:
            self._refuse("malformed", "mesh name is not UTF-8", DecodeError)
        if self.mesh is not None and mesh != self.mesh and (mesh or channel != Channel.FRAME):
            # A client that names no mesh sends an empty one, on frames only.
            self._incompatible(
                label,
                source,
                "other_mesh",
                f"{label} is in mesh {mesh!r}, this node is in mesh {self.mesh!r}; "
                "give both the same --mesh (or drop the --peer seed of the other mesh)",
            )
        session, counter, timestamp_ms = _NONCE.unpack_from(data, nonce_at)
        view = memoryview(data)
        cipher = self._cipher
        if cipher is None:
            if keyed:
                self._refuse(
                    "keyed_peer_but_no_key",
                    f"{label} uses a mesh key and this node has none; "
                    "start it with --key-file or MESHGPU_KEY",
                    AuthenticationError,
                )
            sender = clear_sender
            payload = bytes(view[payload_at:])
        else:
            if not keyed:
                self._refuse(
                    "unauthenticated",
                    f"{label} sent without a mesh key; give it the mesh key file",
                    AuthenticationError,
                )
            if data[key_id_at:nonce_at] != self._key_id:
                self._refuse(
                    "bad_tag",
                    f"envelope from {where} fails authentication: sealed with key "
                    f"{bytes(data[key_id_at:nonce_at]).hex()}, this node holds key "
                    f"{self._key_id.hex()} (wrong mesh key); give both the same mesh key",
                    AuthenticationError,
                )
            try:
                inner = cipher.decrypt(
                    session + counter.to_bytes(4, "big"), view[payload_at:], view[:payload_at]
                )
            except InvalidTag:
                self._refuse(
                    "bad_tag",
                    f"envelope from {where} fails authentication "
                    "(wrong mesh key, or altered in transit)",
                    AuthenticationError,
                )
            payload_from = 1 + inner[0]
            try:
                sender = inner[1:payload_from].decode()
            except UnicodeDecodeError:
                self._refuse("malformed", "sender id is not UTF-8", DecodeError)
            payload = inner[payload_from:]
        if wire_channel != channel:
            self._refuse("wrong_channel", "envelope sealed for another channel", DecodeError)
        envelope = Envelope(
            sender=sender,
            session=session,
            counter=counter,
            timestamp_ms=timestamp_ms,
            channel=Channel(wire_channel),
            payload=payload,
            from_self=session in self._own_sessions,
        )
        if cipher is not None and not envelope.from_self:
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

    def refusal(self, channel: Channel, error: IncompatiblePeerError) -> bytes:
        """The envelope that tells a peer of another version or mesh why it is refused.

        Its layout (the fixed header with an empty sender, the mesh, then the text) is
        kept by every protocol version so that any version can read it; it is neither
        encrypted nor authenticated (a forged one changes nothing but a line of
        ``status``), names no node, and is never answered.
        """
        text = str(error).encode()[:MAX_REFUSAL_TEXT]
        fixed = _FIXED.pack(MAGIC, VERSION, FLAG_REFUSAL, channel, 0)
        return b"".join((fixed, self._mesh_named, text))

    def _refused_by_peer(
        self,
        data: bytes | bytearray,
        version: int,
        mesh_length_at: int,
        label: str,
        source: tuple[str, int] | None,
    ) -> NoReturn:
        mesh_at = mesh_length_at + 1
        text_at = mesh_at + data[mesh_length_at]
        mesh = bytes(data[mesh_at:text_at]).decode(errors="replace")
        text = bytes(data[text_at : text_at + MAX_REFUSAL_TEXT]).decode(errors="replace")
        self._incompatible(
            label,
            source,
            "refused_by_peer",
            f"{label} (protocol version {version}, mesh {mesh!r}) refuses this node "
            f"(protocol version {VERSION}, mesh {self.mesh!r}): {text}",
        )

    def _incompatible(
        self, label: str, source: tuple[str, int] | None, reason: str, message: str
    ) -> NoReturn:
        known = self.refused.pop(label, {})
        self.refused[label] = {
            "node_id": label,
            "address": list(source) if source is not None else known.get("address"),
            "state": "refused",
            "reason": message,
            "at": time.time(),
        }
        if len(self.refused) > 256:  # bounded: drop the oldest record
            del self.refused[min(self.refused, key=lambda s: self.refused[s]["at"])]
        self._refuse(reason, message, IncompatiblePeerError)

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _refuse(self, counter: str, message: str, kind: type[Exception]) -> NoReturn:
        self._count(counter)
        self._count("rejected")
        if issubclass(kind, AuthenticationError | IncompatiblePeerError):
            raise kind(message, counter)
        raise kind(message)
