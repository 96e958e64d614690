"""Durable copies written with ``O_DIRECT``, the disk's write overlapped with the next
range's work (docs/daemon.md, "A GiB's copies" and "Write-behind").

A receiver of a large payload hashes each range, copies it into the warm arrays and
writes it to its durable copy; a worker spills its result the same way. A direct
``pwrite`` returns only once the disk took the bytes, and made in the same worker-thread
call as the hash and the copies it put the disk's time and the CPU's one after the
other on every range: on the project's 2-core VM the disk sat idle while a receiver
hashed and copied, and the CPU while it wrote (one 16 MiB range: about 35 ms of CPU and
40-80 ms of disk, so a receiver moved 140-150 MB/s where either alone allows 200 and
more). Now the writes go to a thread of the writer's own, in order, from staging
buffers that rotate (``DEPTH``): the caller copies a range into a free buffer and goes
on (hash, warm copy, the next range) while the disk writes the previous one.

What a copy promises is unchanged: :meth:`DirectWriter.finish` waits until every queued
write is on the disk (or failed, and then raises) before the caller fsyncs and installs
the file, and nothing is acknowledged before that fsync. Rejected: writing from the warm
arrays themselves (no staging copy, but the file interleaves the tensors' headers with
their data, so a direct write's aligned block straddles memory that is not one buffer;
the staging copy is 0.17 CPU s a GiB here); ``io_uring`` (not in Python's standard
library, and one thread per writer has the same effect for sequential writes).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import mmap
import os
import queue
import threading
from pathlib import Path

STAGE_BYTES = 16 << 20
"""One staging buffer: a range of the default size (blobs.CHUNK_BYTES) fills one."""
DEPTH = 2
"""Staging buffers per writer: one being written to the disk while the caller fills the
next (memory: ``DEPTH x STAGE_BYTES`` per durable copy being written)."""
DIRECT_BLOCK = 4096
"""What a direct write's memory, offset and length are multiples of (the logical block
size of common disks is 512 or 4096 bytes)."""


def copy_without_gil(target: memoryview | mmap.mmap, source: bytes | memoryview) -> None:
    """``target[:] = source`` (bytes of equal length) by numpy's copy, which releases the
    GIL; a ``memoryview`` or ``mmap`` slice assignment holds it for the whole copy. A
    16 MiB range took 50-60 ms to copy at load 25 on the project's VM, and a thread of
    the same process waiting for the GIL meanwhile waited 72 ms (median) between its
    steps against 0.7 ms with numpy's: the event loop of a node receiving a GiB is that
    thread, and answers its probes late."""
    import numpy as np

    np.copyto(np.frombuffer(target, np.uint8), np.frombuffer(source, np.uint8))


def staging_buffer() -> mmap.mmap:
    """A page-aligned buffer of ``STAGE_BYTES`` for direct writes: a private anonymous
    mapping (Python's anonymous ``mmap`` is shared memory by default, whose page faults
    and unmapping cost about twice as much: blobs.fresh_array)."""
    private = getattr(mmap, "MAP_PRIVATE", None)
    if private is None:
        return mmap.mmap(-1, STAGE_BYTES)
    return mmap.mmap(-1, STAGE_BYTES, flags=private | mmap.MAP_ANONYMOUS)


class DirectRefused(Exception):
    """The kernel refused a direct write: the bytes staged but not written (``data``,
    to be written at ``offset``) go on buffered."""

    def __init__(self, data: bytes, offset: int) -> None:
        super().__init__(f"direct write refused at {offset}")
        self.data = data
        self.offset = offset


class DirectWriter:
    """Appends to a file with ``O_DIRECT``: the bytes go from aligned staging buffers of
    our own (``DEPTH`` of ``STAGE_BYTES``, reused) to the disk, not through the page
    cache, written by a thread of the writer's while the caller goes on. Invoked (from
    one thread at a time, a worker thread of the event loop) for the durable copies of
    large payloads, whose writer fsyncs them before they count (that fsync stays: a
    direct write may sit in the disk's volatile cache, and the file's extents are
    metadata). A range costs one copy into a staging buffer, where a buffered write costs
    one copy into fresh page-cache pages, which the kernel must find, account, write back
    and, under memory pressure, reclaim: on the project's VM a GiB written directly took
    1.1-1.2 s and 0.2 CPU s against 0.7-2.8 s and 0.5-1.1 CPU s buffered (docs/daemon.md).
    The whole blocks staged are queued at the end of each :meth:`write`; :meth:`finish`
    waits for the queue, writes the last, partial block padded with zeros and cuts the
    file to its size. :meth:`open` returns None where the filesystem takes no direct
    I/O, and a write the kernel refuses (an alignment this class does not meet) hands
    the bytes not written back (:meth:`write` or :meth:`finish` raises
    :class:`DirectRefused`): the caller goes on buffered. Any other error of a queued
    write is raised by the next :meth:`write` or :meth:`finish`."""

    def __init__(self, descriptor: int) -> None:
        self._descriptor = descriptor
        self._stage = staging_buffer()
        self._staged = 0
        self._spare: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        for _ in range(DEPTH - 1):
            self._spare.put(staging_buffer())
        self._jobs: collections.deque[tuple[mmap.mmap, int, int]] = collections.deque()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        """The writing thread while it has queued writes (it ends when it has none)."""
        self._failure: Exception | None = None
        self._refused: list[tuple[int, bytes]] = []
        """After a refused write: the bytes of it and of every write queued after it."""
        self.written = 0
        """Bytes queued from the start of the file (a multiple of DIRECT_BLOCK); on disk
        once :meth:`finish` returned."""

    @classmethod
    def open(cls, path: Path) -> DirectWriter | None:
        flag = getattr(os, "O_DIRECT", None)
        if flag is None:
            return None
        try:
            descriptor = os.open(path, os.O_WRONLY | flag)
        except OSError as error:
            if error.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                return None
            raise
        try:
            return cls(descriptor)
        except BaseException:  # no staging memory: the caller's error, not a lost descriptor
            os.close(descriptor)
            raise

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        self._check()
        view = memoryview(chunk).cast("B")
        while view:
            take = min(len(view), STAGE_BYTES - self._staged)
            with memoryview(self._stage) as stage:
                copy_without_gil(stage[self._staged : self._staged + take], view[:take])
            self._staged += take
            view = view[take:]
            self._queue(self._staged - self._staged % DIRECT_BLOCK)

    def _queue(self, length: int) -> None:
        """Hand the first ``length`` staged bytes (whole blocks) to the writing thread and
        stage the rest at the start of the next free buffer."""
        if not length:
            return
        stage = self._spare.get()  # waits while every other buffer is being written
        if self._failure is not None:
            self._spare.put(stage)
            self._check()
        rest = self._staged - length
        if rest:
            stage[:rest] = self._stage[length : self._staged]
        with self._lock:
            self._jobs.append((self._stage, length, self.written))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._write_queued, name="meshgpu-direct-write", daemon=True
                )
                self._thread.start()
        self.written += length
        self._stage, self._staged = stage, rest

    def _write_queued(self) -> None:
        """The writing thread: each queued buffer to the disk, in order; after a failure
        the rest are kept (a refusal) or dropped, and every buffer goes back. It ends
        when the queue is empty (the next write starts another): a writer that is
        dropped half-written leaves no thread behind."""
        while True:
            with self._lock:
                if not self._jobs:
                    self._thread = None
                    if self._closed:
                        self._close_descriptor()
                    return
                stage, length, offset = self._jobs.popleft()
            try:
                if self._failure is None:
                    self._write_out(stage, length, offset)
                elif self._refused:  # the caller writes these buffered
                    self._refused.append((offset, bytes(stage[:length])))
            except Exception as error:  # raised to the caller by its next call
                self._failure = error
            finally:
                self._spare.put(stage)  # the caller may be waiting for it

    def _write_out(self, stage: mmap.mmap, length: int, offset: int) -> None:
        with memoryview(stage) as staged:
            done = 0
            while done < length:
                try:
                    done += os.pwrite(self._descriptor, staged[done:length], offset + done)
                except OSError as error:
                    if error.errno == errno.EINVAL and not done:
                        self._refused.append((offset, bytes(staged[:length])))
                    raise

    def _wait(self) -> None:
        """Until every queued write ended (each buffer is back)."""
        if self._thread is None:
            return
        buffers = [self._spare.get() for _ in range(DEPTH - 1)]
        for stage in buffers:
            self._spare.put(stage)

    def _check(self) -> None:
        """Raise what a queued write met: DirectRefused with every byte not written (the
        refused writes, those queued after them, what is staged), else its OSError."""
        if self._failure is None:
            return
        self._wait()
        if not self._refused:
            raise self._failure
        offset = self._refused[0][0]
        pieces = [data for _, data in self._refused] + [bytes(self._stage[: self._staged])]
        self._refused.clear()
        self._failure, self._staged = None, 0
        raise DirectRefused(b"".join(pieces), offset)

    def finish(self, size: int) -> None:
        """Wait for the queued writes, write what is staged (a last partial block,
        padded) and cut the file to ``size`` bytes; the caller fsyncs."""
        self._wait()
        self._check()
        if self._staged:
            padded = -(-self._staged // DIRECT_BLOCK) * DIRECT_BLOCK
            self._stage[self._staged : padded] = bytes(padded - self._staged)
            try:
                self._write_out(self._stage, padded, self.written)
            except OSError as error:
                if not self._refused:
                    raise
                self._refused.clear()
                raise DirectRefused(bytes(self._stage[: self._staged]), self.written) from error
            self.written += padded
            self._staged = 0
        os.ftruncate(self._descriptor, size)

    def close(self) -> None:
        """Give the file and the buffers up (invoked after :meth:`finish`, or to abandon
        the copy, possibly on the event loop): queued writes not yet started are
        dropped, and one under way keeps the descriptor until it ends (the thread closes
        it then), so a closed number is never written to."""
        with self._lock:
            self._closed = True
            self._jobs.clear()
            if self._thread is None:
                self._close_descriptor()
        with contextlib.suppress(BufferError):  # a view still held: unmapped with it
            self._stage.close()

    def _close_descriptor(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._descriptor)
