"""Who this node is: its id and incarnation, kept in the data dir, and guarded.

Three guards against the identity mix-ups users of peer-to-peer tools hit most:

* **Made once, kept.** The node id is generated on first start and stored in
  ``identity.json``; a restart is the same node (its journal and its tasks follow it).
  The incarnation (SWIM's counter a node raises to refute its own death) is stored too,
  reserved ahead: a start stores its incarnation plus ``INCARNATION_RESERVE``, a running
  node that refutes past what is stored writes (fsynced) the next block before it
  announces the new number, and a start begins above what is stored, so a restarted
  node, even after SIGKILL, outranks what the mesh remembers of it. The block spares
  the refutations their fsync: a node refutes when it was suspected, typically while
  its disk is busiest (a GiB being written), and the write, made before any datagram
  announcing the number may leave, held the event loop 0.15 s and more there.
* **One daemon per data dir.** ``daemon.lock`` is held with ``flock`` for the life of
  the process (the kernel drops it when the process dies, even by SIGKILL, so there are
  no stale locks to clean); a second daemon on the same dir is refused and told the
  pid of the first.
* **The data dir decides the name.** ``--name`` names a node the first time only; a
  ``--name`` that disagrees with the data dir's identity is refused with both names
  (silently running as the stored one hid the mistake).
* **One live node per id.** If the data dir was copied to another machine, or a second
  node was started with the same ``--name`` and a data dir of its own, two live nodes
  share an id. Every envelope names its sender and a random per-process session
  (see auth/envelope.py), so a datagram that carries our id but not our session comes from such
  a twin. :class:`DuplicateIdentityGuard` decides: a node still in its start-up grace
  period is the newcomer and refuses to go on; an established node keeps serving,
  counts the event and reports it loudly. Which of the two mix-ups it is, the newcomer
  learns from the twin's answer to ``ping``: every data dir gets a random ``dir_token``
  when its identity is made, so a copy carries the original's token and a second node
  of the same name has one of its own (:func:`twin_message`).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import secrets
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import trio

from meshgpu.core.types import Address, NodeId
from meshgpu.daemon.auth import Authenticator
from meshgpu.daemon.auth.envelope import MAX_SENDER_BYTES
from meshgpu.errors import (
    DataDirLockedError,
    DuplicateIdentityError,
    IdentityError,
    MeshError,
    StorageError,
)

IDENTITY_NAME = "identity.json"
LOCK_NAME = "daemon.lock"


def check_node_name(name: str) -> None:
    """A ``--name`` fit to be a node id: 1 to 64 bytes of UTF-8 (what every datagram and
    frame carries as its sender) without control characters (a tab or a newline would
    split the ``TASK_ID<TAB>STEM`` lines of task ids that begin with it). Checked before
    the identity is stored: a longer one was written to ``identity.json`` and then
    refused by the envelope, so the data dir refused every later start."""
    size = len(name.encode("utf-8", "surrogatepass"))
    if not 1 <= size <= MAX_SENDER_BYTES:
        raise IdentityError(
            f"--name {name[:80]!r}{'...' if len(name) > 80 else ''} is {size} bytes; a node "
            f"id has 1 to {MAX_SENDER_BYTES} bytes (UTF-8)"
        )
    if any(unicodedata.category(character) == "Cc" for character in name):
        raise IdentityError(f"--name {name!r} holds a control character (a tab, a newline)")


INCARNATION_RESERVE = 32
"""Incarnations stored ahead of the one announced: a node writes its identity once per
this many refutations, not at each (see the module's docstring). A restart after SIGKILL
starts up to this much higher than it needed to; incarnations are only compared."""


@dataclass(frozen=True)
class NodeIdentity:
    """A node id and the incarnation this run starts with; ``dir_token`` tells this data
    dir from another one made for the same id (empty for an identity from before it)."""

    node_id: NodeId
    incarnation: int
    dir_token: str = ""


def new_dir_token() -> str:
    return secrets.token_hex(8)


def new_node_id() -> NodeId:
    return f"n-{secrets.token_hex(4)}"


class IdentityStore:
    """Reads and writes ``identity.json`` in a data dir (atomically, fsynced)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / IDENTITY_NAME

    def start(self, name: str | None = None, *, reserve: int = 0) -> NodeIdentity:
        """Load (or make) the identity and bump its incarnation for this run; what is
        stored is ``reserve`` above it (the incarnations this run may announce without
        writing: the daemon's refutations, runtime.py).

        ``name`` is used as the id the first time only: the id is what other nodes and
        the journal know us by, so a ``name`` that disagrees with a stored id is refused
        (IdentityError with both names and what to do), never silently ignored.
        """
        stored = self.load()
        if stored is None:
            if name:
                check_node_name(name)
            identity = NodeIdentity(name or new_node_id(), 0, new_dir_token())
        elif name is not None and name != stored.node_id:
            raise IdentityError(
                f"data dir {self.path.parent} belongs to node {stored.node_id!r} (its "
                f"{IDENTITY_NAME}), and --name says {name!r}: leave out --name (or give "
                f"--name {stored.node_id}) to run node {stored.node_id!r}; to start node "
                f"{name!r}, give it a data dir of its own (--data-dir)"
            )
        else:
            identity = NodeIdentity(
                stored.node_id, stored.incarnation + 1, stored.dir_token or new_dir_token()
            )
        self.save(dataclasses.replace(identity, incarnation=identity.incarnation + reserve))
        return identity

    def load(self) -> NodeIdentity | None:
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
            return NodeIdentity(
                str(record["node_id"]),
                int(record["incarnation"]),
                str(record.get("dir_token") or ""),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise StorageError(
                f"{self.path} is unreadable ({error}); restore it, or delete it to make this "
                "machine a new node (its journaled tasks are then orphaned)"
            ) from None

    def save(self, identity: NodeIdentity) -> None:
        """Persist ``identity`` (also called when the node raises its incarnation)."""
        record = {"node_id": identity.node_id, "incarnation": identity.incarnation}
        if identity.dir_token:
            record["dir_token"] = identity.dir_token
        write_text_durably(self.path, json.dumps(record) + "\n")


def write_text_durably(path: Path, text: str, mode: int | None = None) -> None:
    """Replace ``path`` with ``text`` all at once, on stable storage before it returns: a
    scratch file beside it, fsynced, renamed over it (a crash leaves the old or the new).
    ``mode``: the file's permission bits (0o600 for a secret), set on the scratch file
    before a byte is written, so no other user can ever read it; None: the umask's."""
    scratch = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        descriptor = os.open(scratch, flags, 0o666 if mode is None else mode)
        with open(descriptor, "w", encoding="utf-8") as handle:
            if mode is not None:
                os.fchmod(handle.fileno(), mode)  # a scratch file left by a crash keeps its bits
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(scratch, path)
    except OSError as error:
        raise StorageError(f"cannot write {path}: {error}") from None


class DataDirLock:
    """An exclusive ``flock`` on ``daemon.lock``: one daemon per data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        try:  # the daemon's first write to its data dir: a read-only one fails here
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held for life)
        except OSError as error:
            # The path that failed, where it is not the data dir itself: a parent made
            # on the way, or the lock file. An error without one (EIO) printed "(None)".
            where = error.filename
            named = f" ({where})" if where is not None and Path(where) != self.path.parent else ""
            raise StorageError(
                f"cannot use data dir {self.path.parent}: {error.strerror or error}{named}; "
                "the daemon writes its identity, journal and payloads there: give it a "
                "writable --data-dir"
            ) from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise DataDirLockedError(
                f"another meshgpu daemon (pid {holder}) already uses data dir "
                f"{self.path.parent}; stop it, or give this one its own --data-dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class DuplicateIdentityGuard:
    """Spots a second live node using our id, and decides who must yield.

    ``observe`` is called for every envelope received; it returns quietly for anything
    but a twin. For a twin it raises :class:`DuplicateIdentityError` while we are within
    ``grace`` seconds of starting (we are the newcomer: the copy), and otherwise counts
    the sighting in ``sightings`` and returns a message for the log.
    """

    def __init__(self, node_id: NodeId, started: float, grace: float = 15.0) -> None:
        self.node_id = node_id
        self.started = started
        self._grace = grace
        self.sightings = 0
        self.last_twin: Address | None = None

    def observe(self, sender: str, from_self: bool, source: Address, now: float) -> str | None:
        if sender != self.node_id or from_self:
            return None
        self.sightings += 1
        self.last_twin = source
        if now - self.started < self._grace:
            # The daemon asks the twin which mix-up it is (twin_message) before it stops.
            raise DuplicateIdentityError(
                f"another live node at {source[0]}:{source[1]} uses this node's id {self.node_id}"
            )
        return (
            f"another live node at {source[0]}:{source[1]} uses this node's id "
            f"{self.node_id} and started after this one (a copy of this data dir, or a "
            f"node started with --name {self.node_id} and a data dir of its own); it is "
            "told to stop, this one keeps serving"
        )


def twin_message(
    node_id: NodeId, data_dir: Path, own_token: str, twin: Address, twin_token: str | None
) -> str:
    """What a newcomer that found a live twin at ``twin`` is told: a copied data dir
    (same ``dir_token``) or a second node given the same name (another token); when the
    twin did not say (an older node, no answer), both, as possibilities."""
    where = f"{twin[0]}:{twin[1]}"
    copied = (
        f"this data dir ({data_dir}) is a copy of that node's: delete {IDENTITY_NAME} here "
        "to make this node a new one, or stop the other"
    )
    same_name = (
        f"node {node_id!r} at {where} has a data dir of its own, and so does this one "
        f"({data_dir}): two nodes cannot share a name. Start this one with a new data dir "
        f"and another --name (or delete {IDENTITY_NAME} in {data_dir} and restart with "
        "another --name)"
    )
    head = f"node id {node_id} is already used by a live node at {where}"
    if twin_token and own_token and twin_token == own_token:
        return f"{head}: {copied}"
    if twin_token and own_token:
        return f"{head}: {same_name}"
    return f"{head}: either {copied}; or {same_name}"


async def ask_twin_token(twin: Address, authenticator: Authenticator) -> str | None:
    """The ``dir_token`` the node at ``twin`` answers ``ping`` with (None if it does not)."""
    from meshgpu.daemon.rpc import open_rpc

    # The newcomer is stopping anyway: waiting a few seconds more for a busy twin's
    # answer buys the one message that fits instead of both possibilities.
    try:
        async with open_rpc(twin, authenticator, connect_timeout=5.0) as rpc:
            with trio.fail_after(10.0):
                reply = await rpc.call("ping")
    except (MeshError, trio.TooSlowError):
        return None
    token = reply.get("dir_token")
    return str(token) if token else None


async def find_live_twin(
    node_id: NodeId, own_address: Address, seed: Address, authenticator: Authenticator
) -> tuple[bool, Address | None, str | None]:
    """Ask ``seed`` where it believes ``node_id`` lives; if that is not us and something
    there answers to our id, that is a live twin. Returns (answered, twin address, the
    twin's ``dir_token``); not answered (ask again) when the seed, or a node that accepted
    the connection at that address, did not answer in time. A stale record of our own
    previous run (nothing listens there) is no twin."""
    from meshgpu.daemon.rpc import open_rpc

    try:
        async with open_rpc(seed, authenticator, connect_timeout=2.0) as rpc:
            with trio.fail_after(5.0):
                info = await rpc.call("member", node_id=node_id)
    except (MeshError, trio.TooSlowError):
        return False, None, None
    if not info.get("known") or info.get("state") not in ("alive", "suspect"):
        return True, None, None
    address = info.get("address")
    if not isinstance(address, list) or len(address) != 2:
        return True, None, None
    where = (str(address[0]), int(address[1]))
    if where == own_address:
        return True, None, None
    try:
        async with open_rpc(where, authenticator, connect_timeout=2.0) as rpc:
            with trio.fail_after(5.0):
                reply = await rpc.call("ping")
    except trio.TooSlowError:
        return False, None, None  # connected but no answer: a busy twin, ask again
    except MeshError:
        return True, None, None
    if reply.get("node_id") != node_id:
        return True, None, None
    token = reply.get("dir_token")
    return True, where, (str(token) if token else None)
