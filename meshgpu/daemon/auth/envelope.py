"""The envelope every datagram and frame travels in: sealed, opened, checked.

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
* ``counter`` increases by one per envelope of a session, ``timestamp_ms`` is the
  sender's wall clock: the receiver refuses replays and stale envelopes with them
  (``replay.py``). A session that would wrap its 32-bit counter starts a fresh session.
* With a key, the payload is sealed with AES-256-GCM under a key derived (HKDF-SHA256)
  from the mesh key; the nonce is ``session || counter`` (unique per key: a session is
  8 random bytes and never reuses a counter), and the whole header, mesh name and key id
  included, is the associated data: nothing in it can be altered, and ``channel`` under
  the tag means a captured datagram cannot be injected into a TCP stream or the other
  way round. ``key-id`` names the key (the first 4 bytes of its fingerprint) so a
  receiver opens it with the one key of its keyring (``keyring.py``) that fits: one
  dictionary look-up and one decryption, not a try of every installed key (memberlist
  tries each in turn). A node seals with its keyring's primary key; an envelope sealed
  with a key the keyring removed is refused with a refusal that says so
  (``handshake.py``), so a node that missed a rotation while down learns why it cannot
  rejoin.
* A daemon answers a request in the key the request was sealed with while that key is
  installed, so a client holding one key file reads the answers all through a rotation.
  Only the answering side does so: a requester seals with its primary, so two nodes
  never keep each other on an old key. A datagram sealed with another installed key than
  the primary, or with a key this node lacks, prompts a keyring exchange with its sender
  (``daemon/keyring_exchange.py``), sealed with the sender's key if this node holds it: a
  node that missed a ``use`` while down catches up at once.
* ``verify_outgoing`` false seals without the key even when the node holds one;
  ``verify_incoming`` false accepts envelopes without a key as well as keyed ones. Both
  default to true; together they move a running open mesh to encryption node by node
  (memberlist's ``GossipVerifyIncoming``/``GossipVerifyOutgoing``, docs/operations.md).

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

import secrets
import struct
import time
from collections.abc import Callable
from typing import Generic, Literal, NamedTuple, NoReturn, TypeVar, overload

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from meshgpu.daemon.auth.handshake import (
    FIXED,
    FLAG_KEYED,
    FLAG_REFUSAL,
    MAGIC,
    VERSION,
    Channel,
    RefusedPeers,
    read_refusal,
    refusal,
)
from meshgpu.daemon.auth.keyring import Keyring
from meshgpu.daemon.auth.keys import KEY_ID_BYTES, MeshKey
from meshgpu.daemon.auth.replay import ReplayGuard
from meshgpu.errors import AuthenticationError, ConfigError, DecodeError, IncompatiblePeerError

TAG_BYTES = 16
SESSION_BYTES = 8
MAX_SENDER_BYTES = 64
MAX_MESH_BYTES = 64

_NONCE = struct.Struct("!8sIQ")  # session, counter, timestamp_ms
_NONCE_SIZE = _NONCE.size
_NONCE_UNPACK = _NONCE.unpack_from
_FIXED_SIZE = FIXED.size
_FIXED_UNPACK = FIXED.unpack_from
_COUNTER_LIMIT = 1 << 32
_SMALL = 8 << 10
"""Envelopes below this many bytes are sealed and opened with copies, larger ones in
place: a keyed envelope's ciphertext is encrypted on its own and joined to the header,
and opened from slices of the envelope, which costs less than a buffer to encrypt into
and memoryviews to decrypt from (1.2 vs 1.8 us to seal a 1.2 KiB datagram, 1.0 vs 1.2 us
to decrypt one, in thread CPU time); above, the copies would cost more."""
MAX_OVERHEAD = (
    FIXED.size + 1 + MAX_SENDER_BYTES + 1 + MAX_MESH_BYTES + KEY_ID_BYTES + _NONCE.size + TAG_BYTES
)
"""The most bytes an envelope adds to a payload."""
_OPEN = b""
"""The key id of an envelope sealed without a key."""
Buffer = bytes | bytearray | memoryview
"""What an envelope is written from (collections.abc.Buffer from Python 3.12)."""


Payload = TypeVar("Payload", bound=bytes | memoryview, covariant=True)
"""An opened envelope's payload: bytes, or a memoryview where ``open`` was asked for one."""


