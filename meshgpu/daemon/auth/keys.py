"""A mesh key: the 32-byte secret whose holders are members of the mesh.

A key has a non-secret name, its *fingerprint* (12 hex digits of a SHA-256 of the secret
under a label of its own), printed by `meshgpu keygen`, `meshgpu status` and `meshgpu
keyring list`; the envelope carries the fingerprint's first 4 bytes (the *key id*) so a
receiver knows which of its keys opens it. The envelope's cipher is keyed with a key
derived from the secret (HKDF-SHA256), never the secret itself, so the fingerprint and
the cipher key stay apart.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from meshgpu.errors import ConfigError

KEY_BYTES = 32
KEY_ID_BYTES = 4
KEY_ENV = "MESHGPU_KEY"


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
    """The mesh key from ``--key-file`` (first) or ``MESHGPU_KEY``; None means no key given."""
    if key_file is not None:
        return MeshKey.from_file(key_file)
    text = environ.get(KEY_ENV, "").strip()
    if text:
        return MeshKey.from_text(text, origin=f"${KEY_ENV}")
    return None
