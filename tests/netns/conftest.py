"""Fixtures for the network-namespace tests: a 4-host lab and its daemons.

Both are module-scoped: the daemons start once (the slow part) and the tests run in
file order against them, the destructive one (``kill -9``) last. Everything is torn
down on exit, also when a test or the setup fails. Without root, without ``ip``, or
where ``ip netns add`` fails, every test here is skipped with that reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshgpu.daemon.auth import MeshKey
from tests.netns.daemons import Fleet
from tests.netns.lab import NamespacesUnavailable, NetnsLab, check_available

HOSTS = 4
DECOY = 3
"""This host also has a container-bridge-like interface listed first; its daemon runs
with ``--interface eth0`` (docs/operations.md, peers that never meet)."""


HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the tests of each module here back in file order, in the places their module
    was given: a plugin that shuffles tests (pytest-randomly) may move the modules, but
    the tests of one share its lab and daemons, and the destructive ones come last."""
    places: dict[Path, list[int]] = {}
    for index, item in enumerate(items):
        if item.path.parent == HERE:
            places.setdefault(item.path, []).append(index)
    for indexes in places.values():
        ordered = sorted((items[i] for i in indexes), key=lambda item: item.reportinfo()[1] or 0)
        for index, item in zip(indexes, ordered, strict=True):
            items[index] = item


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
