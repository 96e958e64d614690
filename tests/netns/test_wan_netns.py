"""Two sites in two subnets, joined by a router whose WAN link adds 40 ms each way and
1 % loss (tests/netns/sites.py; the relay of tests/netns/impairment.py stands in for
``tc netem``). Every daemon runs ``--profile wan``, finds its own site's peers by mDNS
(multicast does not cross the router) and the other site through one ``--peer`` seed.

What it shows: the mesh forms from the seeds across the subnets; a node behind a port
forward (a relay that opens only an outside port and maps it to the node's, see
:class:`~tests.netns.impairment.PortForward`) is reached at its ``--advertise``
address; tasks that require the other site's label run there (inputs and results cross
the WAN); a cut of the link between the sites, while tasks that prefer the other site
are queued and more are submitted, heals with every task done, correct and delivered
once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from meshgpu.daemon.auth import MeshKey
from tests.netns.daemons import PORT, Fleet, Status, agree
from tests.netns.impairment import Impairment, PortForward
from tests.netns.lab import NamespacesUnavailable, check_available, in_namespace
from tests.netns.sites import TwoSiteLab

pytestmark = [pytest.mark.netns, pytest.mark.slow]

MODELS = Path(__file__).parents[2] / "meshgpu" / "inference" / "models"
MODEL = (MODELS / "digits.onnx").read_bytes()
DIGEST = hashlib.sha256(MODEL).hexdigest()
WAN = Impairment(delay_s=0.040, loss=0.01)
SITE_LABELS = ("a", "b")
FORWARDED = 4
"""The last host of site b is reached through a port forward: only OUTSIDE_PORT is open
and leads to its --port, and it gossips --advertise ADDRESS:OUTSIDE_PORT."""
OUTSIDE_PORT = 17946


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TwoSiteLab, Fleet]]:
    try:
        check_available()
    except NamespacesUnavailable as reason:
        pytest.skip(f"network namespaces unavailable: {reason}")
    lab = TwoSiteLab.create_sites((2, 3), wan=WAN, seed=16)
    try:
        root = tmp_path_factory.mktemp("netns-wan")
        key = MeshKey.generate()
        key.write(root / "mesh.key")
        fleet = Fleet(lab, root, key, root / "mesh.key")
        for site, members in enumerate(lab.sites):
            seed = lab.hosts[lab.sites[1 - site][0]]
            for index in members:
                fleet.extra_argv[index] = [
                    "--profile", "wan",
                    "--peer", f"{seed.address}:{PORT}",
                    "--label", f"site={SITE_LABELS[site]}",
                ]  # fmt: skip
        behind = lab.hosts[FORWARDED]
        lab.impair(FORWARDED, Impairment()).forward(
            PortForward(behind.address, outside_port=OUTSIDE_PORT, inside_port=PORT)
        )
        fleet.extra_argv[FORWARDED] += [
            "--advertise", f"{behind.address}:{OUTSIDE_PORT}", "--label", "behind=forward",
        ]  # fmt: skip
        fleet.start_all()
        yield lab, fleet
    finally:
        lab.close()
    assert not lab.leftovers()


@pytest.fixture(scope="module")
def reference() -> tuple[np.ndarray, np.ndarray]:
    from meshgpu import inference

    pixels = np.load(MODELS / "digits_test.npz")["pixels"][:12]
    session = inference.load(MODEL, backend="onnxruntime")
    return pixels, session.run({"pixels": pixels})["probabilities"]


def alive_ids(status: Status) -> set[str]:
    return {m["node_id"] for m in status["members"] if m["state"] == "alive"}


def test_the_mesh_forms_across_the_subnets_from_seeds(sites: tuple[TwoSiteLab, Fleet]) -> None:
    _, fleet = sites
    everyone = {daemon.node_id for daemon in fleet.daemons}
    statuses = fleet.until(fleet.daemons, agree(everyone), "one mesh across both sites", 120.0)
    for status in statuses.values():
        subnets = {".".join(m["address"][0].split(".")[:2]) for m in status["members"]}
        assert subnets == {"10.213", "10.214"}, status["members"]


def run_tasks(
    lab: TwoSiteLab,
    fleet: Fleet,
    pixels: np.ndarray,
    during_cut: int,
    labels: str,
    wanted: dict[str, str] | None = None,
) -> list[Any]:
    """From a client in site a (at its first daemon): submit every row with ``wanted``
    (default site=b) as ``labels`` (``require`` or ``prefer``); the last ``during_cut`` rows
    while the WAN link is cut, which it then heals. Returns the outcomes, in row order."""
    entry = fleet.daemons[lab.sites[0][0]]
    site_a = [fleet.daemons[i] for i in lab.sites[0]]
    site_b_ids = {fleet.daemons[i].node_id for i in lab.sites[1]}
    everyone = {daemon.node_id for daemon in fleet.daemons}

    def cut() -> None:
        lab.partition(lab.sites)
        fleet.until(
            site_a,
            lambda seen: all(not (alive_ids(s) & site_b_ids) for s in seen.values()),
            "site a to stop holding site b alive",
            120.0,
        )

    def heal() -> None:
        lab.heal()
        fleet.until(fleet.daemons, agree(everyone), "one mesh again after the heal", 180.0)

    async def session() -> list[Any]:
        from meshgpu.client import AsyncClient

        before, during = pixels[: len(pixels) - during_cut], pixels[len(pixels) - during_cut :]
        site_b = {labels: wanted or {"site": "b"}}
        async with AsyncClient(
            [f"{entry.host.address}:{PORT}"], key=fleet.key, environ={}
        ) as client:
            handles = [
                await client.submit(MODEL, {"pixels": row[None, :]}, **site_b) for row in before
            ]
            if during_cut:
                await trio.to_thread.run_sync(cut)
                handles += [
                    await client.submit(MODEL, {"pixels": row[None, :]}, **site_b) for row in during
                ]
                await trio.to_thread.run_sync(heal)
            with trio.fail_after(240):
                return [await handle.wait() for handle in handles]

    return in_namespace(entry.host.namespace, lambda: trio.run(session))  # type: ignore[no-any-return]


def test_tasks_run_across_the_sites(
    sites: tuple[TwoSiteLab, Fleet], reference: tuple[np.ndarray, np.ndarray]
) -> None:
    lab, fleet = sites
    pixels, expected = reference
    outcomes = run_tasks(lab, fleet, pixels[:4], during_cut=0, labels="require")
    site_b_ids = {fleet.daemons[i].node_id for i in lab.sites[1]}
    for row, outcome in enumerate(outcomes):
        assert outcome.state == "done", outcome
        assert outcome.worker in site_b_ids, f"{outcome.worker} is not in site b"
        got = np.asarray(outcome.outputs["probabilities"])[0]
        np.testing.assert_allclose(got, expected[row], rtol=1e-5, atol=1e-6)


def test_a_cut_between_the_sites_heals_with_nothing_lost(
    sites: tuple[TwoSiteLab, Fleet], reference: tuple[np.ndarray, np.ndarray]
) -> None:
    lab, fleet = sites
    pixels, expected = reference
    # Preferred, not required: a task whose required labels no live node carries fails
    # at once (the leader's unsatisfiable check), and site b is not live in site a's
    # view during the cut. Preferred ones run in site b when it is reachable, else in a.
    outcomes = run_tasks(lab, fleet, pixels, during_cut=6, labels="prefer")
    print("workers by row:", [outcome.worker for outcome in outcomes])
    assert len({outcome.task_id for outcome in outcomes}) == len(pixels)
    for row, outcome in enumerate(outcomes):
        assert outcome.state == "done", f"row {row}: {outcome}"
        got = np.asarray(outcome.outputs["probabilities"])[0]
        np.testing.assert_allclose(got, expected[row], rtol=1e-5, atol=1e-6)
    counters = lab.relay.counters() if lab.relay else {}
    assert counters.get("left_to_right_cut", 0) + counters.get("right_to_left_cut", 0) > 0


def test_a_node_behind_a_port_forward_is_reached_at_its_advertised_address(
    sites: tuple[TwoSiteLab, Fleet], reference: tuple[np.ndarray, np.ndarray]
) -> None:
    lab, fleet = sites
    behind = fleet.daemons[FORWARDED]
    everyone = {daemon.node_id for daemon in fleet.daemons}
    statuses = fleet.until(fleet.daemons, agree(everyone), "one mesh with the forwarded node")
    for node_id, status in statuses.items():
        (member,) = [m for m in status["members"] if m["node_id"] == behind.node_id]
        assert member["address"] == [behind.host.address, OUTSIDE_PORT], node_id
    pixels, expected = reference
    outcomes = run_tasks(
        lab, fleet, pixels[:2], during_cut=0, labels="require", wanted={"behind": "forward"}
    )
    for row, outcome in enumerate(outcomes):
        assert outcome.state == "done" and outcome.worker == behind.node_id, outcome
        got = np.asarray(outcome.outputs["probabilities"])[0]
        np.testing.assert_allclose(got, expected[row], rtol=1e-5, atol=1e-6)
    assert lab.impaired[FORWARDED].counters().get("right_to_left_closed_port", 0) == 0
