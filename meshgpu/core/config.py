"""All timing and sizing parameters of the mesh core, in one frozen object.

Defaults are tuned for a lab LAN (sub-millisecond RTT, a few dozen machines): probes are
five times faster than HashiCorp memberlist's LAN profile (1 s probes, suspicion 4-24 s at
ten nodes) so that every live node agrees on a death within 2 s. docs/protocol.md explains
each value and the arithmetic behind the 2 s budget.

``MeshConfig.from_mapping`` builds one from a TOML table (``[mesh]`` in the daemon's config
file, ``[timing]`` in a scenario) and rejects unknown keys and wrong types with
:class:`ConfigError`. The table's ``profile`` key picks the starting values: ``lan`` (the
defaults) or ``wan`` (:data:`PROFILES`, for sites joined across a wide-area network); the
table's other keys override the profile's.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

from meshgpu.core.tasks.config import TaskConfig
from meshgpu.errors import ConfigError


@dataclass(frozen=True, slots=True)
class MeshConfig:
    """Timing and sizing of membership, gossip and leadership. Times are seconds."""

    probe_interval: float = 0.2
    """SWIM protocol period: each node probes one member per period (scaled by local health)."""

    probe_timeout: float = 0.1
    """How long to wait for a direct ack before asking ``indirect_checks`` peers to probe;
    the rest of the period is the indirect window (scaled by local health)."""

    indirect_checks: int = 3
    """SWIM's k: how many peers relay a probe when the direct ping got no ack."""

    suspicion_multiplier: float = 1.5
    """Lifeguard/memberlist alpha: the minimum suspicion timeout is
    ``alpha * max(1, log10(n)) * probe_interval`` (0.3 s at 10 nodes, 0.51 s at 50)."""

    suspicion_max_multiplier: float = 3.0
    """Lifeguard beta: a suspicion with no independent confirmation lasts
    ``beta * minimum`` before the member is declared dead."""

    suspicion_confirmations: int = 3
    """Lifeguard K: independent confirmations after which the suspicion timeout has shrunk
    to its minimum (capped at n - 2 in small meshes)."""

    probe_suspects_first: bool = True
    """Probe a member as soon as it becomes suspect (before the round-robin order): speeds
    up both the independent confirmations of a real failure and the refutation of a false
    one (the probe carries the suspicion to the suspect)."""

    awareness_max_multiplier: int = 8
    """Lifeguard local health: the most a node's own probe interval and timeouts are
    stretched (as ``1 + health score``) when it sees signs that it is itself slow."""

    retransmit_multiplier: int = 4
    """Lambda: each piggybacked update is sent ``lambda * ceil(log10(n + 1))`` times."""

    gossip_interval: float = 0.1
    """How often pending updates are pushed to ``gossip_fanout`` random peers (only while
    there is something to send: an idle mesh sends no gossip datagrams)."""

    gossip_fanout: int = 3
    """Peers per gossip round, and peers a death is pushed to at once when declared."""

    push_pull_interval: float = 10.0
    """Anti-entropy: how often a node exchanges its full state with one random peer;
    stretched by ``1 + ceil(log2(n / 32))`` above 32 nodes, as memberlist does."""

    reconnect_interval: float = 0.5
    """How often a node pings ``reconnect_fanout`` random remembered-dead members, so that
    the two sides of a healed partition find each other again."""

    reconnect_fanout: int = 3
    """Remembered-dead members pinged per reconnect round (all of them when fewer). One
    per round let a small mesh whose crashed members outnumber the far side's live ones
    stay split for several rounds after a heal (the pick kept landing on the crashed)."""

    dead_retention: float = 60.0
    """How long a dead or departed member is remembered (so stale gossip cannot revive it,
    and so a healed partition can reconnect) before it is forgotten."""

    leader_rotation_interval: float = 30.0
    """How long a leader keeps a view before it hands over by bumping the view number."""

    max_datagram_bytes: int = 1400
    """Largest datagram sent or accepted (fits an Ethernet MTU with IP/UDP headers)."""

    max_piggyback_updates: int = 24
    """Most piggybacked updates per datagram (bounds per-message work)."""

    lifeguard: bool = True
    """False turns off all three Lifeguard refinements (local health, shrinking suspicion
    timeouts, telling the suspect directly): plain SWIM with a fixed suspicion timeout."""

    lifeguard_probe: bool = True
    """Lifeguard's local health aware probe (LHA-Probe, section 4.1 of the paper): missed
    acks, missing nacks and refutations raise a health score that stretches this node's
    probe interval and timeouts; relays answer indirect probes with nacks. Only with
    ``lifeguard``; false turns this one refinement off (the paper's ablation)."""

    lifeguard_suspicion: bool = True
    """Lifeguard's local health aware suspicion (LHA-Suspicion, section 4.2): a suspicion
    starts at ``suspicion_max`` and shrinks towards ``suspicion_min`` with independent
    confirmations. Off: SWIM's fixed ``suspicion_min`` timeout. Only with ``lifeguard``."""

    lifeguard_buddy: bool = True
    """Lifeguard's buddy system (section 4.3): a probe of a suspect carries the suspicion,
    and a suspect that contacts us is told, so it refutes at once; with it the hearsay
    rule (another node's death verdict about a member held alive becomes a suspicion here,
    docs/protocol.md). Only with ``lifeguard``."""

    uses_health_probe: bool = dataclasses.field(default=True, init=False)
    """``lifeguard and lifeguard_probe`` (derived: one attribute read on hot paths)."""

    uses_health_suspicion: bool = dataclasses.field(default=True, init=False)
    """``lifeguard and lifeguard_suspicion`` (derived)."""

    uses_buddy: bool = dataclasses.field(default=True, init=False)
    """``lifeguard and lifeguard_buddy`` (derived)."""

    tasks: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    """Task-queue settings (the ``[tasks]`` sub-table; see :class:`TaskConfig`)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "uses_health_probe", self.lifeguard and self.lifeguard_probe)
        object.__setattr__(
            self, "uses_health_suspicion", self.lifeguard and self.lifeguard_suspicion
        )
        object.__setattr__(self, "uses_buddy", self.lifeguard and self.lifeguard_buddy)
        positive = (
            "probe_interval",
            "probe_timeout",
            "suspicion_multiplier",
            "gossip_interval",
            "push_pull_interval",
            "reconnect_interval",
            "leader_rotation_interval",
        )
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"mesh config: {name} must be a positive number, got {value!r}")
        if self.probe_timeout >= self.probe_interval:
            raise ConfigError(
                "mesh config: probe_timeout must be shorter than probe_interval "
                f"({self.probe_timeout} >= {self.probe_interval}); the rest of the period "
                "is the indirect-probe window"
            )
        if self.suspicion_max_multiplier < 1:
            raise ConfigError("mesh config: suspicion_max_multiplier must be >= 1")
        if self.dead_retention < 0:
            raise ConfigError("mesh config: dead_retention must be >= 0")
        if self.max_datagram_bytes < 512:
            raise ConfigError("mesh config: max_datagram_bytes must be at least 512")
        at_least = {
            "indirect_checks": 0,
            "suspicion_confirmations": 0,
            "awareness_max_multiplier": 0,
            "retransmit_multiplier": 1,
            "gossip_fanout": 1,
            "reconnect_fanout": 1,
            "max_piggyback_updates": 1,
        }
        for name, low in at_least.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"mesh config: {name} must be an integer >= {low}")

    @classmethod
    def for_profile(cls, name: str) -> MeshConfig:
        """The config of timing profile ``name`` (``lan`` or ``wan``, see :data:`PROFILES`)."""
        if name not in PROFILES:
            raise ConfigError(
                f"mesh config: unknown profile {name!r}; the profiles are {', '.join(PROFILES)}"
            )
        return cls(**PROFILES[name])  # type: ignore[arg-type]

    @classmethod
    def from_mapping(cls, table: Mapping[str, object]) -> MeshConfig:
        """Build a config from a TOML table; unknown keys and wrong types are ConfigErrors.

        ``profile = "wan"`` starts from that profile's values; the other keys override them.
        """
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(table) - set(fields) - {"profile"})
        if unknown:
            raise ConfigError(
                f"mesh config: unknown key(s) {', '.join(unknown)}; "
                f"known keys are {', '.join(sorted([*fields, 'profile']))}"
            )
        profile = table.get("profile", "lan")
        if not isinstance(profile, str):
            raise ConfigError(f"mesh config: profile must be a string, got {profile!r}")
        cls.for_profile(profile)  # an unknown profile is refused with the known ones
        values: dict[str, object] = dict(PROFILES[profile])
        for name, raw in table.items():
            if name == "profile":
                continue
            if name == "tasks":
                if not isinstance(raw, Mapping):
                    raise ConfigError(f"mesh config: tasks must be a table, got {raw!r}")
                values[name] = TaskConfig.from_mapping(raw)
                continue
            default = getattr(cls(), name)
            if isinstance(default, bool):
                if not isinstance(raw, bool):
                    raise ConfigError(f"mesh config: {name} must be true or false, got {raw!r}")
                values[name] = raw
            elif isinstance(default, int):
                if not isinstance(raw, int) or isinstance(raw, bool):
                    raise ConfigError(f"mesh config: {name} must be an integer, got {raw!r}")
                values[name] = raw
            else:
                if not isinstance(raw, int | float) or isinstance(raw, bool):
                    raise ConfigError(f"mesh config: {name} must be a number, got {raw!r}")
                values[name] = float(raw)
        return cls(**values)  # type: ignore[arg-type]

    def node_scale(self, members: int) -> float:
        """memberlist's ``max(1, log10(n))``: how timeouts grow with the mesh size."""
        return max(1.0, math.log10(max(1, members)))

    def suspicion_min(self, members: int) -> float:
        """Shortest suspicion timeout for a mesh of ``members`` nodes (all confirmations in)."""
        return self.suspicion_multiplier * self.node_scale(members) * self.probe_interval

    def suspicion_max(self, members: int) -> float:
        """Suspicion timeout with no independent confirmation (Lifeguard only)."""
        return self.suspicion_max_multiplier * self.suspicion_min(members)

    def retransmit_limit(self, members: int) -> int:
        """How many times one update is piggybacked by each node that holds it."""
        return self.retransmit_multiplier * max(1, math.ceil(math.log10(members + 1)))

    def push_pull_period(self, members: int) -> float:
        """The anti-entropy interval, stretched for large meshes (memberlist's pushPullScale)."""
        if members <= 32:
            return self.push_pull_interval
        return self.push_pull_interval * (1 + math.ceil(math.log2(members) - math.log2(32)))


PROFILES: dict[str, Mapping[str, object]] = {
    "lan": {},
    "wan": {
        "probe_interval": 1.0,
        "probe_timeout": 0.4,
        "suspicion_multiplier": 2.25,
        "gossip_interval": 0.25,
        "gossip_fanout": 4,
        "push_pull_interval": 20.0,
        "dead_retention": 120.0,
    },
}
"""Timing profiles, as memberlist's ``DefaultLANConfig``/``DefaultWANConfig``.

``lan`` is the defaults above. ``wan`` is for sites joined by a wide-area link (tens to a
couple of hundred milliseconds of round trip, some loss): it applies memberlist's own
LAN-to-WAN ratios to the LAN profile (probe interval x5, probe timeout x5 where
memberlist has x6, so that a 0.5 s indirect window remains; suspicion multiplier x1.5,
gossip interval x2.5 to one more peer, push-pull x2, dead members remembered x2). It keeps
memberlist's shape without its absolute values (5 s probes, suspicion from 51 s at 50
nodes), which detect a death in minutes; docs/protocol.md has the arithmetic behind
detection within 10 s across an 80 ms link with 1 % loss.
"""
