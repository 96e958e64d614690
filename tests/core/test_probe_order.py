"""The probe order (membership/probe.py): suspects are probed out of turn, but never two
periods in a row, so the round robin still reaches every member within twice SWIM's bound
(time-bounded completeness) whatever stream of suspicions and refutations arrives."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from meshgpu.core.component import NodeContext
from meshgpu.core.config import MeshConfig
from meshgpu.core.effects import SendDatagram
from meshgpu.core.membership import MemberState, MemberTable
from meshgpu.core.membership.probe import Prober
from meshgpu.core.membership.wire import Ack, Alive, Dead, Ping, Suspect
from meshgpu.core.messages import decode
from meshgpu.core.suspicion import LocalHealth
from meshgpu.core.timers import Timers
from meshgpu.core.types import Address

PERIOD = 0.2


class Forward:
    """The table listener (``Swim`` in a node), reduced to what the prober is told."""

    prober: Prober

    def suspicion_scheduled(self, node_id: str, deadline: float) -> None:
        pass

    def suspicion_cleared(self, node_id: str) -> None:
        pass

    def new_suspect(self, node_id: str) -> None:
        self.prober.new_suspect(node_id)

    def new_member(self, node_id: str) -> None:
        self.prober.new_member(node_id)

    def gone(self, node_id: str) -> None:
        pass

    def hearsay(self, node_id: str) -> None:
        pass


class Mesh:
    """One node's table and prober among ``size`` other members that ack every ping."""

    def __init__(self, size: int, seed: int) -> None:
        config = MeshConfig()
        assert config.probe_suspects_first
        self.context = NodeContext("me", ("10.0.0.1", 7946), config, random.Random(seed))
        health = LocalHealth(config.awareness_max_multiplier)
        listener = Forward()
        self.table = MemberTable(self.context, health, now=0.0, listener=listener)
        self.prober = Prober(self.context, self.table, Timers(), health)
        listener.prober = self.prober
        self.members = [f"m{i}" for i in range(size)]
        self.by_address: dict[Address, str] = {}
        for i, node_id in enumerate(self.members):
            address = (f"10.0.1.{i + 1}", 7946)
            self.by_address[address] = node_id
            self.table.apply_alive(Alive(node_id, address, 0), 0.0, "join")
        self.now = 0.0

    def period(self) -> str:
        """One protocol period: the prober pings one member, which acks at once."""
        self.context.effects.clear()
        self.prober.probe_tick(self.now)
        [effect] = self.context.effects
        assert isinstance(effect, SendDatagram)
        ping = decode(effect.payload).body
        assert isinstance(ping, Ping)
        self.prober.on_ack(Ack(ping.seq))
        self.now += PERIOD
        return self.by_address[effect.destination]

    def suspect(self, node_id: str) -> None:
        """Gossip says ``node_id`` is suspect (a slow member, say)."""
        info = self.table.members[node_id]
        self.table.apply_suspect(Suspect(node_id, info.incarnation, "m0"), self.now, "gossip")

    def flap(self, node_id: str) -> None:
        """``node_id`` is declared dead, then comes back (a higher incarnation)."""
        info = self.table.members[node_id]
        self.table.apply_dead(Dead(node_id, info.incarnation, "m0"), self.now, "gossip")
        alive = Alive(node_id, info.address, info.incarnation + 1)
        self.table.apply_alive(alive, self.now, "back")

    def refute(self, node_id: str) -> None:
        """``node_id`` refutes its suspicion (a higher incarnation)."""
        info = self.table.members[node_id]
        if info.state is MemberState.SUSPECT:
            alive = Alive(node_id, info.address, info.incarnation + 1)
            self.table.apply_alive(alive, self.now, "refuted")


def test_a_new_suspect_is_probed_out_of_turn() -> None:
    mesh = Mesh(size=20, seed=3)
    mesh.period()
    mesh.suspect("m7")
    # the next period's probe goes to the suspect, ahead of the round robin
    assert mesh.period() == "m7"


def test_a_stream_of_suspects_does_not_starve_the_round_robin() -> None:
    """One member suspected again before every period: it is probed every other period,
    and the round robin still reaches every member within two rounds."""
    mesh = Mesh(size=6, seed=1)
    targets = []
    for _ in range(2 * 6):
        mesh.refute("m5")
        mesh.suspect("m5")
        targets.append(mesh.period())
    assert targets[::2] == ["m5"] * 6  # out of turn every other period
    assert set(targets) == set(mesh.members)  # and the round robin reached everyone


def test_a_member_revived_over_and_over_keeps_one_place_in_the_round() -> None:
    """Before every period one member is suspected anew and another is declared dead
    and comes back (slow ones): the round does not grow, so every member is still
    probed within twice the round-robin bound."""
    mesh = Mesh(size=4, seed=2)
    targets = []
    for _ in range(2 * (2 * 4 - 1)):
        mesh.refute("m0")
        mesh.suspect("m0")
        mesh.flap("m1")
        targets.append(mesh.period())
    assert set(targets) == set(mesh.members)


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=12),
    seed=st.integers(min_value=0, max_value=2**16),
    stream=st.lists(
        st.lists(
            st.tuples(
                st.sampled_from(["suspect", "refute", "flap"]),
                st.integers(min_value=0, max_value=11),
            ),
            max_size=4,
        ),
        min_size=1,
        max_size=60,
    ),
)
def test_every_member_is_probed_within_twice_the_round_robin_bound(
    size: int, seed: int, stream: list[list[tuple[str, int]]]
) -> None:
    """Between periods, any members are suspected, refute, or are declared dead and come
    back (``stream``, repeated).

    With L other members and no suspects, a shuffled round robin reaches every member in
    any L + (L - 1) consecutive periods (first in one round, last in the next). Suspects
    take at most every other period, so the bound doubles: every member is probed within
    the first 2L periods and in every window of 2(2L - 1) periods."""
    mesh = Mesh(size, seed)
    periods = 6 * size
    window = 2 * (2 * size - 1)
    targets = []
    for number in range(periods):
        for action, index in stream[number % len(stream)]:
            getattr(mesh, action)(mesh.members[index % size])
        targets.append(mesh.period())
    assert set(targets[: 2 * size]) == set(mesh.members)
    for start in range(periods - window + 1):
        assert set(targets[start : start + window]) == set(mesh.members), (start, targets)
