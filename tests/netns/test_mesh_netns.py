"""Four hosts in network namespaces on a bridge, each running `meshgpu join` with mDNS only.

What only a real network shows: daemons that find each other by multicast DNS with no
seed, a partition that splits the LAN in two (each side keeps working and takes tasks),
a heal after which nothing is lost and every view agrees, and a process killed with
SIGKILL that every survivor declares dead. The tests share one lab and run in file
order; the last one kills a daemon.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import trio

from meshgpu.daemon.payloads import decode_tensors, encode_tensors
from meshgpu.errors import ResultTimeoutError
from tests.netns.daemons import (
    PORT,
    START_TIMEOUT_S,
    Daemon,
    Fleet,
    Status,
    agree,
    agree_in_one_view,
    describe,
    live_view,
)
from tests.netns.lab import in_namespace

pytestmark = [pytest.mark.netns, pytest.mark.slow]

MODELS = Path(__file__).parents[2] / "meshgpu" / "inference" / "models"
MODEL = (MODELS / "digits.onnx").read_bytes()
DIGEST = hashlib.sha256(MODEL).hexdigest()
TASKS_PER_SIDE = 6
T = TypeVar("T")


@pytest.fixture(scope="module")
def reference() -> tuple[np.ndarray, np.ndarray]:
    """Test pixels and the probabilities local onnxruntime gives for them."""
    from meshgpu import inference

    pixels = np.load(MODELS / "digits_test.npz")["pixels"][: 2 * TASKS_PER_SIDE]
    session = inference.load(MODEL, backend="onnxruntime")
    return pixels, session.run({"pixels": pixels})["probabilities"]


def everyone(fleet: Fleet) -> set[str]:
    return {daemon.node_id for daemon in fleet.daemons}


def submit(fleet: Fleet, entry: Daemon, rows: np.ndarray) -> list[dict[str, Any]]:
    """Upload the model if needed and submit one task per row at ``entry``; the answers."""

    async def session(rpc: Any) -> list[dict[str, Any]]:
        if not (await rpc.call("has_model", digest=DIGEST))["has"]:
            await rpc.call("put_model", digest=DIGEST, data=MODEL)
        return [
            await rpc.call(
                "submit",
                model_digest=DIGEST,
                inputs=encode_tensors({"pixels": row[None, :]}),
                replicas=2,
                direct=False,
            )
            for row in rows
        ]

    return fleet.run_in(entry, session)  # type: ignore[no-any-return]


def results(fleet: Fleet, entry: Daemon, task_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Every task's outcome as ``entry`` relays it (retrying 'unavailable' ones), then
    marks them collected. Fails if a task id is delivered twice in one stream."""

    async def session(rpc: Any) -> dict[str, dict[str, Any]]:
        outcomes: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 60
        while len(outcomes) < len(task_ids):
            assert time.monotonic() < deadline, f"results missing: {set(task_ids) - set(outcomes)}"
            missing = [task_id for task_id in task_ids if task_id not in outcomes]
            streamed: set[str] = set()
            async for outcome in rpc.stream("results", task_ids=missing):
                task_id = outcome["task_id"]
                if task_id is None:
                    break
                assert task_id not in streamed, f"{task_id} delivered twice"
                streamed.add(task_id)
                if outcome["state"] != "unavailable":
                    outcomes[task_id] = outcome
        await rpc.call("collected", task_ids=list(outcomes))
        return outcomes

    return fleet.run_in(entry, session)  # type: ignore[no-any-return]


def test_four_hosts_find_each_other_by_mdns_alone(fleet: Fleet) -> None:
    members = everyone(fleet)
    in_agreement = agree_in_one_view(members)

    def agreed_and_every_browser_saw_peers(statuses: dict[str, Status]) -> bool:
        # A node may learn the others by gossip before its own browser reports them, so
        # the mDNS check is "eventually each one sees peers", not "each one met by mDNS".
        return in_agreement(statuses) and all(
            status["counters"]["mdns"].get("sightings", 0) >= 1 for status in statuses.values()
        )

    statuses = fleet.until(
        fleet.daemons, agreed_and_every_browser_saw_peers, "all 4 to agree (mDNS only)"
    )
    print(f"formation: 4 views agreed {time.monotonic() - fleet.started_at:.2f} s after launch")

    addresses = {daemon.node_id: [daemon.host.address, 7946] for daemon in fleet.daemons}
    for node_id, status in statuses.items():
        # No --peer was given, so mDNS is how they met; the lab LAN holds only this mesh.
        assert status["counters"]["mdns"].get("other_mesh", 0) == 0, status["counters"]
        assert status["node"]["address"] == addresses[node_id]
        assert status["node"]["keyed"] and status["node"]["key_fingerprint"]
        for member in status["members"]:
            assert member["address"] == addresses[member["node_id"]], (node_id, member)
        assert status["counters"]["auth"].get("bad_tag", 0) == 0
    views = {status["view"] for status in statuses.values()}
    assert len(views) == 1, describe(dict(statuses))


