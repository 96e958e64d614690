"""The network model: partitions, loss, duplication, reordering and link lookup order."""

from __future__ import annotations

import math
import random

import pytest

from meshgpu.errors import ConfigError
from meshgpu.sim.network import LinkParams, Network


def make_network(node_count: int = 4, **link: float | str) -> Network:
    streams = {p: random.Random(p) for p in ("latency", "loss", "duplicate", "reorder")}
    return Network(node_count, LinkParams().updated(dict(link), "test"), streams)


def test_partition_drops_across_groups_and_heal_restores() -> None:
    network = make_network(5)
    network.set_partition([[0, 1, 2], [3]])
    assert network.transmit(0, 3) == ()
    assert network.transmit(4, 0) == ()  # unnamed nodes form their own group
    assert len(network.transmit(0, 2)) == 1
    assert network.counters["partitioned"] == 2
    assert network.partitioned
    network.heal()
    assert not network.partitioned
    assert len(network.transmit(0, 3)) == 1


def test_loss_rate_matches_probability() -> None:
    network = make_network(2, loss=0.25)
    delivered = sum(len(network.transmit(0, 1)) for _ in range(20_000))
    assert 0.23 < 1 - delivered / 20_000 < 0.27
    assert network.counters["lost"] == 20_000 - delivered


def test_duplicates_get_independent_delays() -> None:
    network = make_network(2, duplicate=1.0, jitter="uniform", jitter_s=0.01)
    first, second = network.transmit(0, 1)
    assert first != second
    assert network.counters["duplicated"] == 1


def test_latency_has_base_and_jitter_within_bounds() -> None:
    network = make_network(2, latency_s=0.001, jitter="uniform", jitter_s=0.002)
    delays = [network.transmit(0, 1)[0] for _ in range(1000)]
    assert min(delays) >= 0.001
    assert max(delays) <= 0.003
    assert max(delays) - min(delays) > 0.0015  # the jitter is really drawn


def test_lognormal_delays_are_the_draws_of_random_gauss() -> None:
    """transmit inlines ``Random.gauss``: its delays and the stream's state afterwards must
    be exactly what calling gauss gives (an odd count leaves a cached deviate), or every
    latency draw, and every trace hash, moves."""
    network = make_network(2)
    reference = random.Random("latency")
    link = LinkParams()
    for _ in range(7):
        expected = link.latency_s + link.jitter_s * math.exp(
            link.jitter_sigma * reference.gauss(0.0, 1.0)
        )
        assert network.transmit(0, 1) == (expected,)
    assert network._latency.getstate() == reference.getstate()
    assert network._latency.gauss_next == reference.gauss_next


def test_reordering_lets_a_later_datagram_arrive_first() -> None:
    network = make_network(2, jitter="none", reorder=0.5, reorder_s=0.01)
    arrivals = [step * 0.001 + network.transmit(0, 1)[0] for step in range(200)]
    assert arrivals != sorted(arrivals)
    assert network.counters["reordered"] > 0


def test_link_override_beats_node_override_beats_default() -> None:
    network = make_network(3)
    lossy = network.default.updated({"loss": 1.0}, "test")
    clean = network.default.updated({"loss": 0.0}, "test")
    network.node_overrides[0] = lossy
    network.link_overrides[(0, 1)] = clean
    assert network.params(0, 1) is clean
    assert network.params(0, 2) is lossy
    assert network.params(2, 0) is lossy
    assert network.params(1, 2) is network.default


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"loss": 1.5}, "loss is a probability"),
        ({"jitter": "gaussian"}, "jitter must be one of"),
        ({"latency": 0.1}, "unknown link parameter 'latency'"),
        ({"latency_s": "fast"}, "wrong type"),
    ],
)
def test_bad_link_parameters_are_config_errors(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LinkParams().updated(changes, "test")  # type: ignore[arg-type]
