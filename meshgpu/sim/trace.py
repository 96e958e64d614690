"""The event trace of a run (invariant 10): one JSON line per processed event.

``trace_sha256`` is the SHA-256 of exactly the bytes ``--trace`` writes, less the belief
lines (:meth:`EventTrace.view`), which follow from the hashed ones. Times in it are whole
nanoseconds (``ns``), not the float's ``repr``: the shortest-repr conversion of a float
was 6 % of the CPU of a steady mesh, and a nanosecond resolves any two events the network
can separate.

Lines are buffered and hashed (and written) in chunks by :meth:`EventTrace.flush`; the
runner's loop appends to :attr:`EventTrace.lines` directly, which is why that list is
cleared in place and never replaced.
"""

from __future__ import annotations

import hashlib
import json
from typing import IO, Any

FLUSH_LINES = 4096
"""Buffered lines after which the runner flushes (hashes and writes) the trace."""


class EventTrace:
    """The buffered trace of one run, its running hash and its optional file."""

    def __init__(self, file: IO[str] | None) -> None:
        self.file = file
        self.lines: list[str] = []
        """Lines not yet flushed (appended to by the runner's loop)."""
        self._views: list[tuple[int, str]] = []
        self._hash = hashlib.sha256()
        self.flushed = 0
        """Lines hashed so far."""

    @property
    def events(self) -> int:
        """Events recorded so far: the lines of the trace."""
        return self.flushed + len(self.lines)

    def emit(self, line: str) -> None:
        self.lines.append(line)

    def view(self, line: str) -> None:
        """A belief line: written after the event that caused it, not hashed. Dropped when
        no file is written."""
        if self.file is not None:
            self._views.append((len(self.lines), line))

    def flush(self) -> None:
        """Hash the buffered lines and write them (with the belief lines) to the file."""
        lines = self.lines
        views = self._views
        if not lines and not views:
            return
        chunk = "\n".join(lines) + "\n" if lines else ""
        if self.file is not None:
            self.file.write(_interleave(lines, views) if views else chunk)
            views.clear()
        self.flushed += len(lines)
        lines.clear()  # in place: the loop holds a reference to the list
        self._hash.update(chunk.encode())

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def json_line(time: float, kind: str, fields: dict[str, Any]) -> str:
    """One trace line: ``ns`` (virtual time in whole nanoseconds), ``e`` (the kind), then
    ``fields`` with sorted keys."""
    body = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    if not fields:
        return f'{{"ns":{round(time * 1e9)},"e":"{kind}"}}'
    return f'{{"ns":{round(time * 1e9)},"e":"{kind}",{body[1:]}'


def describe(event: Any) -> str:
    """An event's type and the node it names, for trace lines and error messages."""
    name = type(event).__name__
    node_id = getattr(event, "node_id", None)
    return f"{name}({node_id})" if node_id is not None else name


def _interleave(lines: list[str], views: list[tuple[int, str]]) -> str:
    """The trace lines with the view lines inserted at their positions."""
    merged: list[str] = []
    start = 0
    for position, line in views:
        merged.extend(lines[start:position])
        merged.append(line)
        start = position
    merged.extend(lines[start:])
    return "\n".join(merged) + "\n"
