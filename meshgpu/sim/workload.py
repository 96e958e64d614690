"""Workloads: when tasks arrive, which model they run, and their priority.

Arrivals are a Poisson process at ``rate_per_s`` between ``start_s`` and ``stop_s``
(exponential inter-arrival times), plus ``bursts`` of ``count`` simultaneous submissions at
given times (a class submitting a batch). Each arrival draws a model from ``models``
(weights), a priority from ``priorities`` (weights), and whether it is a deliberately bad
input (``bad_fraction``: fails permanently, never retried). Everything comes from the
run's named random streams, so the same seed gives the same workload.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from meshgpu.core.tasks import DeviceRequirements, Priority, RetryPolicy, TaskSpec
from meshgpu.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Burst:
    at_s: float
    count: int


@dataclass(frozen=True, slots=True)
class Workload:
    """What the simulated clients submit."""

    rate_per_s: float = 10.0
    start_s: float = 2.0
    stop_s: float | None = None
    """Last arrival time; default: 10 s before the end of the run (time to drain)."""
    models: Mapping[str, float] = field(default_factory=lambda: {"resnet50": 1.0})
    priorities: Mapping[str, float] = field(default_factory=lambda: {"normal": 1.0})
    bursts: tuple[Burst, ...] = ()
    bad_fraction: float = 0.0
    replicas: int = 2
    deadline_s: float | None = None
    max_attempts: int = 5
    input_bytes: Mapping[str, int] = field(default_factory=dict)
    """Encoded input size per model (data-plane transfer time); default 600 kB."""
    requirements: Mapping[str, DeviceRequirements] = field(default_factory=dict)
    """Hard device requirements per model (e.g. fp16 models need an fp16 device)."""

    def arrival_times(self, duration_s: float, rng: random.Random) -> list[float]:
        """Sorted submission times of the whole run."""
        stop = self.stop_s if self.stop_s is not None else max(self.start_s, duration_s - 10.0)
        times: list[float] = []
        if self.rate_per_s > 0:
            now = self.start_s
            while True:
                now += rng.expovariate(self.rate_per_s)
                if now > stop:
                    break
                times.append(now)
        for burst in self.bursts:
            times.extend([burst.at_s] * burst.count)
        return sorted(times)

    def make_spec(self, number: int, rng: random.Random) -> tuple[TaskSpec, bool]:
        """The spec of submission ``number`` and whether its input is deliberately bad."""
        model = _weighted(self.models, rng)
        priority = Priority.parse(_weighted(self.priorities, rng))
        bad = rng.random() < self.bad_fraction
        digest = hashlib.sha256(f"input-{number}".encode()).hexdigest()
        spec = TaskSpec(
            model_digest=model,
            input_digest=digest,
            input_shapes=(("input", (1, 3, 224, 224)),),
            priority=priority,
            requirements=self.requirements.get(model, DeviceRequirements()),
            deadline_s=self.deadline_s,
            retry=RetryPolicy(max_attempts=self.max_attempts, base_s=0.05, max_s=2.0),
            replicas=self.replicas,
        )
        return spec, bad

    def input_size(self, model: str) -> int:
        return self.input_bytes.get(model, 600_000)

    @classmethod
    def from_mapping(cls, table: Mapping[str, object], where: str) -> Workload:
        known = {
            "rate_per_s", "start_s", "stop_s", "models", "priorities", "bursts",
            "bad_fraction", "replicas", "deadline_s", "max_attempts", "input_bytes",
            "requirements",
        }  # fmt: skip
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
        values: dict[str, object] = {}
        for key in ("rate_per_s", "start_s", "stop_s", "bad_fraction", "deadline_s"):
            if key in table:
                values[key] = config_number(table[key], f"{where}.{key}")
        for key in ("replicas", "max_attempts"):
            if key in table:
                values[key] = config_int(table[key], f"{where}.{key}")
        for key in ("models", "priorities"):
            if key in table:
                values[key] = {
                    str(k): config_number(v, f"{where}.{key}.{k}")
                    for k, v in _table(table[key], where, key).items()
                }
        if "input_bytes" in table:
            values["input_bytes"] = {
                str(k): config_int(v, f"{where}.input_bytes.{k}")
                for k, v in _table(table["input_bytes"], where, "input_bytes").items()
            }
        if "requirements" in table:
            requirements = {}
            for model, raw in _table(table["requirements"], where, "requirements").items():
                req = _table(raw, where, f"requirements.{model}")
                requirements[str(model)] = DeviceRequirements(
                    device_type=req.get("device_type"),  # type: ignore[arg-type]
                    min_memory=config_int(req.get("min_memory", 0), f"{where}.min_memory"),
                    fp16=bool(req.get("fp16", False)),
                )
            values["requirements"] = requirements
        if "bursts" in table:
            raw_bursts = table["bursts"]
            if not isinstance(raw_bursts, list):
                raise ConfigError(f"{where}.bursts must be an array of {{at_s, count}} tables")
            values["bursts"] = tuple(Burst(float(b["at_s"]), int(b["count"])) for b in raw_bursts)
        workload = cls(**values)  # type: ignore[arg-type]
        for priority in workload.priorities:
            Priority.parse(priority)
        if not workload.models:
            raise ConfigError(f"{where}.models must name at least one model")
        return workload


def config_number(value: object, where: str) -> float:
    """A TOML number (int or float, not bool) as float, else a ConfigError naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    return float(value)


def config_int(value: object, where: str) -> int:
    """A TOML integer, else a ConfigError naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    return value


def _table(value: object, where: str, key: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}.{key} must be a table")
    return value


def _weighted(weights: Mapping[str, float], rng: random.Random) -> str:
    names = sorted(weights)
    return rng.choices(names, weights=[weights[n] for n in names])[0]