def test_interface_pins_the_lan_address_past_a_container_bridge(fleet: Fleet) -> None:
    """The decoy host lists docker0 first; unpinned it would advertise that address."""
    from meshgpu.daemon.discovery import local_ipv4_addresses

    decoyed = next(daemon for daemon in fleet.daemons if daemon.host.decoy_address)
    first = in_namespace(decoyed.host.namespace, local_ipv4_addresses)[0]
    assert first == decoyed.host.decoy_address, "the trap is not set: docker0 is not first"

    statuses = fleet.until(fleet.daemons, agree(everyone(fleet)), "all 4 to agree")
    for status in statuses.values():
        record = next(m for m in status["members"] if m["node_id"] == decoyed.node_id)
        assert record["address"] == [decoyed.host.address, 7946], record


ETH_P_ALL = 0x0003


def mesh_payloads(frames: list[bytes]) -> list[bytes]:
    """The UDP and TCP payloads to or from port 7946 among captured Ethernet frames."""
    payloads = []
    for frame in frames:
        if len(frame) < 34 or frame[12:14] != b"\x08\x00":  # IPv4 only (the lab's)
            continue
        ip_at = 14
        header = (frame[ip_at] & 0x0F) * 4
        protocol = frame[ip_at + 9]
        at = ip_at + header
        if protocol == 17:
            body = at + 8
        elif protocol == 6:
            body = at + (frame[at + 12] >> 4) * 4
        else:
            continue
        ports = struct.unpack_from("!HH", frame, at)
        if PORT in ports:
            payloads.append(frame[body:])
    return payloads


def capture_while(fleet: Fleet, action: Callable[[], T]) -> tuple[list[bytes], T]:
    """Every frame the lab's switch carries while ``action`` runs (a raw AF_PACKET socket
    in the switch namespace, as tcpdump would open), and the action's result."""

    def open_socket() -> socket.socket:
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
        raw.settimeout(0.1)
        return raw

    raw = in_namespace(fleet.lab.switch, open_socket)
    frames: list[bytes] = []
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                frames.append(raw.recv(1 << 18))

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        result = action()
    finally:
        stop.set()
        reader.join()
        raw.close()
    return frames, result


def test_capture_holds_no_plaintext_of_inputs_models_or_names(fleet: Fleet) -> None:
    """With a mesh key nothing a task carries, nor a node's name, crosses the LAN in clear."""
    fleet.until(fleet.daemons, agree(everyone(fleet)), "all 4 to agree before the capture")
    rows = np.random.default_rng(16).random((4, 64)).astype(np.float32) * 16
    entry, collector = fleet.daemons[0], fleet.daemons[1]

    def work() -> dict[str, dict[str, Any]]:
        answers = submit(fleet, entry, rows)  # replicas=2: inputs go to another holder
        return results(fleet, collector, [answer["task_id"] for answer in answers])

    frames, outcomes = capture_while(fleet, work)
    assert all(outcome["state"] == "done" for outcome in outcomes.values()), outcomes
    wire = b"\0".join(mesh_payloads(frames))
    assert fleet.mesh.encode() in wire, "the capture holds no meshgpu traffic at all"
    needles = {f"input row {i}": row.tobytes()[:64] for i, row in enumerate(rows)}
    step = len(MODEL) // 16
    needles |= {f"model bytes at {at}": MODEL[at : at + 64] for at in range(0, len(MODEL), step)}
    needles |= {f"node name {d.node_id}": d.node_id.encode() for d in fleet.daemons}
    found = [name for name, needle in needles.items() if needle in wire]
    assert not found, f"in clear on the wire ({len(wire)} bytes captured): {found}"


