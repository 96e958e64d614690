"""Fixtures for the network-namespace tests: a 4-host lab and its daemons.

Both are module-scoped: the daemons start once (the slow part) and the tests run in
file order against them, the destructive one (``kill -9``) last. Everything is torn
down on exit, also when a test or the setup fails. Without root, without ``ip``, or
where ``ip netns add`` fails, every test here is skipped with that reason.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from meshgpu.daemon.auth import MeshKey
from tests.netns.daemons import Fleet
from tests.netns.lab import NamespacesUnavailable, NetnsLab, check_available

HOSTS = 4
DECOY = 3
"""This host also has a container-bridge-like interface listed first; its daemon runs
with ``--interface eth0`` (docs/operations.md, peers that never meet)."""


@pytest.fixture(scope="module")
def lab() -> Iterator[NetnsLab]:
    try:
        check_available()
    except NamespacesUnavailable as reason:
        pytest.skip(f"network namespaces unavailable: {reason}")
    built = NetnsLab.create(HOSTS, decoys=[DECOY])
    try:
        yield built
    finally:
        built.close()
        leftovers = built.leftovers()
        assert not leftovers, f"namespaces left behind: {leftovers}"


@pytest.fixture(scope="module")
def fleet(lab: NetnsLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("netns-mesh")
    key = MeshKey.generate()
    key_file = root / "mesh.key"
    key.write(key_file)
    fleet = Fleet(lab, root, key, key_file)
    try:
        fleet.start_all()
        yield fleet
    finally:
        if lab.partitioned:
            lab.heal()
        lab.close()  # kills the daemons too
