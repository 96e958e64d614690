"""The leader rule and load gossip."""

from __future__ import annotations

import math
import random
from dataclasses import replace

from meshgpu.core.component import NodeContext
from meshgpu.core.config import MeshConfig
from meshgpu.core.leader import Leadership, leader_for_view, leader_score
from meshgpu.core.load import LoadGossip, LoadUpdate, LoadVector
from meshgpu.core.membership import MemberTable
from meshgpu.core.membership.wire import Alive, Gossip, Left, Suspect
from meshgpu.core.messages import Envelope, encode_item
from meshgpu.core.suspicion import LocalHealth
from meshgpu.core.tasks.config import TaskConfig
from meshgpu.core.tasks.own_load import OwnLoad

IDS = [f"n{i:02d}" for i in range(20)]


def test_leader_is_a_pure_function_of_view_and_members() -> None:
    assert leader_for_view(7, IDS) == leader_for_view(7, list(reversed(IDS)))
    assert leader_for_view(7, []) is None
    assert leader_score(3, "a") == leader_score(3, "a")


def test_memoised_leader_score_is_the_blake2b_rendezvous_score() -> None:
    """The scores are memoised (pure cache): the values must stay the documented
    function, a cleared or full cache must not change them, and the cache stays bounded."""
    import hashlib

    def direct(view: int, node_id: str) -> int:
        digest = hashlib.blake2b(f"{view}:{node_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big")

    assert leader_score(3, "a") == direct(3, "a")  # a miss, then a hit
    assert leader_score(3, "a") == direct(3, "a")
    maxsize = leader_score.cache_info().maxsize
    assert maxsize is not None
    for view in range(maxsize // len(IDS) + 2):  # past the bound: evicted
        for node_id in IDS:
            assert leader_score(view, node_id) == direct(view, node_id)
    assert leader_score.cache_info().currsize <= maxsize


def test_removing_a_non_leader_never_moves_leadership() -> None:
    for view in range(50):
        leader = leader_for_view(view, IDS)
        others = [n for n in IDS if n != leader]
        assert leader_for_view(view, [n for n in IDS if n != others[view % len(others)]]) == leader


def test_rotation_spreads_leadership_over_members() -> None:
    leaders = {leader_for_view(view, IDS) for view in range(200)}
    assert len(leaders) >= 15


def _leadership(now: float = 0.0) -> tuple[MemberTable, Leadership]:
    context = NodeContext("me", ("h", 1), MeshConfig(), random.Random(1))
    table = MemberTable(context, LocalHealth(8), now)
    leadership = Leadership(context, table, now)
    context.member_listeners.append(leadership.on_member_changed)
    for node_id in IDS:
        table.apply_alive(Alive(node_id, ("h", 2), 0), now, "join")
    leadership.settle(now)
    return table, leadership


def test_incremental_leader_matches_the_rule() -> None:
    table, leadership = _leadership()
    assert leadership.leader == leader_for_view(leadership.view, table.sorted_live())


def test_suspected_leader_bumps_the_view_at_once() -> None:
    table, leadership = _leadership()
    old_leader, old_view = leadership.leader, leadership.view
    assert old_leader is not None and old_leader != "me"
    table.apply_suspect(Suspect(old_leader, 0, "me"), 1.0, "probe failed")
    leadership.settle(1.0)
    assert leadership.view > old_view
    assert leadership.leader != old_leader
    assert leadership.leader == leader_for_view(leadership.view, table.sorted_live())


def test_max_view_wins_and_leader_rotates_on_its_interval() -> None:
    _, leadership = _leadership()
    leadership.observe_view(41, 2.0)
    leadership.observe_view(40, 2.1)
    assert leadership.view == 41
    leadership.leader = "me"  # pretend we lead: we must hand over after the interval
    deadline = leadership.next_deadline()
    assert deadline == 2.0 + MeshConfig().leader_rotation_interval
    leadership.on_tick(deadline)
    assert leadership.view == 42


def test_load_newest_version_wins_and_dead_members_are_dropped() -> None:
    context = NodeContext("me", ("h", 1), MeshConfig(), random.Random(1))
    table = MemberTable(context, LocalHealth(8), 0.0)
    loads = LoadGossip(context, table.members)
    context.member_listeners.append(loads.on_member_changed)
    table.apply_alive(Alive("x", ("h", 2), 0), 0.0, "join")
    envelope = Envelope("x", 0, 0, Gossip())
    loads.on_update(envelope, LoadUpdate("x", LoadVector(version=2, active_tasks=5)), ("h", 2), 0)
    loads.on_update(envelope, LoadUpdate("x", LoadVector(version=1, active_tasks=9)), ("h", 2), 0)
    assert loads.loads()["x"].active_tasks == 5
    table.apply_left(Left("x", 0), 1.0, "left")
    assert "x" not in loads.loads()


def test_own_load_is_versioned_by_the_node_and_trimmed_to_fit() -> None:
    context = NodeContext("me", ("h", 1), MeshConfig(), random.Random(1))
    loads = LoadGossip(context, {})
    estimates = tuple((f"{i:064x}", 0.1) for i in range(40))
    loads.set_own(LoadVector(version=99, latency_estimates=estimates))
    loads.set_own(LoadVector(version=0, active_tasks=1, latency_estimates=estimates))
    own = loads.loads()["me"]
    assert own.version == 2
    assert 0 < len(own.latency_estimates) < 40
    assert len(encode_item(LoadUpdate("me", own))) <= 600


def test_routine_load_changes_wait_an_interval_that_grows_with_the_mesh() -> None:
    own = OwnLoad(TaskConfig(load_publish_interval_s=1.0, load_publish_members=10))
    first = LoadVector(active_tasks=0, free_slots=2)
    own.set_driver_load(first)
    assert own.due(30) == -math.inf  # the first report: at once
    own.publish(0, now=100.0)
    assert own.interval(5) == 1.0 and own.interval(10) == 1.0 and own.interval(30) == 3.0
    own.learn("model", 0.02)
    assert own.due(30) == -math.inf  # a model's first latency estimate: at once
    own.publish(0, now=100.0)
    own.set_driver_load(replace(first, active_tasks=1, free_slots=1, utilisation=0.5))
    own.learn("model", 0.03)
    assert own.dirty and own.due(30) == 103.0  # same capacity, a later estimate: routine
    own.set_driver_load(LoadVector(active_tasks=1, free_slots=3))
    assert own.due(30) == -math.inf  # capacity 2 -> 4: the leader plans with it
    published = own.publish(1, now=101.0)
    assert published.free_slots == 3 and not own.dirty and own.due(30) == 104.0
    own.set_driver_load(LoadVector(active_tasks=1, free_slots=3, memory_total=8 << 30))
    assert own.due(30) == -math.inf  # device memory changed


def test_a_large_busy_mesh_publishes_loads_at_the_mesh_wide_rate() -> None:
    """30 workers each finishing a task every 20 ms for 30 s: each publishes once per 3 s,
    not once per task or per second."""
    config = TaskConfig(load_publish_interval_s=1.0, load_publish_members=10)
    published = 0
    own = OwnLoad(config)
    own.set_driver_load(LoadVector(free_slots=1))
    for step in range(1500):
        now = step * 0.02
        own.learn("model", 0.02)
        if now >= own.due(30):
            own.publish(1, now)
            published += 1
    assert published == 10  # at 0 (the first report), then every 3 s up to 27 s


def test_a_load_rides_on_other_datagrams_and_only_membership_wakes_gossip_rounds() -> None:
    context = NodeContext("me", ("h", 1), MeshConfig(), random.Random(1))
    woken: list[bool] = []
    context.on_broadcast = lambda: woken.append(True)
    LoadGossip(context, {}).set_own(LoadVector(active_tasks=1))
    assert woken == [] and not context.has_pending_updates()
    assert context.update_queue  # queued all the same: piggybacked on the next datagram
    context.broadcast(("member", "x"), LoadUpdate("x", LoadVector()), membership=True)
    assert woken == [True] and context.has_pending_updates()


def test_a_trimmed_load_keeps_the_models_run_most_recently() -> None:
    """A node that ran many models publishes more estimates than fit one gossip item; the
    trim drops the models run longest ago, so a new model's first latency gets through."""
    context = NodeContext("me", ("h", 1), MeshConfig(), random.Random(1))
    loads = LoadGossip(context, {})
    own = OwnLoad(TaskConfig())
    own.set_driver_load(LoadVector(free_slots=1))
    for i in range(12):
        own.learn(f"{i:064x}", 0.01)
    newest = "f" * 64  # sorts after every other digest
    own.learn(newest, 0.02)
    own.learn(f"{3:064x}", 0.01)  # run again: recent too
    loads.set_own(own.publish(0, now=1.0))
    kept = dict(loads.loads()["me"].latency_estimates)
    assert newest in kept and f"{3:064x}" in kept
    assert f"{0:064x}" not in kept  # the oldest went first
