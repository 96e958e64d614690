"""The keyring: the mesh keys a node holds, the one that seals, and the ones removed.

Memberlist's keyring is the model: ``install`` adds a key every node then decrypts with,
``use`` makes an installed key the *primary* (the only one that encrypts), ``remove``
drops a key that is not the primary. A rotation is install, use, remove, each carried out
across the running mesh; between the steps every node opens what every other seals, so
nothing is lost while it goes on.

What memberlist leaves to its callers (Serf sends each operation once, as a query, and a
node that was down misses it), this keyring does itself: it is a state-based CRDT that
nodes push to each other (``daemon/keyring_exchange.py``), so a node that was down catches up at its
first exchange with any member:

* installed keys: a grow-only map fingerprint -> key, minus
* removed keys: a grow-only map fingerprint -> when it was removed (a tombstone; a
  removed key never comes back, and installing it again is refused);
* the primary: a last-writer-wins register stamped ``(Lamport counter, node id)``.

Merging is commutative, associative and idempotent, so every node ends with the same
keyring whatever order the pushes arrive in. Two ``use`` run at once from two nodes: the
higher stamp wins everywhere. A merged primary that another node removed meanwhile (a
``use`` and a ``remove`` of one key at once) is replaced on every node by the same
deterministic choice, the installed key with the highest fingerprint.

A node's keyring lives in its data dir (``keyring.json``, mode 0600, written atomically);
the daemon reads it at start. A key given with ``--key-file`` (or ``MESHGPU_KEY``) that
the keyring does not know is installed and made primary (an operator handing a node the
mesh's current key); one it already holds, or has removed, changes nothing.

Rejected alternatives: sending each operation once to every member (Serf's query) leaves
a node that was down behind for good; replicating the keyring through the core's gossip
would put secrets in every gossip datagram and the keyring in the simulator, which has no
keys; one keyring version number compared whole ("higher wins") lets a stale node that
ran operations of its own undo a removal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from meshgpu.daemon.auth.keys import KEY_BYTES, MeshKey
from meshgpu.errors import DecodeError, KeyringError, StorageError

logger = logging.getLogger("meshgpu.daemon")

KEYRING_FILE = "keyring.json"
_FORMAT = 1
MAX_KEYS = 64
"""Installed keys and tombstones each: a rotation leaves one tombstone, so this is years
of weekly rotations; a keyring pushed with more is refused as malformed."""
MIN_KEY_ID_TEXT = 4
"""Hex digits of a fingerprint that name a key on the command line (if unambiguous)."""

Stamp = tuple[int, str]


class Keyring:
    """The keys of one node (or one client, with a single key and no file)."""

    def __init__(self, path: Path | None = None, *, clock: Callable[[], float] = time.time):
        self.path = path
        """Where the keyring is saved after every change; None: in memory only."""
        self._clock = clock
        self._keys: dict[str, MeshKey] = {}
        self._removed: dict[str, float] = {}
        self._primary: str | None = None
        self._stamp: Stamp = (0, "")
        self._lamport = 0
        self.ciphers: dict[bytes, AESGCM] = {}
        """key id (4 bytes) -> the envelope cipher of each installed key: one dictionary
        look-up finds the one key that opens an envelope."""
        self._removed_ids: dict[bytes, str] = {}
        self._listeners: list[Callable[[], None]] = []

    @classmethod
    def single(cls, key: MeshKey | None) -> Keyring:
        """An in-memory keyring holding ``key`` as primary (a client's), or none (open)."""
        keyring = cls()
        if key is not None:
            keyring._keys[key.fingerprint] = key
            keyring._primary = key.fingerprint
            keyring._derived()
        return keyring

    @classmethod
    def for_node(cls, data_dir: Path, given: MeshKey | None, node_id: str) -> Keyring:
        """The keyring a daemon starts with: its data dir's, with ``given`` applied.

        No keyring file and no key: an open node (nothing is written). No file and a
        key: a keyring of that key, saved. A file: its keyring; ``given`` is installed
        and made primary if the keyring does not know it (logged either way)."""
        keyring = cls(data_dir / KEYRING_FILE)
        assert keyring.path is not None
        if not keyring.path.exists():
            if given is not None:
                # Unstamped: nodes started with one key hold equal keyrings (their first
                # exchange changes nothing), and any ``use`` wins over this.
                keyring._keys[given.fingerprint] = given
                keyring._primary = given.fingerprint
                keyring._changed()
            return keyring
        keyring._load()
        if given is None:
            return keyring
        fingerprint = given.fingerprint
        if fingerprint in keyring._removed:
            logger.warning(
                "the given mesh key %s was removed from this mesh's keyring; sealing with the "
                "keyring's primary %s (%s)",
                fingerprint,
                keyring._primary,
                keyring.path,
            )
        elif fingerprint in keyring._keys:
            if keyring._primary != fingerprint:
                logger.info(
                    "the given mesh key %s is installed; the keyring's primary is %s (%s)",
                    fingerprint,
                    keyring._primary,
                    keyring.path,
                )
        else:
            keyring.install(given)
            keyring.use(fingerprint, node_id)
        return keyring

    # --- what the envelope reads ---------------------------------------------------

    @property
    def primary(self) -> MeshKey | None:
        return self._keys[self._primary] if self._primary is not None else None

    @property
    def keyed(self) -> bool:
        """Whether this node holds a key at all (an open node holds none)."""
        return self._primary is not None

    def removed_key(self, key_id: bytes) -> tuple[str, float] | None:
        """(fingerprint, when) of a removed key with id ``key_id``, or None."""
        fingerprint = self._removed_ids.get(key_id)
        return (fingerprint, self._removed[fingerprint]) if fingerprint is not None else None

    def installed(self) -> list[MeshKey]:
        return [self._keys[f] for f in sorted(self._keys)]

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every change (the envelope refreshes its ciphers)."""
        self._listeners.append(listener)

    def summary(self) -> dict[str, Any]:
        """What ``keyring list`` and ``status`` show: fingerprints, never secrets."""
        return {
            "primary": self._primary,
            "keys": sorted(self._keys),
            "removed": dict(sorted(self._removed.items())),
            "stamp": list(self._stamp),
        }

    @property
    def digest(self) -> str:
        """Equal on two nodes exactly when their keyrings are equal (no secret in it)."""
        return hashlib.sha256(json.dumps(self.summary(), sort_keys=True).encode()).hexdigest()[:16]

    def resolve(self, text: str) -> MeshKey:
        """The installed key a command names by its fingerprint or a prefix of it."""
        wanted = text.strip().lower()
        if len(wanted) < MIN_KEY_ID_TEXT:
            raise KeyringError(
                f"name a key by at least {MIN_KEY_ID_TEXT} hex digits of its fingerprint "
                "(`meshgpu keyring list` shows them)"
            )
        matches = [f for f in self._keys if f.startswith(wanted)]
        if len(matches) == 1:
            return self._keys[matches[0]]
        if matches:
            raise KeyringError(f"{text!r} names {len(matches)} keys ({', '.join(matches)})")
        removed = [f for f in self._removed if f.startswith(wanted)]
        if removed:
            raise KeyringError(f"key {removed[0]} was removed from this mesh's keyring")
        raise KeyringError(
            f"no installed key has a fingerprint starting {text!r}; installed: "
            f"{', '.join(sorted(self._keys)) or 'none'}"
        )

    # --- operations ----------------------------------------------------------------

    def install(self, key: MeshKey) -> bool:
        """Add ``key`` (it decrypts from now on); False if it was installed already."""
        fingerprint = key.fingerprint
        if fingerprint in self._removed:
            raise KeyringError(
                f"key {fingerprint} was removed from this mesh's keyring and cannot be "
                "installed again; make a new one with `meshgpu keygen`"
            )
        if fingerprint in self._keys:
            return False
        clash = next((f for f in self._keys if f[:8] == fingerprint[:8]), None)
        if clash is not None:
            raise KeyringError(
                f"key {fingerprint} has the same key id as installed key {clash}; "
                "make another one with `meshgpu keygen`"
            )
        if len(self._keys) >= MAX_KEYS:
            raise KeyringError(f"the keyring holds {MAX_KEYS} keys already; remove some first")
        self._keys[fingerprint] = key
        self._changed()
        return True

    def use(self, text: str, origin: str) -> MeshKey:
        """Make the installed key named by ``text`` the primary (the one that seals)."""
        key = self.resolve(text)
        if key.fingerprint != self._primary:
            self._lamport += 1
            self._primary = key.fingerprint
            self._stamp = (self._lamport, origin)
            self._changed()
        return key

    def remove(self, text: str) -> MeshKey:
        """Remove the key named by ``text``; refused for the primary."""
        key = self.resolve(text)
        if key.fingerprint == self._primary:
            raise KeyringError(
                f"key {key.fingerprint} is the primary key (every node seals with it) and "
                "cannot be removed; make another key primary first with `meshgpu keyring use`"
            )
        del self._keys[key.fingerprint]
        self._removed[key.fingerprint] = self._clock()
        self._changed()
        return key

    # --- replication ---------------------------------------------------------------

    def to_wire(self) -> dict[str, Any]:
        """The whole keyring, secrets included: sent only inside encrypted frames."""
        return {
            "keys": [self._keys[f].secret for f in sorted(self._keys)],
            "primary": self._primary,
            "stamp": list(self._stamp),
            "removed": dict(self._removed),
        }

    def merge(self, wire: Any) -> bool:
        """Merge a keyring another node sent (``to_wire``); True if this one changed."""
        keys, primary, stamp, removed = _parse_wire(wire)
        before = self.to_wire()
        for fingerprint, when in removed.items():
            self._removed[fingerprint] = min(when, self._removed.get(fingerprint, when))
        for key in keys:
            self._keys.setdefault(key.fingerprint, key)
        for fingerprint in self._removed:
            self._keys.pop(fingerprint, None)
        self._lamport = max(self._lamport, stamp[0])
        if primary is not None and stamp > self._stamp:
            self._primary, self._stamp = primary, stamp
        if self._primary is not None and self._primary not in self._keys:
            self._primary = max(self._keys) if self._keys else None
        if len(self._removed) > MAX_KEYS:  # the oldest tombstones go first
            for fingerprint in sorted(self._removed, key=self._removed.__getitem__)[:-MAX_KEYS]:
                del self._removed[fingerprint]
        if self.to_wire() == before:
            return False
        self._changed()
        return True

    # --- persistence ---------------------------------------------------------------

    def _changed(self) -> None:
        self._derived()
        if self.path is not None:
            self._save(self.path)
        for listener in self._listeners:
            listener()

    def _derived(self) -> None:
        self.ciphers = {key.key_id: key.cipher() for key in self._keys.values()}
        self._removed_ids = {bytes.fromhex(f[:8]): f for f in self._removed}

    def _save(self, path: Path) -> None:
        """Write the keyring atomically and durably (identity's write_text_durably), mode
        0600 from the first byte."""
        from meshgpu.daemon.identity import write_text_durably  # (identity imports auth)

        document = {
            "format": _FORMAT,
            "keys": [self._keys[f].secret.hex() for f in sorted(self._keys)],
            "primary": self._primary,
            "stamp": list(self._stamp),
            "lamport": self._lamport,
            "removed": self._removed,
        }
        try:
            write_text_durably(path, json.dumps(document, indent=1) + "\n", mode=0o600)
        except StorageError as error:
            raise KeyringError(f"keyring: {error}") from None

    def _load(self) -> None:
        assert self.path is not None
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            keys = [MeshKey(bytes.fromhex(text)) for text in document["keys"]]
            removed = {str(f): float(when) for f, when in document["removed"].items()}
            primary = document["primary"]
            stamp = (int(document["stamp"][0]), str(document["stamp"][1]))
            lamport = int(document["lamport"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
            raise KeyringError(
                f"cannot read keyring {self.path}: {error!r}; restore it from a backup, or "
                "delete it and start with --key-file holding the mesh's current key"
            ) from None
        self._keys = {key.fingerprint: key for key in keys}
        self._removed = removed
        self._primary = primary if primary in self._keys else None
        self._stamp = stamp
        self._lamport = max(lamport, stamp[0])
        self._derived()


def _parse_wire(
    wire: Any,
) -> tuple[list[MeshKey], str | None, Stamp, dict[str, float]]:
    """Check a keyring another node sent; DecodeError for anything malformed."""
    if not isinstance(wire, Mapping):
        raise DecodeError("a keyring must be a map")
    keys, primary, stamp, removed = (
        wire.get("keys"),
        wire.get("primary"),
        wire.get("stamp"),
        wire.get("removed"),
    )
    if (
        not isinstance(keys, list)
        or len(keys) > MAX_KEYS
        or not all(isinstance(k, bytes) and len(k) == KEY_BYTES for k in keys)
    ):
        raise DecodeError(f"a keyring's keys must be at most {MAX_KEYS} {KEY_BYTES}-byte keys")
    if not isinstance(removed, Mapping) or len(removed) > MAX_KEYS:
        raise DecodeError("a keyring's removed keys must be a map fingerprint -> time")
    if not all(isinstance(f, str) and len(f) == 12 for f in removed) or not all(
        isinstance(t, int | float) for t in removed.values()
    ):
        raise DecodeError("a keyring's removed keys must be a map fingerprint -> time")
    if (
        not isinstance(stamp, list | tuple)
        or len(stamp) != 2
        or not isinstance(stamp[0], int)
        or not isinstance(stamp[1], str)
    ):
        raise DecodeError("a keyring's stamp must be [counter, node id]")
    parsed = [MeshKey(k) for k in keys]
    if primary is not None and primary not in {k.fingerprint for k in parsed}:
        raise DecodeError("a keyring's primary must be one of its keys")
    return parsed, primary, (stamp[0], stamp[1]), {f: float(t) for f, t in removed.items()}
