"""PeerFinder alone: fakes for the node (a list of fed events), the twin questions and
mDNS, trio's autojump clock for the seed interval. (Real mDNS is in test_discovery.py;
twins between real daemons in test_identity.py and test_runtime.py.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import trio
import trio.testing

from meshgpu.core.events import PeerDiscovered
from meshgpu.core.types import Address
from meshgpu.daemon.discovery import Sighting
from meshgpu.daemon.identity import DuplicateIdentityGuard
from meshgpu.daemon.peer_finding import PeerFinder
from meshgpu.errors import DuplicateIdentityError

SELF: Address = ("127.0.0.1", 7000)
SEED: Address = ("127.0.0.1", 7001)
OTHER: Address = ("127.0.0.1", 7002)


class Fakes:
    """The finder's neighbours: what it fed, counted and stopped for, and a scripted peer
    that answers the twin question."""

    def __init__(self, *, started: float, twin_at: Address | None = None) -> None:
        self.guard = DuplicateIdentityGuard("n-self", started=started, grace=15.0)
        self.fed: list[object] = []
        self.counters: dict[str, int] = {}
        self.stopped: list[BaseException] = []
        self.live: set[Address] = set()
        self.asked: list[Address] = []
        self.twin_at = twin_at
        self.answers = True

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    async def find_twin(self, peer: Address) -> tuple[bool, Address | None, str | None]:
        self.asked.append(peer)
        await trio.sleep(0.1)
        if not self.answers:
            return False, None, None
        return True, self.twin_at, "their-token" if self.twin_at else None

    async def ask_token(self, twin: Address) -> str | None:
        await trio.sleep(0.1)
        return "their-token"

    def finder(self, peers: list[str], newcomer: Callable[[], bool] | None = None) -> PeerFinder:
        guard = self.guard
        return PeerFinder(
            "n-self",
            SELF,
            guard,
            peers=peers,
            seed_interval=1.0,
            data_dir=Path("/tmp/meshgpu-test-dir"),
            dir_token="our-token",
            feed=self.fed.append,
            count=self.count,
            request_stop=self.stopped.append,
            newcomer=newcomer or (lambda: trio.current_time() - guard.started < 15.0),
            live_addresses=lambda: set(self.live),
            find_twin=self.find_twin,
            ask_twin_token=self.ask_token,
        )


class FakeMdns:
    """Delivers scripted sightings, one every second, then waits (like zeroconf)."""

    def __init__(self, sightings: list[Sighting], fail: Exception | None = None) -> None:
        self.sightings = sightings
        self.fail = fail

    async def run(self, deliver: Callable[[Sighting], None], /) -> None:
        for sighting in self.sightings:
            await trio.sleep(1.0)
            deliver(sighting)
        if self.fail is not None:
            raise self.fail
        await trio.sleep_forever()


async def run_for(finder: PeerFinder, seconds: float, mdns: FakeMdns | None = None) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(finder.run)
        finder.find(mdns)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()


async def test_a_seed_is_asked_once_then_offered_every_interval_until_it_is_live(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fakes = Fakes(started=trio.current_time())
    finder = fakes.finder([f"{SEED[0]}:{SEED[1]}", f"{SELF[0]}:{SELF[1]}"])
    async with trio.open_nursery() as nursery:
        await nursery.start(finder.run)
        finder.find()
        await trio.sleep(2.5)  # offers at 0.1, 1.1, 2.1
        assert fakes.fed == [PeerDiscovered(SEED)] * 3
        assert fakes.asked == [SEED]  # the twin question once; never our own address
        fakes.live.add(SEED)
        await trio.sleep(3.0)
        assert len(fakes.fed) == 3  # a live member is not offered again
        nursery.cancel_scope.cancel()
    assert fakes.stopped == [] and fakes.counters == {}


async def test_a_seed_that_does_not_answer_is_asked_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fakes = Fakes(started=trio.current_time())
    fakes.answers = False
    await run_for(fakes.finder([f"{SEED[0]}:{SEED[1]}"]), 2.5)
    assert fakes.asked == [SEED] * 3 and len(fakes.fed) == 3


async def test_a_seed_that_answers_only_once_live_is_still_asked_while_new(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A seed too busy to answer the twin question joins us by gossip all the same; the
    newcomer asks it again, and stops when it names a live twin."""
    fakes = Fakes(started=trio.current_time(), twin_at=OTHER)
    fakes.answers = False
    finder = fakes.finder([f"{SEED[0]}:{SEED[1]}"])
    async with trio.open_nursery() as nursery:
        await nursery.start(finder.run)
        finder.find()
        await trio.sleep(1.5)
        assert fakes.asked == [SEED] * 2 and fakes.stopped == []
        fakes.live.add(SEED)
        fakes.answers = True
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    assert fakes.asked == [SEED] * 3 and len(fakes.fed) == 2  # a live member: not offered
    assert len(fakes.stopped) == 1 and "127.0.0.1:7002" in str(fakes.stopped[0])


