"""Keys, the keyring and the envelope: what makes a mesh's traffic private and its own.

* ``keys.py``: a mesh key, its fingerprint and key id, reading and writing key files;
* ``keyring.py``: the keys a node holds (install, use, remove), replicated as a CRDT
  and kept in the data dir;
* ``envelope.py``: sealing and opening every datagram and frame (AES-256-GCM with the
  keyring's keys, replay window, freshness, ``verify_incoming``/``verify_outgoing``);
* ``handshake.py``: the fixed header every protocol version reads and the refusal that
  tells a peer of another version or mesh, or holding a removed key, why.
"""

from meshgpu.daemon.auth.envelope import (
    MAX_OVERHEAD,
    TAG_BYTES,
    Authenticator,
    Envelope,
    Sealer,
)
from meshgpu.daemon.auth.handshake import VERSION, Channel
from meshgpu.daemon.auth.keyring import KEYRING_FILE, Keyring
from meshgpu.daemon.auth.keys import KEY_ENV, MeshKey, load_mesh_key

__all__ = [
    "KEYRING_FILE",
    "KEY_ENV",
    "MAX_OVERHEAD",
    "TAG_BYTES",
    "VERSION",
    "Authenticator",
    "Channel",
    "Envelope",
    "Keyring",
    "MeshKey",
    "Sealer",
    "load_mesh_key",
]
