"""A content-addressed cache of ONNX models, bounded in size, least recently used out.

A model is named by the sha256 of its bytes, so a digest means the same model on every
node and a fetched copy can be checked before it is trusted. Files live at
``<dir>/<digest>.onnx``; a download goes to ``<digest>.partial`` first and is renamed
into place only after its digest matched, so the cache never holds a model that is not
what its name says (a crash mid-download leaves only a ``.partial``, swept at start).

Eviction is least-recently-used by access time kept in memory (seeded from file mtimes
at start, refreshed with ``os.utime`` on use so the order survives a restart; at most
once a minute per model: a use is a syscall that dirties an inode otherwise, on every
task and every HTTP request of a warm model, and a restart's order needs no finer
grain). Models
pinned by a running task are never evicted; if pinned models alone exceed the limit the
cache goes over it rather than break a running task, and says so in ``over_limit``.

Rejected alternative: a size limit by model count; lab models range from 100 KB to
500 MB, so a count says nothing about disk use.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from meshgpu.daemon.journal import storage_error
from meshgpu.errors import DigestMismatchError, StorageError

DIGEST_PATTERN = re.compile(r"^[0-9a-f]{64}$")
SUFFIX = ".onnx"


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    if not DIGEST_PATTERN.match(digest):
        raise StorageError(f"{digest!r} is not a sha256 hex digest")
    return digest


class ModelWriter:
    """Receives a model in chunks, hashing as it goes; ``commit`` verifies and installs it."""

    def __init__(self, store: ModelStore, digest: str) -> None:
        self._store = store
        self.digest = digest
        self.path = store.directory / f"{digest}.{secrets.token_hex(4)}.partial"
        try:
            self._handle = open(self.path, "wb")  # noqa: SIM115 (closed in commit/abort)
        except OSError as error:
            raise storage_error(error, f"storing model {digest[:12]}") from None
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        try:
            self._handle.write(chunk)
        except OSError as error:
            self.abort()
            raise storage_error(error, f"storing model {self.digest[:12]}") from None
        self._hash.update(chunk)
        self.size += len(chunk)

    def commit(self) -> Path:
        actual = self._hash.hexdigest()
        if actual != self.digest:
            self.abort()
            raise DigestMismatchError(
                f"model fetched as {self.digest[:12]} hashes to {actual[:12]}: the peer sent "
                "different bytes (corrupt copy or wrong file); fetch it from another peer"
            )
        try:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            return self._store._install(self.path, self.digest, self.size)
        except OSError as error:
            self.abort()
            raise storage_error(error, f"installing model {self.digest[:12]}") from None

    def abort(self) -> None:
        # close() flushes what is buffered: on a full disk it fails again (ENOSPC), and
        # must not hide the error being reported nor keep the partial file.
        with contextlib.suppress(OSError):
            self._handle.close()
        self.path.unlink(missing_ok=True)


MTIME_REFRESH_S = 60.0
"""A model's file mtime (its use order after a restart) is set at most this often."""


class ModelStore:
    """The model cache of one node; ``max_bytes`` bounds the bytes of unpinned models."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._sizes: dict[str, int] = {}
        self._used: dict[str, float] = {}
        self._stamped: dict[str, float] = {}
        """When each model's mtime was last set (the ``os.utime`` of :meth:`_touch`)."""
        self._pins: Counter[str] = Counter()
        self.evictions = 0
        directory.mkdir(parents=True, exist_ok=True)
        for leftover in directory.glob("*.partial"):
            leftover.unlink(missing_ok=True)
        for path in directory.glob(f"*{SUFFIX}"):
            digest = path.name.removesuffix(SUFFIX)
            if DIGEST_PATTERN.match(digest):
                stat = path.stat()
                self._sizes[digest] = stat.st_size
                self._used[digest] = stat.st_mtime

    @property
    def total_bytes(self) -> int:
        return sum(self._sizes.values())

    @property
    def over_limit(self) -> bool:
        return self.total_bytes > self.max_bytes

    def digests(self) -> list[str]:
        return sorted(self._sizes)

    def has(self, digest: str) -> bool:
        return digest in self._sizes

    def path(self, digest: str) -> Path | None:
        """Where the model is, or None; counts as a use for LRU."""
        if digest not in self._sizes:
            return None
        self._touch(digest)
        return self.directory / f"{digest}{SUFFIX}"

    def read(self, digest: str) -> bytes:
        path = self.path(digest)
        if path is None:
            raise StorageError(f"model {digest[:12]} is not in this node's cache")
        return path.read_bytes()

    def put(self, data: bytes, expected: str | None = None) -> str:
        """Store model bytes (verifying ``expected`` if given); returns the digest."""
        digest = expected or digest_of(data)
        check_digest(digest)
        if digest in self._sizes:
            self._touch(digest)
            return digest
        writer = self.writer(digest)
        writer.write(data)
        writer.commit()
        return digest

    def writer(self, digest: str) -> ModelWriter:
        """Start receiving model ``digest`` in chunks (a transfer from a peer)."""
        return ModelWriter(self, check_digest(digest))

    @contextmanager
    def pinned(self, digest: str) -> Iterator[Path]:
        """Keep ``digest`` from eviction while a task uses it."""
        path = self.path(digest)
        if path is None:
            raise StorageError(f"model {digest[:12]} is not in this node's cache")
        self._pins[digest] += 1
        try:
            yield path
        finally:
            self._pins[digest] -= 1
            if self._pins[digest] <= 0:
                del self._pins[digest]
            self._evict()

    def _touch(self, digest: str) -> None:
        now = time.time()
        self._used[digest] = now
        # The in-memory order is what counts while running; the mtime is for restarts.
        if now - self._stamped.get(digest, -MTIME_REFRESH_S) < MTIME_REFRESH_S:
            return
        self._stamped[digest] = now
        with contextlib.suppress(OSError):
            os.utime(self.directory / f"{digest}{SUFFIX}", (now, now))

    def _install(self, partial: Path, digest: str, size: int) -> Path:
        final = self.directory / f"{digest}{SUFFIX}"
        os.replace(partial, final)
        self._sizes[digest] = size
        self._touch(digest)
        self._pins[digest] += 1  # the newcomer is never its own eviction victim
        try:
            self._evict()
        finally:
            self._pins[digest] -= 1
            if self._pins[digest] <= 0:
                del self._pins[digest]
        return final

    def _evict(self) -> None:
        for digest in sorted(self._sizes, key=lambda d: self._used.get(d, 0.0)):
            if self.total_bytes <= self.max_bytes:
                return
            if self._pins[digest]:
                continue
            (self.directory / f"{digest}{SUFFIX}").unlink(missing_ok=True)
            del self._sizes[digest]
            self._used.pop(digest, None)
            self._stamped.pop(digest, None)
            self.evictions += 1
