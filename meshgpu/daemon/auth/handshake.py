"""What every protocol version reads: the fixed header, and the refusal that says why.

Every envelope (``envelope.py``) starts with a fixed header that no protocol version
changes (version 1 had it too)::

    magic "MG" | version | flags | channel | sender-len

so a node reads the version and the sender of an envelope it cannot otherwise open. A
node that drops a peer's traffic for a reason the peer can fix (another protocol version,
another mesh, a key removed from the mesh's keyring) answers with a *refusal*: the fixed
header with the refusal flag and an empty sender, the refusing node's mesh, and a line of
text that names both sides. It is neither encrypted nor authenticated (a forged one
changes nothing but a line of ``status``), names no node, and is never answered. Both
ends log the reason and list the other under ``refused`` in ``meshgpu status``, so nodes
that never meet say why (exo's users met nodes of two versions that silently never did).
"""

from __future__ import annotations

import struct
import time
from enum import IntEnum
from typing import Any

MAGIC = b"MG"
VERSION = 3
"""The protocol version: 1 authenticated with HMAC, 2 encrypts with AES-256-GCM, 3 names
an upload of inputs by the sender's ``upload`` id with the digest on its last range
(``put_inputs``; a version-2 node asks for the digest on every range, so it would refuse
every large upload of a version-3 sender: the version check refuses it up front)."""
FLAG_KEYED = 0x01
FLAG_REFUSAL = 0x80
"""A refusal: a peer of another version or mesh tells the sender why it drops its traffic."""
MAX_REFUSAL_TEXT = 512
MAX_REFUSED_RECORDS = 256

FIXED = struct.Struct("!2sBBBB")  # magic, version, flags, channel, sender length


class Channel(IntEnum):
    """What the envelope travels on; authenticated, so one cannot pose as the other."""

    DATAGRAM = 0
    FRAME = 1


def refusal(channel: Channel, mesh_named: bytes, text: str) -> bytes:
    """The envelope that tells a peer why it is refused (``mesh_named``: length | mesh)."""
    fixed = FIXED.pack(MAGIC, VERSION, FLAG_REFUSAL, channel, 0)
    return b"".join((fixed, mesh_named, text.encode()[:MAX_REFUSAL_TEXT]))


def read_refusal(data: bytes | bytearray | memoryview, mesh_length_at: int) -> tuple[str, str]:
    """(the refusing node's mesh, its reason) from a refusal envelope."""
    mesh_at = mesh_length_at + 1
    text_at = mesh_at + data[mesh_length_at]
    mesh = bytes(data[mesh_at:text_at]).decode(errors="replace")
    text = bytes(data[text_at : text_at + MAX_REFUSAL_TEXT]).decode(errors="replace")
    return mesh, text


class RefusedPeers:
    """The peers refused (or refusing us) and why, for ``status``; bounded."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        """label (node id, or address when the name is encrypted) -> the record."""

    def note(self, label: str, source: tuple[str, int] | None, message: str) -> None:
        known = self.records.pop(label, {})
        self.records[label] = {
            "node_id": label,
            "address": list(source) if source is not None else known.get("address"),
            "state": "refused",
            "reason": message,
            "at": time.time(),
        }
        if len(self.records) > MAX_REFUSED_RECORDS:  # drop the oldest record
            del self.records[min(self.records, key=lambda s: self.records[s]["at"])]
