"""Task-queue settings, with LAN defaults; the ``[tasks]`` table of the node config."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from meshgpu.core.tasks.breaker import BreakerSettings
from meshgpu.core.tasks.strategies import STRATEGIES
from meshgpu.errors import ConfigError


@dataclass(frozen=True, slots=True)
class TaskConfig:
    """Every task-queue parameter. Times are seconds on the driver's clock."""

    strategy: str = "least_loaded"
    """Mesh-wide balancing strategy (a task may name its own): round_robin, least_loaded,
    device_match, latency, adaptive."""

    slots: int = 2
    """Tasks this node runs at once when the driver's load vector does not say (its
    ``active_tasks + free_slots``)."""

    replication_timeout_s: float = 1.0
    """How long the origin waits for a holder candidate before asking another one (an
    untried live member if any, else one asked before again)."""

    replication_give_up_s: float = 30.0
    """Overall bound on a submission's replication: past it the origin acknowledges with
    the copies that exist (the answer says how many) even though enough live members
    exist. With fewer live members than ``replicas`` it acknowledges at once."""

    sync_interval_s: float = 0.5
    """Period of the task-table anti-entropy exchange with one random peer."""

    tick_interval_s: float = 0.1
    """Housekeeping period while there is task work: deadlines, assignment timeouts,
    retry back-offs, replication timeouts, garbage collection."""

    assignment_timeout_s: float = 30.0
    """An assignment older than this (since this node first saw it) counts as a failed
    attempt and is retried elsewhere."""

    input_wait_s: float = 120.0
    """How long a task may wait for its inputs while no holder can serve them (every
    holder declared dead or left, as a restarting daemon is for a while, or workers
    reporting them unreachable) before it fails with "inputs unavailable". Such a wait is
    not an attempt: the retry policy's budget is for runs that failed."""

    gc_delay_s: float = 5.0
    """How long a delivered, terminal entry is kept (so the delivered mark spreads) before
    it becomes a tombstone."""

    unclaimed_keep_s: float = 600.0
    """How long a holder keeps the outcome of a task whose origin is dead or left and that
    no client collected (an orphaned submission, or a client gone with its entry node)
    before dropping it as if delivered."""

    load_publish_interval_s: float = 1.0
    """Least time between two routine updates of this node's gossiped load vector (tasks
    started or finished here, utilisation, latency estimates) in a mesh of up to
    ``load_publish_members`` live members; a change of capacity or capabilities is
    published at once."""

    load_publish_members: int = 10
    """Above this many live members the routine interval grows in proportion (30 members:
    3 s), so the mesh as a whole publishes about ``load_publish_members /
    load_publish_interval_s`` loads a second whatever its size: every publication is
    decoded by every node, several times over (measured: at 30 loopback daemons under
    load, one publication a second each took half of every node's CPU)."""

    breaker_failure_threshold: int = 3
    """Consecutive failures of a worker that open its circuit breaker."""

    breaker_open_s: float = 10.0
    """How long an open breaker keeps work away before letting a trial through."""

    breaker_half_open_trials: int = 1
    """Assignments let through while half-open, until one reports."""

    adaptive_alpha: float = 0.2
    """EWMA weight of a new observation in the adaptive strategy's model."""

    work_stealing: bool = False
    """Let an idle capable worker take over tasks assigned to a busy one that has not put
    them on its device yet (docs/task-queue.md, "Work stealing"). Workers then mark each
    attempt started in the table (one datagram to the leader per task). Off by default: a
    mesh of equal nodes gains nothing from it, and a mesh where some nodes have it off
    still works (they never mark starts, so nothing is stolen from them)."""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            choices = ", ".join(sorted(STRATEGIES))
            raise ConfigError(
                f"tasks.strategy {self.strategy!r} is unknown: choose one of {choices}"
            )
        if self.slots < 0:
            raise ConfigError(f"tasks.slots must be >= 0, got {self.slots}")
        for name in (
            "replication_timeout_s",
            "replication_give_up_s",
            "sync_interval_s",
            "tick_interval_s",
            "assignment_timeout_s",
            "input_wait_s",
            "breaker_open_s",
            "unclaimed_keep_s",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"tasks.{name} must be positive, got {getattr(self, name)}")
        if self.load_publish_interval_s < 0 or self.load_publish_members < 1:
            raise ConfigError(
                "tasks.load_publish_interval_s must be >= 0 and load_publish_members >= 1"
            )
        if self.breaker_failure_threshold < 1 or self.breaker_half_open_trials < 1:
            raise ConfigError("tasks.breaker_failure_threshold and half_open_trials must be >= 1")
        if not 0.0 < self.adaptive_alpha <= 1.0:
            raise ConfigError(f"tasks.adaptive_alpha must be in (0, 1], got {self.adaptive_alpha}")

    @property
    def breaker(self) -> BreakerSettings:
        return BreakerSettings(
            self.breaker_failure_threshold, self.breaker_open_s, self.breaker_half_open_trials
        )

    @classmethod
    def from_mapping(cls, table: Mapping[str, object]) -> TaskConfig:
        """Build from a TOML ``[tasks]`` table; unknown keys and wrong types are errors."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, object] = {}
        for key, value in table.items():
            field = fields.get(key)
            if field is None:
                raise ConfigError(
                    f"unknown [tasks] setting {key!r}; known: {', '.join(sorted(fields))}"
                )
            default = field.default
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ConfigError(f"[tasks] {key} must be true or false, got {value!r}")
            elif not isinstance(value, type(default)):
                if not (isinstance(default, float) and isinstance(value, int)):
                    raise ConfigError(
                        f"[tasks] {key} must be {type(default).__name__}, got {value!r}"
                    )
                value = float(value)
            values[key] = value
        return cls(**values)  # type: ignore[arg-type]
