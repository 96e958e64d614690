"""The live dashboard: a page at ``/`` (assets shipped in the package, no CDN) fed by
server-sent events at ``/dashboard/events``.

A watcher task (in the HTTP part's nursery) samples the node's status whenever a member
or the leader changes (not when input is refused: a barrage of garbage is counters, and
woke the sampler ten times a second) and at least every ``INTERVAL_S``, and keeps what a
page cannot get from one snapshot: an events timeline (members joined, suspected, dead,
left, revived; the leader changed), per-model latency over time (from the inference
counters' deltas), and the last infer requests with where they ran and how long they
took. Each event stream sends the whole state when it opens,
then again after every sample: a page never reloads and never misses a change. The last
tasks (a walk of the whole task table) are taken only while a page watches: a daemon
nobody looks at does not pay for them twice a second.

The page and its assets are served to anyone who can reach the port (they hold no data);
the event stream needs a ``read`` token when tokens are configured, which the page asks for
and sends in the ``Authorization`` header.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from importlib import resources
from typing import Any

import trio

from meshgpu.http.metrics import InferenceStats

INTERVAL_S = 0.5
CHANGE_GAP_S = 0.05
"""After a change, the sample waits this long, so that a burst of changes (a storm of
suspicions, a flood of refused datagrams) costs one sample of the status and the task
table, not one each; still shorter than any state a page should show."""
TIMELINE = 200
LATENCY_POINTS = 240
RECENT = 50
ASSETS = ("index.html", "dashboard.js", "dashboard.css")
MEDIA = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


def asset(name: str) -> tuple[bytes, str]:
    """An asset's bytes and media type (KeyError for anything not shipped)."""
    if name not in ASSETS:
        raise KeyError(name)
    data = resources.files("meshgpu.http").joinpath("assets", name).read_bytes()
    return data, MEDIA[name[name.rindex(".") :]]


class Dashboard:
    """What the page shows beyond one status snapshot, and the stream that sends it."""

    def __init__(
        self,
        status: Callable[[], dict[str, Any]],
        tasks: Callable[[], list[dict[str, Any]]],
        catalog: Callable[[], Mapping[str, Any]],
        stats: InferenceStats,
        changed: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.changed = changed
        """Returns when something observable changed (a member, the leader): sampled at
        once, so a state shorter than the interval (a brief suspicion) is not missed."""
        self.status = status
        self.tasks = tasks
        self.catalog = catalog
        self.stats = stats
        self.timeline: deque[dict[str, Any]] = deque(maxlen=TIMELINE)
        self.latency: dict[str, deque[tuple[float, float]]] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._members: dict[str, str] = {}
        self._leader: tuple[str | None, int] | None = None
        self._counts: dict[tuple[str, str], tuple[int, int]] = {}
        self.version = 0
        self._changed = trio.Event()
        self.watchers = 0
        """Event streams open (the task table is sampled only while there is one)."""
        self._with_tasks = False
        """The last sample holds the tasks (it was taken while a page watched)."""

    def infer_done(
        self, model: str, worker: str | None, task_id: str, seconds: float, ok: bool
    ) -> None:
        self.recent.appendleft(
            {
                "at": time.time(),
                "model": model,
                "worker": worker,
                "task_id": task_id,
                "ms": round(seconds * 1000, 2),
                "ok": ok,
            }
        )

    def _event(self, kind: str, text: str) -> None:
        self.timeline.appendleft({"at": time.time(), "kind": kind, "text": text})

    def sample(self) -> dict[str, Any]:
        """Take one sample: note what changed since the last one; the page's state."""
        self._with_tasks = self.watchers > 0
        status = self.status()
        now = time.time()
        members = {m["node_id"]: m["state"] for m in status["members"]}
        for node_id, state in members.items():
            before = self._members.get(node_id)
            if before == state:
                continue
            if before is None:
                if self._members or node_id != status["node"]["node_id"]:
                    kind = "joined" if state == "alive" else state
                    self._event(kind, f"{node_id} {kind}")
            elif state == "alive":
                self._event("alive", f"{node_id} alive again (was {before})")
            else:
                member = next(m for m in status["members"] if m["node_id"] == node_id)
                why = f": {member['reason']}" if member.get("reason") else ""
                self._event(state, f"{node_id} {state}{why}")
        self._members = members
        leader = (status["leader"], status["view"])
        if leader != self._leader:
            if self._leader is not None:
                self._event("leader", f"leader {leader[0]} (view {leader[1]})")
            self._leader = leader
        for (model, version), counts in list(self.stats.models.items()):
            done, spent = counts.success, counts.request_us
            last_done, last_spent = self._counts.get((model, version), (0, 0))
            if done > last_done:
                series = self.latency.setdefault(model, deque(maxlen=LATENCY_POINTS))
                series.append((now, (spent - last_spent) / (done - last_done) / 1000.0))
            self._counts[(model, version)] = (done, spent)
        return {
            "at": now,
            "status": status,
            "tasks": self.tasks()[-RECENT:] if self.watchers else [],
            "catalog": [
                {"name": name, "version": model.version, "digest": model.digest}
                for name, model in sorted(self.catalog().items())
            ],
            "latency": {model: list(series) for model, series in sorted(self.latency.items())},
            "recent": list(self.recent),
            "timeline": list(self.timeline),
        }

    async def run(self) -> None:
        """Sample forever (in the HTTP part's nursery), waking the streams each time."""
        while True:
            self.state = self.sample()
            self.version += 1
            self._changed.set()
            self._changed = trio.Event()
            with trio.move_on_after(INTERVAL_S):
                if self.changed is None:
                    await trio.sleep_forever()
                await self.changed()
                await trio.sleep(CHANGE_GAP_S)  # a burst of changes is one sample

    async def stream(self) -> AsyncIterator[bytes]:
        """Server-sent events: the state now, then after every sample."""
        self.watchers += 1
        try:
            if not hasattr(self, "state") or not self._with_tasks:
                self.state = self.sample()
            while True:
                changed = self._changed
                payload = json.dumps(self.state, separators=(",", ":"), default=str)
                yield f"event: state\ndata: {payload}\n\n".encode()
                await changed.wait()
        finally:
            self.watchers -= 1
