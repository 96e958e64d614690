"""Key rotation across hosts in network namespaces, mDNS only (no seeds): a host down
during a whole rotation (install, use, remove) comes back holding only the removed key;
every member refuses it and tells it why, and both sides list the reason in `status`;
restarted with the current key it rejoins and learns the removal from the mesh."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from meshgpu.daemon.auth import MeshKey
from tests.netns.daemons import Fleet, Status, agree
from tests.netns.lab import NamespacesUnavailable, NetnsLab, check_available

pytestmark = [pytest.mark.netns, pytest.mark.slow]

HOSTS = 3


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    try:
        check_available()
    except NamespacesUnavailable as reason:
        pytest.skip(f"network namespaces unavailable: {reason}")
    lab = NetnsLab.create(HOSTS)
    root = tmp_path_factory.mktemp("netns-keyring")
    key = MeshKey.generate()
    key.write(root / "k1.key")
    fleet = Fleet(lab, root, key, root / "k1.key")
    try:
        fleet.start_all()
        yield fleet
    finally:
        lab.close()  # kills the daemons too
        leftovers = lab.leftovers()
        assert not leftovers, f"namespaces left behind: {leftovers}"


def refusals(status: Status) -> list[str]:
    return [str(g["reason"]) for g in status["gone"] if g["state"] == "refused"]


def test_a_host_holding_only_a_removed_key_is_refused_then_rejoins_with_the_current_key(
    fleet: Fleet,
) -> None:
    everyone = {daemon.node_id for daemon in fleet.daemons}
    fleet.until(fleet.daemons, agree(everyone), "all 3 to agree")
    k1, k2 = fleet.key, MeshKey.generate()
    k2.write(fleet.root / "k2.key")
    first, stale = fleet.daemons[0], fleet.daemons[2]
    live = fleet.daemons[:2]
    stale.kill()

    def declared_dead(statuses: dict[str, Status]) -> bool:
        return all(
            {m["node_id"]: m["state"] for m in status["members"]}.get(stale.node_id) == "dead"
            for status in statuses.values()
        )

    fleet.until(live, declared_dead, "the others to declare it dead")

    def op(name: str, **fields: Any) -> dict[str, Any]:
        answer = fleet.call(first, name, **fields)
        assert [n["ok"] for n in answer["nodes"]] == [True, True], answer
        return answer

    op("keyring_install", key=k2.secret)
    op("keyring_use", key_id=k2.fingerprint)
    fleet.key = k2  # this test's client from now on
    op("keyring_remove", key_id=k1.fingerprint)

    # Back with its saved keyring: k1 only, which the mesh removed.
    host, process, data_dir, log = fleet.launch(stale.host, stale.data_dir)
    fleet.daemons[2] = stale = fleet._await_listening(host, process, data_dir, log)
    fleet.key = k1  # the stale host answers only in k1

    def told(statuses: dict[str, Status]) -> bool:
        return any("was removed" in reason for reason in refusals(statuses[stale.node_id]))

    seen = fleet.until([stale], told, "the stale host to be told its key was removed")[
        stale.node_id
    ]
    alive = {m["node_id"] for m in seen["members"] if m["state"] == "alive"}
    assert alive == {stale.node_id}
    reason = next(r for r in refusals(seen) if "was removed" in r)
    assert k1.fingerprint in reason and k2.fingerprint in reason and "--key-file" in reason
    fleet.key = k2
    # The refusing side lists it too, once the stale host's traffic has reached it (the
    # host that told the stale one may have been the other member).
    fleet.until(
        [first],
        lambda s: any(
            f"key {k1.fingerprint}, which was removed" in r for r in refusals(s[first.node_id])
        ),
        "the first host to list why it refuses the stale one",
    )

    # Restarted with the current key: it joins, and its keyring takes the removal.
    stale.kill()
    fleet.key_file = fleet.root / "k2.key"
    host, process, data_dir, log = fleet.launch(stale.host, stale.data_dir)
    fleet.daemons[2] = stale = fleet._await_listening(host, process, data_dir, log)
    statuses = fleet.until(fleet.daemons, agree(everyone), "all 3 to agree again", timeout=60)
    fleet.until(
        [stale],
        lambda s: k1.fingerprint in s[stale.node_id]["node"]["keyring"]["removed"],
        "the rejoined host to learn the removal",
    )
    assert {s["node"]["key_fingerprint"] for s in statuses.values()} == {k2.fingerprint}
