"""The model catalog kept in the data dir (``catalog.json``), so a mesh restarted whole
keeps the models registered in it.

The file holds every catalog update the node holds (removals included: a tombstone must
outlive a restart, or a stale copy elsewhere would bring a removed name back), each as
its wire fields (core/catalog.py). At start the driver feeds them to the node as
``CatalogRestored``; the core keeps each one only where it is newer in the
last-writer-wins order than what it holds, so a node rejoining a mesh that moved on
merges exactly as if a peer had gossiped its old updates. :class:`CatalogKeeper` writes
the file (atomically: scratch file, fsync, rename) within ``interval`` seconds of a
change and once more when the daemon stops.

An unreadable file is logged and set aside (``catalog.json.bad``): the mesh's other
nodes hold the catalog too, and refusing to start over it would take the node away.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import trio

from meshgpu.core.catalog import CatalogUpdate
from meshgpu.daemon.identity import write_text_durably
from meshgpu.errors import DecodeError, StorageError

logger = logging.getLogger(__name__)

CATALOG_NAME = "catalog.json"
SAVE_INTERVAL_S = 1.0


class CatalogFile:
    """Reads and writes ``catalog.json`` in a data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / CATALOG_NAME

    def load(self) -> tuple[CatalogUpdate, ...]:
        """The updates saved last (none if there is no file or it is unreadable)."""
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(record, dict) or not isinstance(record.get("updates"), list):
                raise DecodeError("expected an object with a list 'updates'")
            return tuple(CatalogUpdate.from_fields(fields) for fields in record["updates"])
        except FileNotFoundError:
            return ()
        except (OSError, ValueError, DecodeError) as error:
            aside = self.path.with_name(CATALOG_NAME + ".bad")
            logger.error(
                "%s is unreadable (%s); moved to %s, the catalog comes from the mesh",
                self.path,
                error,
                aside.name,
            )
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            return ()

    def save(self, updates: Mapping[str, CatalogUpdate]) -> None:
        text = json.dumps({"updates": [updates[name].to_fields() for name in sorted(updates)]})
        write_text_durably(self.path, text + "\n")


class CatalogKeeper:
    """Writes the node's catalog updates to ``catalog.json`` when they change."""

    def __init__(
        self,
        file: CatalogFile,
        updates: Callable[[], Mapping[str, CatalogUpdate]],
        interval: float = SAVE_INTERVAL_S,
    ) -> None:
        self.file = file
        self._updates = updates
        self.interval = interval
        self._saved: dict[str, CatalogUpdate] | None = None

    def restored(self) -> tuple[CatalogUpdate, ...]:
        """What the file holds now; what the node starts from is saved already."""
        updates = self.file.load()
        self._saved = {update.name: update for update in updates}
        return updates

    def save_if_changed(self) -> bool:
        """Write the file now if the catalog changed since it was last written (at stop)."""
        current = dict(self._updates())
        if current == self._saved:
            return False
        try:
            self.file.save(current)
        except StorageError as error:
            logger.error("%s", error)
            return False
        self._saved = current
        return True

    async def run(self) -> None:
        """Write a changed catalog every ``interval`` seconds (the write in a thread, from
        a copy taken here: the node's dict is only read on the trio thread)."""
        while True:
            await trio.sleep(self.interval)
            current = dict(self._updates())
            if current == self._saved:
                continue
            try:
                await trio.to_thread.run_sync(self.file.save, current)
            except StorageError as error:
                logger.error("%s", error)
                continue
            self._saved = current
