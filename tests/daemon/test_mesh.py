"""Three real daemons on 127.0.0.1: a keyed mesh forms by static peers, agrees on its
leader, refuses a wrong-key peer and a copied identity, and survives garbage."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from meshgpu.cli.status import member_rows
from meshgpu.daemon.auth import Authenticator, Channel, MeshKey
from meshgpu.daemon.auth.handshake import VERSION
from meshgpu.daemon.framing import unpack
from meshgpu.daemon.identity import IdentityStore
from meshgpu.daemon.rpc import open_rpc
from meshgpu.errors import ClientError, IncompatiblePeerError
from tests.daemon.meshprocs import (
    MeshProcess,
    call,
    launch_node,
    run_to_exit,
    start_node,
    start_together,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WAIT_S = 30.0


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MeshKey, list[MeshProcess]]]:
    root = tmp_path_factory.mktemp("mesh")
    key = MeshKey.generate()
    key_file = root / "mesh.key"
    key.write(key_file)
    nodes: list[MeshProcess] = []
    try:
        first = start_node(root / "a", "--key-file", str(key_file), "--name", "node-a")
        nodes.append(first)
        seed = f"127.0.0.1:{first.port}"
        nodes += start_together(
            [
                launch_node(
                    root / name,
                    "--key-file",
                    str(key_file),
                    "--peer",
                    seed,
                    "--name",
                    f"node-{name}",
                )
                for name in ("b", "c")
            ]
        )
        yield key, nodes
    finally:
        for node in nodes:
            node.stop()


async def wait(node: MeshProcess, key: MeshKey, **condition: object) -> dict:
    return await call(node, key, "wait", timeout=WAIT_S, **condition)


async def agreed_leader(key: MeshKey, nodes: list[MeshProcess]) -> str:
    """The leader all nodes name, waiting (on change events) while they disagree."""
    for _ in range(20):
        statuses = [await call(node, key, "status") for node in nodes]
        leaders = {status["leader"] for status in statuses}
        if len(leaders) == 1 and None not in leaders:
            return leaders.pop()
        laggard = nodes[0]
        await wait(laggard, key, after_generation=statuses[0]["generation"])
    raise AssertionError(f"nodes never agreed on a leader: {leaders}")


async def test_three_daemons_form_a_mesh_and_agree_on_leader(mesh) -> None:
    key, nodes = mesh
    ids = {node.node_id for node in nodes}
    assert ids == {"node-a", "node-b", "node-c"}
    for node in nodes:
        status = await wait(node, key, alive=3)
        alive = {m["node_id"] for m in status["members"] if m["state"] == "alive"}
        assert alive == ids
        assert status["node"]["keyed"] and status["node"]["key_fingerprint"] == key.fingerprint
    assert await agreed_leader(key, nodes) in ids


async def test_wrong_key_peer_is_refused_and_counted(mesh, tmp_path: Path) -> None:
    key, nodes = mesh
    before = (await call(nodes[0], key, "status"))["counters"]["auth"].get("bad_tag", 0)
    stranger_key = tmp_path / "other.key"
    MeshKey.generate().write(stranger_key)
    stranger = start_node(
        tmp_path / "stranger",
        "--key-file",
        str(stranger_key),
        "--peer",
        f"127.0.0.1:{nodes[0].port}",
        "--name",
        "stranger",
    )
    try:
        status = await wait(nodes[0], key, counter=["auth", "bad_tag", before + 1])
        assert "stranger" not in {m["node_id"] for m in status["members"]}
        with pytest.raises(ClientError, match="authentication"):
            await call(nodes[0], MeshKey.generate(), "status")
        alone = await call(stranger, MeshKey.from_file(stranger_key), "status")
        assert [m["node_id"] for m in alone["members"]] == ["stranger"]
    finally:
        stranger.stop()


async def test_unkeyed_client_is_refused(mesh) -> None:
    _, nodes = mesh
    with pytest.raises(ClientError, match="mesh key"):
        await call(nodes[1], None, "status")


async def test_garbage_datagram_and_frame_are_dropped_and_mesh_keeps_serving(mesh) -> None:
    key, nodes = mesh
    target = nodes[1]
    counters = (await call(target, key, "status"))["counters"]["daemon"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        # Without the envelope's magic: dropped by the socket's filter in the kernel.
        udp.sendto(b"\x00garbage\xff" * 10, target.address)
        # With it: read, refused and counted by the daemon.
        udp.sendto(b"MG" + b"\x00garbage\xff" * 10, target.address)
    await wait(
        target,
        key,
        counter=["daemon", "datagrams_rejected", counters.get("datagrams_rejected", 0) + 1],
    )
    in_kernel = (await call(target, key, "status"))["counters"]["daemon"]
    assert in_kernel["datagrams_dropped_in_kernel"] > counters.get("datagrams_dropped_in_kernel", 0)
    reader = Authenticator(key, "reader", mesh="default")
    for _ in range(2):  # refused twice alike: each refusal is new to the reader's replay window
        stream = await trio.open_tcp_stream(*target.address)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = b""
            with trio.fail_after(WAIT_S):
                while chunk := await stream.receive_some(65536):
                    reply += chunk
        assert b"limit" not in reply  # told why, encrypted: only a key holder reads it
        told = reader.open(reply[4:], Channel.FRAME)
        assert "limit" in unpack(told.payload)["error"]
    stream = await trio.open_tcp_stream(*target.address)
    async with stream:
        await stream.send_all(struct.pack("!I", 12) + b"\x01" * 12)
        with trio.fail_after(WAIT_S):
            while await stream.receive_some(65536):
                pass
    status = await wait(
        target,
        key,
        alive=3,
        counter=["daemon", "frames_rejected", counters.get("frames_rejected", 0) + 3],
    )
    assert status["counters"]["daemon"]["frames_rejected"] >= 3


async def test_copied_data_dir_is_refused_naming_the_cause(mesh, tmp_path: Path) -> None:
    key, nodes = mesh
    copy = tmp_path / "copy"
    shutil.copytree(nodes[1].data_dir, copy, ignore=shutil.ignore_patterns("daemon.lock"))
    key_file = tmp_path / "mesh.key"
    key.write(key_file)
    outcome = await trio.to_thread.run_sync(
        lambda: run_to_exit(
            copy, "--key-file", str(key_file), "--peer", f"127.0.0.1:{nodes[0].port}"
        )
    )
    assert outcome.returncode != 0
    assert "node-b" in outcome.stderr
    assert f"this data dir ({copy}) is a copy of that node's" in outcome.stderr
    assert "data dir of its own" not in outcome.stderr
    status = await wait(nodes[0], key, alive=3)
    node_b = next(m for m in status["members"] if m["node_id"] == "node-b")
    assert node_b["address"] == ["127.0.0.1", nodes[1].port]


async def test_a_second_node_of_the_same_name_is_told_so_not_that_it_was_copied(
    mesh, tmp_path: Path
) -> None:
    key, nodes = mesh
    key_file = tmp_path / "mesh.key"
    key.write(key_file)
    own = tmp_path / "own"
    seed = f"127.0.0.1:{nodes[0].port}"
    args = ("--key-file", str(key_file), "--peer", seed, "--name", "node-b")
    outcome = await trio.to_thread.run_sync(lambda: run_to_exit(own, *args))
    assert outcome.returncode != 0
    assert f"node 'node-b' at 127.0.0.1:{nodes[1].port} has a data dir of its own" in outcome.stderr
    assert f"and so does this one ({own})" in outcome.stderr and "--name" in outcome.stderr
    assert "copy" not in outcome.stderr
    status = await wait(nodes[0], key, alive=3)
    node_b = next(m for m in status["members"] if m["node_id"] == "node-b")
    assert node_b["address"] == ["127.0.0.1", nodes[1].port]


def test_a_name_that_disagrees_with_the_data_dir_is_refused_with_both(tmp_path: Path) -> None:
    IdentityStore(tmp_path / "a").start(name="a")
    outcome = run_to_exit(tmp_path / "a", "--name", "zz")
    assert outcome.returncode == 1
    assert "belongs to node 'a'" in outcome.stderr and "--name says 'zz'" in outcome.stderr
    assert "give it a data dir of its own (--data-dir)" in outcome.stderr
    assert "Traceback" not in outcome.stderr


def test_second_daemon_on_same_data_dir_is_refused(mesh) -> None:
    _, nodes = mesh
    outcome = run_to_exit(nodes[0].data_dir)
    assert outcome.returncode != 0
    assert f"pid {nodes[0].process.pid}" in outcome.stderr


async def test_three_daemons_find_each_other_by_mdns_alone(tmp_path: Path) -> None:
    from meshgpu.daemon.discovery import local_ipv4_addresses

    if local_ipv4_addresses()[0].startswith("127."):
        pytest.skip("no non-loopback IPv4 interface for multicast DNS here")
    import ifaddr

    interface = next(
        adapter.nice_name
        for adapter in ifaddr.get_adapters()
        if any(isinstance(ip.ip, str) and not ip.ip.startswith("127.") for ip in adapter.ips)
    )
    # Unique per run: the same test run elsewhere on this host at the same time (another
    # checkout) hears these multicast announcements; under a shared name its m0-m2
    # joined ours, and each pair of same-named nodes made one stop as a copy.
    mesh_name = f"test-{secrets.token_hex(6)}"
    nodes = []
    try:
        for name in ("m0", "m1", "m2"):
            nodes.append(
                start_node(
                    tmp_path / name,
                    "--name",
                    name,
                    "--mesh",
                    mesh_name,
                    "--interface",
                    interface,
                    mdns=True,
                )
            )
        sightings = 0
        for node in nodes:  # no --peer: only mDNS can have introduced them
            status = await call(node, None, "wait", alive=3, timeout=WAIT_S)
            assert {m["node_id"] for m in status["members"]} == {"m0", "m1", "m2"}
            sightings += status["counters"]["daemon"].get("mdns_sightings", 0)
        assert sightings >= 2
    finally:
        for node in nodes:
            node.stop()


async def test_seed_of_another_mesh_is_refused_on_both_sides(mesh, tmp_path: Path) -> None:
    key, nodes = mesh
    key_file = tmp_path / "mesh.key"
    key.write(key_file)
    stranger = start_node(
        tmp_path / "physics",
        *("--key-file", str(key_file), "--mesh", "physics", "--name", "stranger-mesh"),
        *("--peer", f"127.0.0.1:{nodes[0].port}"),
    )
    try:
        stranger_at = f"127.0.0.1:{stranger.port}"
        node_a_at = f"127.0.0.1:{nodes[0].port}"
        with trio.fail_after(WAIT_S):  # until the gossip (UDP) refusals are recorded too
            while True:
                ours = await call(nodes[0], key, "status")
                theirs = await call(stranger, key, "status")
                if {stranger_at, node_a_at} <= {
                    g["node_id"] for g in ours["gone"] + theirs["gone"]
                }:
                    break
                await trio.sleep(0.2)
        assert "stranger-mesh" not in {m["node_id"] for m in ours["members"]}
        # Keyed: names travel encrypted, so a refused node is named by its address.
        refused = {g["node_id"]: g for g in ours["gone"] if g["state"] == "refused"}
        assert "'physics'" in refused[stranger_at]["reason"]
        assert "'default'" in refused[stranger_at]["reason"]
        assert refused[stranger_at]["address"] == ["127.0.0.1", stranger.port]
        told = {g["node_id"]: g["reason"] for g in theirs["gone"] if g["state"] == "refused"}
        node_a = told[node_a_at]
        assert "refuses this node" in node_a and "'physics'" in node_a and "'default'" in node_a
        rows = {row["name"]: row for row in member_rows(ours)}
        assert rows[stranger_at]["state"] == "refused"
    finally:
        stranger.stop()


async def test_node_of_another_protocol_version_is_told_both_versions(mesh) -> None:
    key, nodes = mesh
    target = nodes[1]
    sender = b"old-node"
    version_1 = (  # a version-1 envelope: no mesh name, an HMAC tag
        b"MG" + bytes([1, 1, 0, len(sender)]) + sender + os.urandom(24) + b"ping" + bytes(32)
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(WAIT_S)
        udp.sendto(version_1, target.address)
        refusal, _ = udp.recvfrom(65536)
    assert f"old-node speaks protocol version 1, this node speaks {VERSION}".encode() in refusal
    with pytest.raises(IncompatiblePeerError, match=f"protocol version {VERSION}, mesh 'default'"):
        Authenticator(None, "old-node").open(refusal, Channel.DATAGRAM)
    status = await wait(target, key, counter=["auth", "bad_version", 1])
    refused = {g["node_id"]: g for g in status["gone"] if g["state"] == "refused"}
    assert f"protocol version 1, this node speaks {VERSION}" in refused["old-node"]["reason"]


async def test_connection_of_another_protocol_version_is_told_both_versions(mesh) -> None:
    """The TCP side of the version check: a version-1 frame is answered with a refusal
    frame naming both versions, the connection closed, and the daemon lists the peer
    among those refused and goes on serving."""
    key, nodes = mesh
    target = nodes[2]
    sender = b"old-client"
    header = b"MG" + bytes([1, 1, Channel.FRAME, len(sender)]) + sender + os.urandom(24)
    version_1 = header + b"ping" + bytes(32)  # a version-1 envelope: no mesh name, an HMAC
    stream = await trio.open_tcp_stream(*target.address)
    async with stream:
        await stream.send_all(struct.pack("!I", len(version_1)) + version_1)
        reply = b""
        with trio.fail_after(WAIT_S):  # the refusal, then the daemon closes the connection
            while chunk := await stream.receive_some(65536):
                reply += chunk
    (length,) = struct.unpack("!I", reply[:4])
    refusal = reply[4:]
    assert length == len(refusal)
    assert f"old-client speaks protocol version 1, this node speaks {VERSION}".encode() in refusal
    with pytest.raises(
        IncompatiblePeerError, match=f"protocol version {VERSION}, mesh 'default'"
    ) as told:
        Authenticator(None, "old-client").open(refusal, Channel.FRAME)
    assert told.value.reason == "refused_by_peer"
    status = await call(target, key, "status")
    refused = {g["node_id"]: g for g in status["gone"] if g["state"] == "refused"}
    assert f"protocol version 1, this node speaks {VERSION}" in refused["old-client"]["reason"]
    assert status["counters"]["auth"]["bad_version"] >= 1


async def test_client_of_another_mesh_is_refused_naming_both_meshes(mesh) -> None:
    """A client holding the mesh key but naming another mesh is refused on its first
    frame: it reads why (both meshes), and the daemon lists it and goes on serving."""
    key, nodes = mesh
    target = nodes[2]
    stranger = Authenticator(key, "physics-client", mesh="physics")
    with pytest.raises(ClientError, match="refuses this node") as refused_here:
        async with open_rpc(target.address, stranger) as rpc:
            with trio.fail_after(WAIT_S):
                await rpc.call("status")
    assert "'default'" in str(refused_here.value) and "'physics'" in str(refused_here.value)
    assert stranger.refused  # the client's own record of who refused it, and why
    status = await call(target, key, "status")
    refused = {g["node_id"]: g for g in status["gone"] if g["state"] == "refused"}
    reasons = [g["reason"] for g in refused.values() if "'physics'" in g["reason"]]
    assert reasons and "'default'" in reasons[0]
