"""Two in-process daemons, ``a`` and ``b`` (seeded with ``a``), each with its own labels,
for the tests that place tasks by label through real daemons."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from meshgpu.client import AsyncClient
from meshgpu.daemon.runtime import Daemon
from tests.daemon.test_runtime import settings

WAIT_S = 60.0

Labels = tuple[tuple[str, str], ...]


async def labelled_loads(client: AsyncClient) -> dict[str, Any]:
    """Each member's labels as the client's node last heard them (None: no load yet)."""
    status = await client.status()
    return {m["node_id"]: (m.get("load") or {}).get("labels") for m in status["members"]}


@asynccontextmanager
async def labelled_pair(
    tmp_path: Path, a_labels: Labels = (), b_labels: Labels = ()
) -> AsyncIterator[AsyncClient]:
    """A client of ``a`` once ``a`` has heard both members' labels: a task that requires
    one of them can be placed from the first submit on (a member is listed before its
    load, and so its labels, is gossiped). Both daemons stop when the block ends."""
    first = Daemon(dataclasses.replace(settings(tmp_path / "a"), name="a", labels=a_labels))
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        second = Daemon(
            dataclasses.replace(
                settings(tmp_path / "b"),
                name="b",
                labels=b_labels,
                peers=(f"127.0.0.1:{first.address[1]}",),
            )
        )
        await nursery.start(second.run)
        wanted = {"a": dict(a_labels), "b": dict(b_labels)}
        async with AsyncClient(("127.0.0.1", first.address[1]), environ={}) as client:
            with trio.fail_after(WAIT_S):
                # No change event for another member's load: polled, bounded.
                while await labelled_loads(client) != wanted:
                    await trio.sleep(0.1)
            yield client
        nursery.cancel_scope.cancel()
