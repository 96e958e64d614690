"""The simulator's catalog driver: concurrent catalog changes and the LWW convergence check.

Joins a run through the scenario's ``[catalog]`` table (``scenario.EXTENSION_SECTIONS``).
From ``start_s`` to ``stop_s`` it makes ``rate_per_s`` changes a second (Poisson), each at
a random live node: a random name of ``names`` set to a fresh digest, or removed with
probability ``remove_fraction``. Changes at different nodes to the same name often
overlap in time, so the last-writer-wins order (``(clock, origin)``, core/catalog.py) is
what decides them; partitions and crashes in the scenario's ``[[fault]]`` tables act on
the same run.

Invariant ``catalog_convergence``, checked at the end of the run: every live node holds
the same winning update for every name, and no change made at a node that is still
alive at the end is lost (the winner of its name is that change or a later one in the
LWW order). A change made at a node that crashed may be lost if the node died before
gossiping it; that is the register's documented behaviour, not a violation.
Metrics: ``catalog_changes`` (made), ``catalog_names`` (live names at the end),
``catalog_disagreed_samples`` (samples at which two live nodes held different catalogs) and
``catalog_converged_at_s`` (the sample after the last change from which on every live
node agreed; null if they did not at the end).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshgpu.core.events import CatalogChange
from meshgpu.errors import ConfigError
from meshgpu.sim.observers import Observer
from meshgpu.sim.workload import config_int, config_number

DRIVER_KEYS = {"rate_per_s", "start_s", "stop_s", "names", "remove_fraction"}


@dataclass(frozen=True, slots=True)
class CatalogSimSettings:
    """The ``[catalog]`` table of a scenario."""

    rate_per_s: float = 2.0
    start_s: float = 1.0
    stop_s: float = 10.0
    names: int = 5
    remove_fraction: float = 0.25

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], duration_s: float) -> CatalogSimSettings:
        where = "[catalog]"
        unknown = sorted(set(table) - DRIVER_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(DRIVER_KEYS)}")
        values: dict[str, Any] = {
            key: config_number(table[key], f"{where}.{key}")
            for key in ("rate_per_s", "start_s", "stop_s", "remove_fraction")
            if key in table
        }
        if "names" in table:
            values["names"] = config_int(table["names"], f"{where}.names")
        settings = cls(**values)
        if settings.rate_per_s <= 0:
            raise ConfigError(f"{where}.rate_per_s must be > 0, got {settings.rate_per_s}")
        if not 0 <= settings.start_s < settings.stop_s <= duration_s:
            raise ConfigError(
                f"{where}: need 0 <= start_s < stop_s <= scenario.duration_s "
                f"({duration_s:g}), got start_s={settings.start_s:g}, stop_s={settings.stop_s:g}"
            )
        if settings.names < 1:
            raise ConfigError(f"{where}.names must be >= 1, got {settings.names}")
        if not 0 <= settings.remove_fraction <= 1:
            raise ConfigError(f"{where}.remove_fraction must be in [0, 1]")
        return settings


def _winners(node: Any) -> dict[str, tuple[int, str, str]]:
    """name -> (clock, origin, digest) of every update ``node`` holds (removals included)."""
    return {
        name: (update.clock, update.origin, update.digest)
        for name, update in node.model_catalog.updates.items()
    }


class CatalogDriver(Observer):
    """Makes catalog changes during a run and checks that live nodes converge (LWW)."""

    name = "catalog"

    def __init__(self, settings: CatalogSimSettings) -> None:
        self.settings = settings
        self.made: list[tuple[int, int, str, tuple[int, str]]] = []
        """(node index, node life, name, stamp) of every change a node accepted."""
        self.counter = 0
        self.converged_at: float | None = None
        self.violation: str | None = None
        self.final_names = 0
        self.disagreed_samples = 0

    def on_start(self, sim: Any) -> None:
        self.random = sim.random_stream("catalog")
        self.sim = sim
        first = self.settings.start_s + self.random.expovariate(self.settings.rate_per_s)
        if first < self.settings.stop_s:
            sim.call_at(first, self._change)

    def _change(self, sim: Any) -> None:
        up = sim.up_indices()
        if up:
            index = self.random.choice(up)
            name = f"model-{self.random.randrange(self.settings.names)}"
            digest: str | None = None
            if self.random.random() >= self.settings.remove_fraction:
                self.counter += 1
                digest = hashlib.sha256(f"{name}/{self.counter}".encode()).hexdigest()
            sim.trace_event("catalog", n=index, name=name, digest=digest or "")
            sim.inject(index, CatalogChange(name, digest), sim.now)
            sim.call_at(
                sim.now,
                lambda s, i=index, life=sim.lives[index], n=name: self._record(s, i, life, n),
            )
        following = sim.now + self.random.expovariate(self.settings.rate_per_s)
        if following < self.settings.stop_s:
            sim.call_at(following, self._change)

    def _record(self, sim: Any, index: int, life: int, name: str) -> None:
        """After the injected change ran: remember the stamp it got at its node."""
        node = sim.nodes[index]
        if not sim.up[index] or sim.lives[index] != life or node is None:
            return
        update = node.model_catalog.updates.get(name)
        if update is not None and update.origin == node.node_id:
            self.made.append((index, life, name, update.stamp()))

    def _agreement(self, sim: Any) -> dict[str, tuple[int, str, str]] | None:
        """The catalog every live node holds, or None if two live nodes differ."""
        agreed: dict[str, tuple[int, str, str]] | None = None
        for index in sim.up_indices():
            held = _winners(sim.nodes[index])
            if agreed is None:
                agreed = held
            elif held != agreed:
                return None
        return agreed

    def on_sample(self, sim: Any, now: float) -> None:
        if self._agreement(sim) is None:
            self.disagreed_samples += 1
            self.converged_at = None
        elif self.converged_at is None and now >= self.settings.stop_s:
            self.converged_at = now

    def on_finish(self, sim: Any, now: float) -> None:
        up = sim.up_indices()
        if not up:
            return
        views = {index: _winners(sim.nodes[index]) for index in up}
        first = up[0]
        for index in up[1:]:
            if views[index] != views[first]:
                names = sorted(
                    name
                    for name in set(views[index]) | set(views[first])
                    if views[index].get(name) != views[first].get(name)
                )
                self.violation = (
                    f"live nodes {first} and {index} hold different catalogs at the end "
                    f"(names {names[:5]}): {views[first].get(names[0])} vs "
                    f"{views[index].get(names[0])}"
                )
                return
        final = views[first]
        self.final_names = sum(1 for entry in final.values() if entry[2])
        for index, life, name, stamp in self.made:
            if sim.lives[index] != life or not sim.up[index]:
                continue  # made at a node life that ended: may be lost with it
            winner = final.get(name)
            if winner is None or (winner[0], winner[1]) < stamp:
                self.violation = (
                    f"the change of {name!r} made at live node {index} with stamp {stamp} "
                    f"is lost: the catalog ends with {winner}"
                )
                return

    def invariants(self) -> dict[str, str]:
        return {"catalog_convergence": self.violation or "ok"}

    def metrics(self) -> dict[str, Any]:
        return {
            "catalog_changes": len(self.made),
            "catalog_names": self.final_names,
            "catalog_disagreed_samples": self.disagreed_samples,
            "catalog_converged_at_s": (
                None if self.converged_at is None else round(self.converged_at, 3)
            ),
        }


def build(table: Mapping[str, Any], scenario: Any) -> CatalogDriver:
    """Factory named in ``meshgpu.sim.scenario.EXTENSION_SECTIONS["catalog"]``."""
    return CatalogDriver(CatalogSimSettings.from_mapping(table, scenario.duration_s))