async def test_a_silent_seed_is_counted_once(autojump_clock: trio.testing.MockClock) -> None:
    fakes = Fakes(started=trio.current_time())
    await run_for(fakes.finder([f"{SEED[0]}:{SEED[1]}"]), 30.0)
    assert fakes.counters == {"seeds_unanswered": 1}


async def test_a_seed_that_knows_a_live_twin_stops_the_newcomer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fakes = Fakes(started=trio.current_time(), twin_at=OTHER)
    await run_for(fakes.finder([f"{SEED[0]}:{SEED[1]}"]), 5.0)
    assert fakes.fed == []  # refused before offering anything
    assert len(fakes.stopped) == 1 and isinstance(fakes.stopped[0], DuplicateIdentityError)
    assert "127.0.0.1:7002" in str(fakes.stopped[0])


async def test_an_established_node_does_not_ask_seeds_about_twins(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fakes = Fakes(started=trio.current_time() - 60.0, twin_at=OTHER)
    await run_for(fakes.finder([f"{SEED[0]}:{SEED[1]}"]), 0.5)
    assert fakes.asked == [] and fakes.stopped == [] and fakes.fed == [PeerDiscovered(SEED)]


async def test_mdns_sightings_are_checked_once_while_new_then_fed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fakes = Fakes(started=trio.current_time())
    sightings = [Sighting("n-b", SEED), Sighting("n-b", SEED), Sighting("n-c", OTHER)]
    await run_for(fakes.finder([]), 10.0, FakeMdns(sightings))
    assert fakes.asked == [SEED, OTHER]  # SEED answered "no twin": not asked again
    assert fakes.fed == [
        PeerDiscovered(SEED, "n-b"),
        PeerDiscovered(SEED, "n-b"),
        PeerDiscovered(OTHER, "n-c"),
    ]
    assert fakes.counters == {"mdns_sightings": 3}


async def test_mdns_failing_is_counted_and_the_node_keeps_going(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fakes = Fakes(started=trio.current_time() - 60.0)
    mdns = FakeMdns([Sighting("n-b", SEED)], fail=OSError("no multicast here"))
    await run_for(fakes.finder([]), 5.0, mdns)
    assert fakes.fed == [PeerDiscovered(SEED, "n-b")]  # established: no twin question
    assert fakes.counters == {"mdns_sightings": 1, "mdns_failures": 1}
    assert fakes.stopped == []


async def test_a_newcomer_that_is_the_copy_asks_the_twin_then_stops_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fakes = Fakes(started=trio.current_time())
    twin = Sighting("n-self", OTHER, twin=True, we_are_the_copy=True)
    await run_for(fakes.finder([]), 5.0, FakeMdns([twin, twin]))
    assert len(fakes.stopped) == 1 and isinstance(fakes.stopped[0], DuplicateIdentityError)
    assert fakes.fed == []


async def test_a_newcomer_whose_twin_started_later_keeps_serving(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Both twins are newcomers when started close together: only the later one yields."""
    fakes = Fakes(started=trio.current_time())
    twin = Sighting("n-self", OTHER, twin=True, we_are_the_copy=False)
    await run_for(fakes.finder([]), 2.0, FakeMdns([twin]))
    assert fakes.stopped == [] and fakes.counters == {"duplicate_identity": 1}
    assert fakes.guard.sightings == 1 and fakes.guard.last_twin == OTHER


async def test_an_established_node_that_is_the_copy_counts_it_and_serves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fakes = Fakes(started=trio.current_time() - 60.0)
    twin = Sighting("n-self", OTHER, twin=True, we_are_the_copy=True)
    await run_for(fakes.finder([]), 2.0, FakeMdns([twin]))
    assert fakes.stopped == [] and fakes.counters == {"duplicate_identity": 1}
    assert fakes.guard.sightings == 1


async def test_twin_found_before_the_finder_runs_is_ignored_and_later_acted_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fakes = Fakes(started=trio.current_time())
    finder = fakes.finder([])
    finder.twin_found(OTHER)  # no nursery yet: nothing can be started
    async with trio.open_nursery() as nursery:
        await nursery.start(finder.run)
        finder.twin_found(OTHER)
        finder.twin_found(OTHER)  # once only
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    assert len(fakes.stopped) == 1