def test_partition_then_heal_loses_nothing(
    fleet: Fleet, reference: tuple[np.ndarray, np.ndarray]
) -> None:
    pixels, expected = reference
    members = everyone(fleet)
    fleet.until(fleet.daemons, agree(members), "all 4 to agree before the partition")
    left, right = fleet.daemons[:2], fleet.daemons[2:]

    cut_at = time.monotonic()
    fleet.lab.partition([[0, 1], [2, 3]])
    for side in (left, right):
        ids = {daemon.node_id for daemon in side}
        fleet.until(side, agree(ids), f"side {sorted(ids)} to agree on itself alone")
    print(f"partition: both sides agreed on themselves in {time.monotonic() - cut_at:.2f} s")

    submitted: dict[str, list[str]] = {}
    for side, rows in ((left, pixels[:TASKS_PER_SIDE]), (right, pixels[TASKS_PER_SIDE:])):
        side_ids = {daemon.node_id for daemon in side}
        answers = submit(fleet, side[0], rows)
        for answer in answers:
            # Acknowledged with the copies its side could hold: 2, or 1 while the entry
            # node (wrongly) suspected its partner, which a loaded 2-core CI box can do.
            assert 1 <= answer["copies"] <= 2, answer
        print(f"side {sorted(side_ids)}: copies per task {[a['copies'] for a in answers]}")
        task_ids = [answer["task_id"] for answer in answers]
        submitted[side[0].node_id] = task_ids
        rows_by_id = {row["task_id"]: row for row in fleet.call(side[0], "tasks")["tasks"]}
        for answer in answers:
            holders = set(rows_by_id[answer["task_id"]]["holders"])
            # Held (journaled) on this side only, and on as many nodes as acknowledged.
            assert holders <= side_ids and len(holders) >= answer["copies"], (answer, holders)

    healed_at = time.monotonic()
    fleet.lab.heal()
    statuses = fleet.until(
        fleet.daemons, agree_in_one_view(members), "all 4 to agree (one view) after the heal"
    )
    print(f"heal: all 4 views agreed again in {time.monotonic() - healed_at:.2f} s")
    assert len({status["view"] for status in statuses.values()}) == 1, describe(dict(statuses))

    # Every task is done in the table of each node that holds it (task changes go to the
    # nodes involved in the task: its holders, origin, worker and leader; the others need
    # not carry it), and the tables together hold every task, before any is collected.
    all_ids = submitted[left[0].node_id] + submitted[right[0].node_id]

    def rows_by_node() -> dict[str, dict[str, dict[str, Any]]]:
        return {
            daemon.node_id: {row["task_id"]: row for row in fleet.call(daemon, "tasks")["tasks"]}
            for daemon in fleet.daemons
        }

    def every_holder_has_it_done(_: dict[str, Status]) -> bool:
        tables = rows_by_node()
        for task_id in all_ids:
            rows = [table[task_id] for table in tables.values() if task_id in table]
            if not rows or any(row["state"] != "done" for row in rows):
                return False
            holders = set().union(*(set(row["holders"]) for row in rows))
            if not all(task_id in tables[holder] for holder in holders if holder in tables):
                return False
        return True

    fleet.until(fleet.daemons, every_holder_has_it_done, "every task done on all its holders")

    # Each side's tasks are collected through a node of the *other* side.
    outcomes = results(fleet, right[1], submitted[left[0].node_id])
    outcomes |= results(fleet, left[1], submitted[right[0].node_id])
    assert set(outcomes) == set(all_ids), "tasks lost"
    for index, task_id in enumerate(all_ids):
        outcome = outcomes[task_id]
        assert outcome["state"] == "done", outcome
        got = decode_tensors(outcome["outputs"])["probabilities"][0]
        np.testing.assert_allclose(got, expected[index], rtol=1e-5, atol=1e-6)

    # The collection reaches every node: no table keeps one of them undelivered.
    def nowhere_undelivered(statuses: dict[str, Status]) -> bool:
        for daemon in fleet.daemons:
            for row in fleet.call(daemon, "tasks")["tasks"]:
                if row["task_id"] in outcomes and not row["delivered"]:
                    return False
        return True

    fleet.until(fleet.daemons, nowhere_undelivered, "every node to know the tasks collected")


def test_kill_9_is_declared_dead_by_every_survivor(fleet: Fleet) -> None:
    members = everyone(fleet)
    statuses = fleet.until(fleet.daemons, agree(members), "all 4 to agree before the kill")
    leader = live_view(next(iter(statuses.values())))[1]
    victim = next(daemon for daemon in fleet.daemons if daemon.node_id == leader)
    survivors = [daemon for daemon in fleet.daemons if daemon is not victim]

    killed_at = time.monotonic()
    victim.kill()

    def declared_dead(statuses: dict[str, Status]) -> bool:
        for status in statuses.values():
            states = {m["node_id"]: m["state"] for m in status["members"]}
            if states.get(victim.node_id) != "dead":
                return False
        return agree(members - {victim.node_id})(statuses)

    statuses = fleet.until(survivors, declared_dead, f"survivors to declare {victim.node_id} dead")
    took = time.monotonic() - killed_at
    print(f"{victim.node_id} (leader) killed: survivors agreed on its death in {took:.2f} s")
    for status in statuses.values():
        assert status["leader"] != victim.node_id
        record = next(m for m in status["members"] if m["node_id"] == victim.node_id)
        assert record["reason"], record  # status says why it is gone


