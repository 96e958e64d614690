"""API tokens: who may do what over HTTP.

``--api-tokens FILE`` names a text file with one token a line, stored hashed::

    # role  sha256 of the token                                              label
    read    0b14d501a594442a01c6859541bcb3e8164d183d32937b851835442f69d5c94e  grafana
    infer   6ee4a469cd4e91053847f5d3fcb61dbcc91e8f0ef10be7748da4c4a1ba382d17  lab-app

A request then needs ``Authorization: Bearer TOKEN``; the token's sha256 is looked up
(compared in constant time) and its role decides: ``read`` reads (health, metadata,
status, tasks, metrics, the dashboard), ``infer`` also runs inference, ``admin`` also
changes the model catalog and loads/unloads models. ``meshgpu http-token ROLE`` makes a
token and prints its line. The file holds no secret: a leaked file lets nobody in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

from meshgpu.errors import ConfigError

ROLES = ("read", "infer", "admin")
"""Each role may do what the ones before it may."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "mgt_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class TokenTable:
    """The hashed tokens of one ``--api-tokens`` file: hash -> (role, label)."""

    entries: tuple[tuple[str, str, str], ...]

    @classmethod
    def load(cls, path: Path) -> TokenTable:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"cannot read API token file {path}: {error}") from None
        entries = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            fields = line.split()
            if len(fields) not in (2, 3) or fields[0] not in ROLES:
                raise ConfigError(
                    f"{path}:{number}: expected 'ROLE SHA256 [LABEL]' with ROLE one of "
                    f"{', '.join(ROLES)}"
                )
            digest = fields[1].lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ConfigError(
                    f"{path}:{number}: the second field is the token's sha256 (64 hex digits), "
                    "never the token itself"
                )
            entries.append((digest, fields[0], fields[2] if len(fields) == 3 else ""))
        if not entries:
            raise ConfigError(f"API token file {path} has no tokens")
        return cls(tuple(entries))

    def role_of(self, authorization: str | None) -> str | None:
        """The role of the bearer token in an ``Authorization`` header, or None."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        digest = hash_token(authorization.removeprefix("Bearer ").strip())
        found = None
        for stored, role, _ in self.entries:  # every entry compared: no early exit
            if hmac.compare_digest(stored, digest):
                found = role
        return found


def allows(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)