class Envelope(NamedTuple, Generic[Payload]):
    """An opened envelope: who sent it, in which session, and the payload inside.

    A named tuple, not a frozen dataclass: one is built per datagram and frame, and a
    frozen dataclass's ``__init__`` cost a third of the open mesh's whole open."""

    sender: str
    session: bytes
    counter: int
    timestamp_ms: int
    channel: Channel
    payload: Payload
    """A memoryview only where ``open`` was asked for one (``as_view``)."""
    from_self: bool = False
    """True when the session is one this authenticator sealed (a self-send or a reflection)."""
    key_id: bytes = _OPEN
    """The key that sealed it (4 bytes), or empty when it came without a key."""


class Sealer:
    """One sending session: seals payloads with an increasing counter.

    ``key_id`` pins the key it seals with (a connection answers in its peer's key;
    a keyring exchange always seals with a key); None follows the node's policy (the
    primary key, or none when ``verify_outgoing`` is off)."""

    def __init__(
        self,
        authenticator: Authenticator,
        channel: Channel,
        session: bytes,
        key_id: bytes | None = None,
    ) -> None:
        self._authenticator = authenticator
        self._channel = channel
        self.session = session
        self._counter = 0
        self.key_id = key_id

    def seal(self, payload: bytes) -> bytes | bytearray:
        counter = self._next()  # first: it may start a fresh session
        return self._authenticator.seal_with(
            self._channel, self.session, counter, payload, self.key_id
        )

    def seal_pieces(self, pieces: list[Buffer]) -> list[Buffer]:
        """:meth:`seal` of the concatenated ``pieces``, as buffers to write in order
        (Authenticator.seal_pieces)."""
        counter = self._next()
        return self._authenticator.seal_pieces(
            self._channel, self.session, counter, pieces, self.key_id
        )

    def _next(self) -> int:
        if self._counter >= _COUNTER_LIMIT:  # never reuse a nonce: a fresh session
            self._authenticator.forget_session(self.session)
            self.session = self._authenticator.fresh_session()
            self._counter = 0
        counter = self._counter
        self._counter += 1
        return counter


