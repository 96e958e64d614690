"""Device profiles: how long a simulated worker takes to run a model, and how often it fails.

The simulator never runs kernels (design.md section 2); a worker's execution is a service
time drawn from a log-normal distribution with the profile's mean and coefficient of
variation for that (device class, model) pair. Log-normal because inference latencies are
positive and right-skewed (a warm kernel is fast; cache misses, clock ramps and
co-tenants make the tail). The built-in classes are rough orders of magnitude for a lab:

* ``old_gpu``: an old OpenCL-only card (e.g. a Radeon HD 7000): slow, no fp16, 3 GB;
* ``new_gpu``: a recent card: about 4x faster than the old one, fp16, 16 GB;
* ``cpu``: a CPU through PoCL: about 4x slower than the old card.

Scenarios pick classes per node (``lab``) and may override any number (``[tasks.profiles]``).

A batch of ``b`` tasks run as one device run (dynamic batching, ``[tasks] batching``) takes
one draw times ``b ** batch_exponent``: sub-linear (exponent below 1) because a GPU's
cores sit partly idle on one sample and a run has fixed costs (launches, transfers). The
built-in exponents are rough: 0.5 for the new card, 0.6 for the old one, 0.9 for a CPU
(already busy on one sample).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from meshgpu.core.load import DeviceCapabilities, LoadVector
from meshgpu.errors import ConfigError
from meshgpu.sim.workload import config_int, config_number

GIB = 1 << 30


@dataclass(frozen=True, slots=True)
class DeviceClass:
    """One kind of machine: capabilities, concurrent slots, and service times per model."""

    name: str
    device_types: tuple[str, ...]
    slots: int
    memory_total: int
    fp16: bool
    mean_s: Mapping[str, float] = field(default_factory=dict)
    """Mean service time per model name; models not listed take ``default_mean_s``."""
    default_mean_s: float = 0.05
    cv: float = 0.3
    """Coefficient of variation (standard deviation / mean) of the service time."""
    failure_rate: float = 0.0
    """Probability that one execution fails transiently (device error)."""
    batch_exponent: float = 1.0
    """A run of ``b`` tasks takes one draw times ``b ** batch_exponent`` (1: no gain)."""

    def mean_for(self, model: str) -> float:
        return self.mean_s.get(model, self.default_mean_s)

    def service_time(self, model: str, rng: random.Random) -> float:
        """One draw of the service time of ``model`` on this class."""
        mean = self.mean_for(model)
        sigma2 = math.log(1.0 + self.cv * self.cv)
        return rng.lognormvariate(math.log(mean) - sigma2 / 2.0, math.sqrt(sigma2))

    def load_vector(self, prefetch_per_slot: int = 0) -> LoadVector:
        """What a node of this class reports to its core (``LoadChanged``): its slots, plus
        ``prefetch_per_slot`` waiting places per slot."""
        caps = DeviceCapabilities(self.device_types, self.fp16, self.memory_total)
        capacity = self.slots * (1 + prefetch_per_slot)
        return LoadVector(free_slots=capacity, memory_total=self.memory_total, capabilities=caps)


BUILTIN_CLASSES: dict[str, DeviceClass] = {
    "old_gpu": DeviceClass(
        "old_gpu",
        ("gpu",),
        slots=2,
        memory_total=3 * GIB,
        fp16=False,
        mean_s={"resnet50": 0.16, "squeezenet": 0.04, "mlp": 0.006},
        default_mean_s=0.08,
        batch_exponent=0.6,
    ),
    "new_gpu": DeviceClass(
        "new_gpu",
        ("gpu",),
        slots=2,
        memory_total=16 * GIB,
        fp16=True,
        mean_s={"resnet50": 0.04, "squeezenet": 0.01, "mlp": 0.002},
        default_mean_s=0.02,
        batch_exponent=0.5,
    ),
    "cpu": DeviceClass(
        "cpu",
        ("cpu",),
        slots=2,
        memory_total=16 * GIB,
        fp16=False,
        mean_s={"resnet50": 0.6, "squeezenet": 0.15, "mlp": 0.01},
        default_mean_s=0.3,
        batch_exponent=0.9,
    ),
}


def device_classes(overrides: Mapping[str, object], where: str) -> dict[str, DeviceClass]:
    """The built-in classes with ``[tasks.profiles.<class>]`` overrides applied
    (``mean_s = {model = seconds}``, ``cv``, ``failure_rate``, ``slots``, ...)."""
    classes = dict(BUILTIN_CLASSES)
    for name, raw in overrides.items():
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}.profiles.{name} must be a table")
        base = classes.get(name, DeviceClass(name, ("gpu",), 2, 8 * GIB, False))
        changes: dict[str, object] = {}
        for key, value in raw.items():
            if key == "mean_s":
                if not isinstance(value, Mapping):
                    raise ConfigError(f"{where}.profiles.{name}.mean_s must be a table")
                changes[key] = {
                    **base.mean_s,
                    **{str(k): config_number(v, f"{where}.mean_s.{k}") for k, v in value.items()},
                }
            elif key == "device_types":
                if not isinstance(value, list):
                    raise ConfigError(f"{where}.profiles.{name}.device_types must be a list")
                changes[key] = tuple(str(v) for v in value)
            elif key in ("slots", "memory_total"):
                changes[key] = config_int(value, f"{where}.profiles.{name}.{key}")
            elif key == "fp16":
                changes[key] = bool(value)
            elif key in ("default_mean_s", "cv", "failure_rate", "batch_exponent"):
                changes[key] = config_number(value, f"{where}.profiles.{name}.{key}")
            else:
                raise ConfigError(f"{where}.profiles.{name}: unknown key {key!r}")
        classes[name] = replace(base, **changes)  # type: ignore[arg-type]
    return classes


def lab_layout(
    lab: Mapping[str, object], node_count: int, classes: Mapping[str, DeviceClass], where: str
) -> list[DeviceClass]:
    """Device class of each node index: ``lab = {old_gpu = 4, new_gpu = 4, cpu = 4}`` fills
    indices in that order; an empty lab makes every node a ``new_gpu``."""
    if not lab:
        return [classes["new_gpu"]] * node_count
    layout: list[DeviceClass] = []
    for name, count in lab.items():
        if name not in classes:
            raise ConfigError(
                f"{where}.lab: unknown device class {name!r}; known: {sorted(classes)}"
            )
        if not isinstance(count, int) or count < 0:
            raise ConfigError(f"{where}.lab.{name} must be a non-negative integer")
        layout.extend([classes[name]] * count)
    if len(layout) != node_count:
        raise ConfigError(
            f"{where}.lab names {len(layout)} nodes but the scenario has {node_count}"
        )
    return layout