def test_client_fails_over_when_its_entry_node_is_killed(
    fleet: Fleet, reference: tuple[np.ndarray, np.ndarray]
) -> None:
    """meshgpu.Client, entering through one host's LAN address, loses that node to
    ``kill -9`` after its first submission: the rest go to a peer it learned from the
    mesh, and every result arrives once and equals onnxruntime's.

    The kill comes milliseconds after the first acknowledgement, while the killed node
    may itself be running that task: the window in which a result stored on the worker
    alone (``result_holders`` = the dead node) would be lost although the task is done.
    """
    from meshgpu.client import AsyncClient

    pixels, expected = reference
    alive = [daemon for daemon in fleet.daemons if daemon.alive]
    statuses = fleet.until(alive, agree({d.node_id for d in alive}), "the survivors to agree")
    leader = live_view(next(iter(statuses.values())))[1]
    entry = next(daemon for daemon in alive if daemon.node_id != leader)
    client_host = next(daemon for daemon in alive if daemon is not entry).host

    async def session() -> tuple[list[Any], list[Any], list[Any], int]:
        async with AsyncClient(f"{entry.host.address}:{PORT}", key=fleet.key) as client:
            handles = [await client.submit(MODEL, {"pixels": pixels[:1]}, replicas=2, direct=False)]
            entry.kill()
            for row in pixels[1:]:
                handles.append(
                    await client.submit(MODEL, {"pixels": row[None, :]}, replicas=2, direct=False)
                )
            outputs = [await handle.result(timeout=30) for handle in handles]
            return handles, outputs, list(client.failovers), client.duplicates

    try:
        handles, outputs, failovers, duplicates = in_namespace(
            client_host.namespace, lambda: trio.run(session)
        )
    except ResultTimeoutError as error:
        survivors = [daemon for daemon in fleet.daemons if daemon.alive]
        rows = {d.node_id: fleet.call(d, "tasks")["tasks"] for d in survivors}
        undelivered = [
            (node, row) for node, table in rows.items() for row in table if not row["delivered"]
        ]
        raise AssertionError(
            f"{error}\nundelivered task rows on the survivors: {undelivered}\n"
            + describe(fleet.statuses(survivors))
        ) from None
    print(f"client failovers: {failovers}; duplicates dropped: {duplicates}")
    assert failovers and failovers[0].from_node == entry.node_id, failovers
    assert len({handle.task_id for handle in handles}) == len(pixels)
    for index, produced in enumerate(outputs):
        np.testing.assert_allclose(
            produced["probabilities"][0], expected[index], rtol=1e-5, atol=1e-6
        )


def test_copied_data_dir_on_another_host_is_refused(fleet: Fleet) -> None:
    """The classic lab mistake: a machine set up by copying another's data dir."""
    free_host = next(daemon.host for daemon in fleet.daemons if not daemon.alive)
    original = next(daemon for daemon in fleet.daemons if daemon.alive)
    before = fleet.call(original, "status")

    # identity.json is what makes the twin (the rest of a live data dir changes under a
    # copy: payloads are deleted as results are collected). The copy is started as the
    # original was, under its name: under another, the name check refuses it before it
    # could meet its twin.
    copy = fleet.root / "twin"
    copy.mkdir()
    shutil.copy2(original.data_dir / "identity.json", copy / "identity.json")
    _, process, _, log = fleet.launch(free_host, copy, name=original.node_id)
    try:
        # Its start is any daemon's (imports, onnxruntime loaded before joining: 30 s of
        # a loaded machine's time), then it must meet its twin and exit.
        exit_code = process.wait(START_TIMEOUT_S + 60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"the copy kept running:\n{log.read_text()[-3000:]}") from None
    output = log.read_text(errors="replace")
    print(output.strip().splitlines()[-1])
    assert exit_code != 0
    assert original.node_id in output and "is a copy of that node's" in output, output[-3000:]

    # The original keeps its id, its place and the mesh's agreement.
    survivors = [daemon for daemon in fleet.daemons if daemon.alive]
    ids = {daemon.node_id for daemon in survivors}
    after = fleet.until(survivors, agree(ids), "the survivors to agree after the twin")
    assert after[original.node_id]["node"]["incarnation"] == before["node"]["incarnation"]