class Authenticator:
    """Seals outgoing envelopes and opens incoming ones for one node (or client).

    ``open`` raises :class:`AuthenticationError` or :class:`DecodeError` for anything it
    refuses, after counting it in ``counters`` under a key that says why; callers drop
    the datagram (or close the connection) and go on serving. ``keyring`` is a node's
    keyring, or a single key (a client's), or None (an open node or client).
    """

    def __init__(
        self,
        keyring: Keyring | MeshKey | None,
        sender: str,
        *,
        mesh: str | None = None,
        verify_incoming: bool = True,
        verify_outgoing: bool = True,
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
        if not isinstance(keyring, Keyring):
            keyring = Keyring.single(keyring)
        self.keyring = keyring
        self.sender = sender
        self.mesh = mesh
        """This node's mesh; None (a client that named none) accepts any mesh."""
        self.verify_incoming = verify_incoming
        self.verify_outgoing = verify_outgoing
        self._sender_bytes = encoded
        self._mesh_bytes = mesh_bytes
        self._mesh_named = bytes([len(mesh_bytes)]) + mesh_bytes
        self._inner = bytes([len(encoded)]) + encoded  # the sender, inside the ciphertext
        self._open_prefix = tuple(
            FIXED.pack(MAGIC, VERSION, 0, channel, len(encoded)) + encoded + self._mesh_named
            for channel in Channel
        )
        self._keyed_prefix = tuple(
            FIXED.pack(MAGIC, VERSION, FLAG_KEYED, channel, 0) + self._mesh_named
            for channel in Channel
        )
        self._clock = clock
        self._replays = ReplayGuard(max_clock_skew, window, clock)
        self._own_sessions: set[bytes] = set()
        self.counters: dict[str, int] = {}
        self.refused_peers = RefusedPeers()
        self.on_other_key: Callable[[tuple[str, int] | None, bytes], None] | None = None
        """Called with the source of an envelope sealed with an installed key that is not
        the primary, or with a key this node does not hold: a peer whose keyring differs
        (the keyring exchange pushes to it)."""
        self._ciphers: dict[bytes, AESGCM] = {}
        self._primary_id = _OPEN
        self._seal_id = _OPEN
        self._seal_cipher: AESGCM | None = None
        self._keyring_changed()
        keyring.subscribe(self._keyring_changed)

    def _keyring_changed(self) -> None:
        """Invoked by the keyring after every change: cache what sealing and opening read."""
        keyring = self.keyring
        self._ciphers = keyring.ciphers
        primary = keyring.primary
        self._primary_id = primary.key_id if primary is not None else _OPEN
        if primary is not None and self.verify_outgoing:
            self._seal_id, self._seal_cipher = self._primary_id, self._ciphers[self._primary_id]
        else:
            self._seal_id, self._seal_cipher = _OPEN, None

    @property
    def refused(self) -> dict[str, dict[str, object]]:
        """sender -> why its traffic (or ours, at its end) was refused: another protocol
        version or mesh, or a removed key (``status`` lists these among the peers gone)."""
        return self.refused_peers.records

    @property
    def keyed(self) -> bool:
        """Whether this node holds a mesh key (it may still seal without one: verify_outgoing)."""
        return self._primary_id != _OPEN

    @property
    def primary_id(self) -> bytes:
        return self._primary_id

    def fresh_session(self) -> bytes:
        session = secrets.token_bytes(SESSION_BYTES)
        self._own_sessions.add(session)
        return session

    def forget_session(self, session: bytes) -> None:
        self._own_sessions.discard(session)

    def new_session(self, channel: Channel, *, keyed: bool = False) -> Sealer:
        """A fresh sending session (one per process for UDP, one per TCP connection);
        ``keyed`` seals with the primary key whatever ``verify_outgoing`` says."""
        pinned = self._primary_id if keyed and self.keyed else None
        return Sealer(self, channel, self.fresh_session(), pinned)

    def end_session(self, sealer: Sealer) -> None:
        """Forget a finished TCP session so the set of own sessions stays small."""
        self.forget_session(sealer.session)

    def overhead(self) -> int:
        """Bytes the envelope adds to a payload (keep datagrams under the MTU with it)."""
        keyed = self._seal_cipher is not None
        extra = KEY_ID_BYTES + TAG_BYTES if keyed else 0
        named = len(self._sender_bytes) + (1 if keyed else 0) + 1 + len(self._mesh_bytes)
        return FIXED.size + named + _NONCE.size + extra

    def seal_with(
        self,
        channel: Channel,
        session: bytes,
        counter: int,
        payload: bytes,
        key_id: bytes | None = None,
    ) -> bytes | bytearray:
        """Seal ``payload`` as envelope ``counter`` of ``session``: with ``key_id`` while
        that key is installed, else by the node's policy."""
        if key_id is None or key_id == self._seal_id:
            key_id, cipher = self._seal_id, self._seal_cipher
        else:
            cipher = self._ciphers.get(key_id)
            if cipher is None:
                key_id, cipher = self._seal_id, self._seal_cipher
        nonce = _NONCE.pack(session, counter, int(self._clock() * 1000))
        if cipher is None:
            return b"".join((self._open_prefix[channel], nonce, payload))
        # Keyed: the sender travels inside the ciphertext (no node name in clear).
        return self._encrypt(cipher, channel, key_id, nonce, self._inner + payload)

    def _encrypt(
        self, cipher: AESGCM, channel: Channel, key_id: bytes, nonce: bytes, plaintext: Buffer
    ) -> bytes | bytearray:
        """The keyed envelope of ``plaintext`` (the inner sender and the payload): the
        header, then the ciphertext, written straight into the envelope's buffer when
        large (no copy of it)."""
        header = self._keyed_prefix[channel] + key_id + nonce
        if len(plaintext) < _SMALL:
            return header + cipher.encrypt(nonce[:12], plaintext, header)
        header_size = len(header)
        sealed = bytearray(header_size + len(plaintext) + TAG_BYTES)
        sealed[:header_size] = header
        cipher.encrypt_into(nonce[:12], plaintext, header, memoryview(sealed)[header_size:])
        return sealed

    def seal_pieces(
        self,
        channel: Channel,
        session: bytes,
        counter: int,
        pieces: list[Buffer],
        key_id: bytes | None = None,
    ) -> list[Buffer]:
        """:meth:`seal_with` of the concatenated ``pieces``, as buffers to write in order.
        Sealed without a key, the pieces follow the header as they are: a 16 MiB payload
        range goes out from the caller's memory, not copied into an envelope first. A
        keyed envelope is one buffer (the pieces are the plaintext it encrypts)."""
        if key_id is None or key_id == self._seal_id:
            key_id, cipher = self._seal_id, self._seal_cipher
        else:
            cipher = self._ciphers.get(key_id)
            if cipher is None:
                key_id, cipher = self._seal_id, self._seal_cipher
        nonce = _NONCE.pack(session, counter, int(self._clock() * 1000))
        if cipher is None:
            return [self._open_prefix[channel] + nonce, *pieces]
        # One copy of the pieces, the inner sender joined to them (a 16 MiB payload range
        # is not copied twice before it is encrypted).
        return [self._encrypt(cipher, channel, key_id, nonce, b"".join((self._inner, *pieces)))]

    @overload
    def open(
        self,
        data: bytes | bytearray | memoryview,
        channel: Channel,
        source: tuple[str, int] | None = None,
        *,
        as_view: Literal[False] = False,
    ) -> Envelope[bytes]: ...

    @overload
    def open(
        self,
        data: bytes | bytearray | memoryview,
        channel: Channel,
        source: tuple[str, int] | None = None,
        *,
        as_view: Literal[True],
    ) -> Envelope[memoryview]: ...

    def open(
        self,
        data: bytes | bytearray | memoryview,
        channel: Channel,
        source: tuple[str, int] | None = None,
        *,
        as_view: bool = False,
    ) -> Envelope[bytes | memoryview]:
        """Check and unwrap one envelope; raises (and counts) when it must be dropped.

        ``source`` (the datagram's address) names a peer whose name is encrypted when it
        is refused for another mesh, version or key. ``as_view``: the payload is a
        memoryview (of ``data``, or of the plaintext), not a copy (a frame of a 16 MiB
        range: framing.py). Invoked for every datagram and frame: the error paths are
        kept out of line."""
        size = len(data)
        if size < _FIXED_SIZE:
            self._refuse("malformed", "envelope shorter than its header", DecodeError)
        magic, version, flags, wire_channel, sender_length = _FIXED_UNPACK(data)
        mesh_length_at = _FIXED_SIZE + sender_length
        if size <= mesh_length_at:
            self._refuse("malformed", "envelope truncated", DecodeError)
        if magic != MAGIC:
            self._refuse("malformed", "not a meshgpu envelope (bad magic)", DecodeError)
        if flags & FLAG_REFUSAL:
            self._refused_by_peer(data, version, mesh_length_at, source)
        if version != VERSION:
            label = self._label(data, mesh_length_at, source)
            self._incompatible(
                label,
                source,
                "bad_version",
                f"{label} speaks protocol version {version}, this node speaks {VERSION}; "
                "run one meshgpu version across the mesh",
            )
        mesh_at = mesh_length_at + 1
        key_id_at = mesh_at + data[mesh_length_at]
        if data[mesh_at:key_id_at] != self._mesh_bytes and self.mesh is not None:
            self._check_mesh(data, mesh_length_at, key_id_at, channel, source)
        if wire_channel != channel:
            self._refuse("wrong_channel", "envelope sealed for another channel", DecodeError)
        counters = self.counters
        if not flags & FLAG_KEYED:
            payload_at = key_id_at + _NONCE_SIZE
            if size < payload_at:
                self._refuse("malformed", "envelope truncated", DecodeError)
            if self._primary_id and self.verify_incoming:
                label = self._label(data, mesh_length_at, source)
                self._refuse(
                    "unauthenticated",
                    f"{label} sent without a mesh key; give it the mesh key file",
                    AuthenticationError,
                )
            session, counter, timestamp_ms = _NONCE_UNPACK(data, key_id_at)
            counters["accepted"] = counters.get("accepted", 0) + 1
            return Envelope(
                bytes(data[_FIXED_SIZE:mesh_length_at]).decode(errors="replace"),
                session,
                counter,
                timestamp_ms,
                channel,
                memoryview(data)[payload_at:] if as_view else bytes(data[payload_at:]),
                session in self._own_sessions,
            )
        nonce_at = key_id_at + KEY_ID_BYTES
        payload_at = nonce_at + _NONCE_SIZE
        if size < payload_at + TAG_BYTES + 1:
            self._refuse("malformed", "envelope truncated", DecodeError)
        key_id = bytes(data[key_id_at:nonce_at])
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            self._unknown_key(key_id, data, mesh_length_at, channel, source)
        try:
            if size < _SMALL:  # slices copy a few bytes for less than memoryviews cost
                inner = cipher.decrypt(
                    data[nonce_at : nonce_at + 12], data[payload_at:], data[:payload_at]
                )
            else:
                view = memoryview(data)
                inner = cipher.decrypt(
                    view[nonce_at : nonce_at + 12], view[payload_at:], view[:payload_at]
                )
        except InvalidTag:
            self._refuse(
                "bad_tag",
                f"envelope from {_where(source)} fails authentication "
                "(wrong mesh key, or altered in transit)",
                AuthenticationError,
            )
        payload_from = 1 + inner[0]
        try:
            sender = inner[1:payload_from].decode()
        except UnicodeDecodeError:
            self._refuse("malformed", "sender id is not UTF-8", DecodeError)
        session, counter, timestamp_ms = _NONCE_UNPACK(data, nonce_at)
        from_self = session in self._own_sessions
        if not from_self:
            refused = self._replays.check(sender, session, counter, timestamp_ms)
            if refused is not None:
                self._refuse(*refused, AuthenticationError)
            if key_id != self._primary_id and channel == Channel.DATAGRAM and self.on_other_key:
                self.on_other_key(source, key_id)
        counters["accepted"] = counters.get("accepted", 0) + 1
        return Envelope(
            sender,
            session,
            counter,
            timestamp_ms,
            channel,
            memoryview(inner)[payload_from:] if as_view else inner[payload_from:],
            from_self,
            key_id,
        )

    @staticmethod
    def _label(
        data: bytes | bytearray | memoryview, mesh_length_at: int, source: tuple[str, int] | None
    ) -> str:
        """The sender named in clear (an open envelope), else the source address."""
        clear_sender = bytes(data[_FIXED_SIZE:mesh_length_at]).decode(errors="replace")
        return clear_sender or _where(source)

    def _check_mesh(
        self,
        data: bytes | bytearray | memoryview,
        mesh_length_at: int,
        key_id_at: int,
        channel: Channel,
        source: tuple[str, int] | None,
    ) -> None:
        """The envelope names another mesh than ours: refuse it, unless it is a client
        that names none (an empty mesh, on frames only)."""
        try:
            mesh = bytes(data[mesh_length_at + 1 : key_id_at]).decode()
        except UnicodeDecodeError:
            self._refuse("malformed", "mesh name is not UTF-8", DecodeError)
        if mesh or channel != Channel.FRAME:
            label = self._label(data, mesh_length_at, source)
            self._incompatible(
                label,
                source,
                "other_mesh",
                f"{label} is in mesh {mesh!r}, this node is in mesh {self.mesh!r}; "
                "give both the same --mesh (or drop the --peer seed of the other mesh)",
            )

    def _unknown_key(
        self,
        key_id: bytes,
        data: bytes | bytearray | memoryview,
        mesh_length_at: int,
        channel: Channel,
        source: tuple[str, int] | None,
    ) -> NoReturn:
        """An envelope sealed with a key this node does not hold."""
        where = _where(source)
        label = self._label(data, mesh_length_at, source)
        removed = self.keyring.removed_key(key_id)
        if removed is not None:
            fingerprint, when = removed
            primary = self.keyring.primary
            self._incompatible(
                label,
                source,
                "removed_key",
                f"{where} seals with key {fingerprint}, which was removed from mesh "
                f"{self.mesh!r}'s keyring at "
                f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(when))}; restart that node "
                f"with --key-file holding the mesh's current key"
                + (f" (primary {primary.fingerprint})" if primary is not None else ""),
            )
        if not self._primary_id:
            self._refuse(
                "keyed_peer_but_no_key",
                f"{label} uses a mesh key and this node has none; "
                "start it with --key-file or MESHGPU_KEY",
                AuthenticationError,
            )
        if self.on_other_key is not None and channel == Channel.DATAGRAM:
            self.on_other_key(source, key_id)
        held = ", ".join(sorted(k.hex() for k in self._ciphers))
        self._refuse(
            "bad_tag",
            f"envelope from {where} fails authentication: sealed with key {key_id.hex()}, "
            f"this node holds key {held} (wrong mesh key); give both the same mesh key",
            AuthenticationError,
        )

    def refusal(self, channel: Channel, error: IncompatiblePeerError) -> bytes:
        """The envelope that tells a peer of another version or mesh, or one sealing with
        a removed key, why it is refused (handshake.py)."""
        return refusal(channel, self._mesh_named, str(error))

    def _refused_by_peer(
        self,
        data: bytes | bytearray | memoryview,
        version: int,
        mesh_length_at: int,
        source: tuple[str, int] | None,
    ) -> NoReturn:
        label = self._label(data, mesh_length_at, source)
        mesh, text = read_refusal(data, mesh_length_at)
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
        self.refused_peers.note(label, source, message)
        self._refuse(reason, message, IncompatiblePeerError)

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _refuse(self, counter: str, message: str, kind: type[Exception]) -> NoReturn:
        self._count(counter)
        self._count("rejected")
        if issubclass(kind, AuthenticationError | IncompatiblePeerError):
            raise kind(message, counter)
        raise kind(message)


def _where(source: tuple[str, int] | None) -> str:
    return f"{source[0]}:{source[1]}" if source is not None else "a peer"
