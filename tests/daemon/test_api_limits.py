"""The TCP API's bounds on connections: thousands of idle connections cannot keep a real
client out (the idlest is closed to make room), a connection with a request in flight is
never the one closed, an idle or trickling connection is closed after the idle timeout,
with every slot busy a new connection is refused at once, one address holds at most its
share of connections, and a stranger that never begins a frame is closed after the
handshake timeout; refused connections and strangers are reset, connections that spoke
are closed normally. The hostile connections come from 127.0.0.2 where the real client
must be told apart from them (Linux routes all of 127.0.0.0/8 to loopback)."""

from __future__ import annotations

import contextlib
from typing import Any

import trio

from meshgpu.daemon.api import ApiServer, Responder
from meshgpu.daemon.auth import Authenticator
from meshgpu.daemon.framing import FrameStream
from meshgpu.daemon.rpc import open_rpc
from tests.connection_probes import attempt, closed_by_server, closed_soon, how_closed

IDLE = 3000


class Served:
    def __init__(
        self,
        max_connections: int,
        idle_timeout_s: float,
        *,
        max_connections_per_client: int = 100,
        handshake_timeout_s: float = 3600.0,
    ) -> None:
        self.release = trio.Event()
        self.counters: dict[str, int] = {}

        async def ping(request: dict[str, Any], responder: Responder) -> dict[str, Any]:
            return {"pong": True}

        async def wait(request: dict[str, Any], responder: Responder) -> dict[str, Any]:
            await self.release.wait()
            return {"released": True}

        self.server = ApiServer(
            {"ping": ping, "wait": wait},
            Authenticator(None, "n0"),
            self.counters,
            max_connections=max_connections,
            idle_timeout_s=idle_timeout_s,
            max_connections_per_client=max_connections_per_client,
            handshake_timeout_s=handshake_timeout_s,
        )
        self.port = 0

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1", backlog=4096)
        self.port = listeners[0].socket.getsockname()[1]
        await self.server.serve_listeners(listeners, task_status=task_status)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


async def test_thousands_of_idle_connections_do_not_keep_a_real_client_out(
    nursery: trio.Nursery,
) -> None:
    served = Served(max_connections=64, idle_timeout_s=3600)
    await nursery.start(served.run)
    answers: list[dict[str, Any]] = []
    async with open_rpc(served.address, Authenticator(None, "client")) as busy:

        async def in_flight() -> None:
            answers.append(await busy.call("wait"))

        nursery.start_soon(in_flight)
        await trio.sleep(0.2)  # the request is on the server before the flood
        idle = []
        for _ in range(IDLE):
            idle.append(await trio.open_tcp_stream(*served.address))
        with trio.fail_after(60):
            async with open_rpc(served.address, Authenticator(None, "client")) as real:
                assert (await real.call("ping"))["pong"] is True
        assert served.server.open_connections <= 64
        assert served.counters["api_idle_evicted"] >= IDLE - 64
        served.release.set()
        with trio.fail_after(60):
            while not answers:
                await trio.sleep(0.05)
        assert answers[0]["released"] is True  # the busy connection was never evicted
        for stream in idle:
            await stream.aclose()


async def test_an_idle_or_trickling_connection_is_closed_after_the_timeout(
    nursery: trio.Nursery,
) -> None:
    served = Served(max_connections=64, idle_timeout_s=0.5)
    await nursery.start(served.run)
    silent = await trio.open_tcp_stream(*served.address)
    trickling = await trio.open_tcp_stream(*served.address)

    async def one_byte_at_a_time() -> None:
        with trio.move_on_after(30), contextlib.suppress(trio.BrokenResourceError):
            for byte in b"\x00\x00\x00\x08MGabcdef":
                await trickling.send_all(bytes([byte]))
                await trio.sleep(0.2)

    nursery.start_soon(one_byte_at_a_time)
    with trio.fail_after(30):
        assert await closed_by_server(silent)
        assert await closed_by_server(trickling)
    assert served.counters["api_idle_closed"] >= 2
    # a request that takes longer than the timeout keeps its connection
    async with open_rpc(served.address, Authenticator(None, "client")) as slow:

        async def release_later() -> None:
            await trio.sleep(1.5)
            served.release.set()

        nursery.start_soon(release_later)
        with trio.fail_after(30):
            assert (await slow.call("wait"))["released"] is True
    await silent.aclose()
    await trickling.aclose()


async def test_with_every_connection_busy_a_new_one_is_refused(nursery: trio.Nursery) -> None:
    served = Served(max_connections=2, idle_timeout_s=3600)
    await nursery.start(served.run)
    answers: list[dict[str, Any]] = []
    async with (
        open_rpc(served.address, Authenticator(None, "a")) as first,
        open_rpc(served.address, Authenticator(None, "b")) as second,
    ):

        async def wait_on(rpc: Any) -> None:
            answers.append(await rpc.call("wait"))

        nursery.start_soon(wait_on, first)
        nursery.start_soon(wait_on, second)
        with trio.fail_after(30):
            while len(served.server._connections) < 2 or any(
                c.in_flight == 0 for c in served.server._connections
            ):
                await trio.sleep(0.05)
        third = await attempt(served.address)
        with trio.fail_after(30):  # reset (before or after the connect returned)
            assert third is None or await how_closed(third) == "reset"
        assert served.counters["api_connections_refused"] == 1
        served.release.set()
        with trio.fail_after(30):
            while len(answers) < 2:
                await trio.sleep(0.05)
        if third is not None:
            await third.aclose()


HOSTILE = "127.0.0.2"


async def hostile_stream(address: tuple[str, int]) -> trio.SocketStream:
    return await trio.open_tcp_stream(*address, local_address=HOSTILE)


async def hostile_attempt(address: tuple[str, int]) -> trio.SocketStream | None:
    return await attempt(address, HOSTILE)


async def test_one_address_holds_at_most_its_share_and_a_real_client_is_answered(
    nursery: trio.Nursery,
) -> None:
    served = Served(max_connections=512, idle_timeout_s=3600, max_connections_per_client=16)
    await nursery.start(served.run)
    attempts = [await hostile_attempt(served.address) for _ in range(200)]
    held = [stream for stream in attempts if stream is not None]
    # a trickler and a lying length from the same host, held open meanwhile
    trickler = await hostile_attempt(served.address)
    if trickler is not None:
        with contextlib.suppress(trio.BrokenResourceError):
            await trickler.send_all(b"\x00")
        held.append(trickler)
    with trio.fail_after(60):
        async with open_rpc(served.address, Authenticator(None, "client")) as real:
            assert (await real.call("ping"))["pong"] is True
    refused = [stream for stream in held if await closed_soon(stream)]
    assert len(held) - len(refused) <= 16  # the rest were refused at connect
    assert served.counters["api_client_limit_refused"] >= 200 - 16
    assert served.counters.get("api_idle_evicted", 0) == 0  # nobody else paid for them
    for stream in held:
        await stream.aclose()


async def test_a_stranger_that_never_begins_a_frame_is_closed_after_the_handshake_timeout(
    nursery: trio.Nursery,
) -> None:
    served = Served(max_connections=64, idle_timeout_s=3600, handshake_timeout_s=0.5)
    await nursery.start(served.run)
    silent = await hostile_stream(served.address)
    trickling = await hostile_stream(served.address)

    async def one_byte_at_a_time() -> None:
        with trio.move_on_after(30), contextlib.suppress(trio.BrokenResourceError):
            for byte in b"\x00\x00\x01\x00" + bytes(256):
                await trickling.send_all(bytes([byte]))
                await trio.sleep(0.2)

    nursery.start_soon(one_byte_at_a_time)
    async with open_rpc(served.address, Authenticator(None, "client")) as real:
        assert (await real.call("ping"))["pong"] is True
        with trio.fail_after(30):
            assert await closed_by_server(silent)
            assert await closed_by_server(trickling)
        assert served.counters["api_handshake_timeouts"] == 2
        await trio.sleep(1.0)  # past the handshake timeout: a peer that spoke stays
        assert (await real.call("ping"))["pong"] is True
    await silent.aclose()
    await trickling.aclose()


async def test_refused_connections_and_silent_strangers_are_reset_and_a_client_that_spoke_is_closed(
    nursery: trio.Nursery,
) -> None:
    served = Served(
        max_connections=64,
        idle_timeout_s=1.0,
        max_connections_per_client=2,
        handshake_timeout_s=0.5,
    )
    await nursery.start(served.run)
    first = await hostile_stream(served.address)
    second = await hostile_stream(served.address)
    third = await hostile_attempt(served.address)  # over the share of 127.0.0.2
    with trio.fail_after(30):
        assert third is None or await how_closed(third) == "reset"
        assert served.counters["api_client_limit_refused"] == 1
        assert await how_closed(first) == "reset"  # never spoke: the handshake timeout
        assert await how_closed(second) == "reset"
    assert served.counters["api_handshake_timeouts"] == 2
    # a client that spoke and then went idle is closed with a FIN
    spoke = await trio.open_tcp_stream(*served.address)
    frames = FrameStream(spoke, Authenticator(None, "client"))
    await frames.send({"id": 1, "op": "ping"})
    assert (await frames.receive())["pong"] is True
    with trio.fail_after(30):
        assert await how_closed(spoke) == "closed"
    assert served.counters["api_idle_closed"] == 1
    for stream in (first, second, third, spoke):
        if stream is not None:
            await stream.aclose()


async def test_a_frame_whose_map_has_a_map_for_a_key_is_refused_and_the_server_goes_on(
    nursery: trio.Nursery,
) -> None:
    """``{{1: 2}: 1}``: msgpack's decoder raises TypeError (an unhashable key) where
    other garbage raises ValueError; it escaped framing.unpack, and one 9-byte frame from
    whoever may send one (anyone, on a mesh without a key) ended the API server."""
    from meshgpu.daemon.auth.envelope import Channel
    from meshgpu.daemon.framing import LENGTH, unpack

    served = Served(max_connections=64, idle_timeout_s=3600)
    await nursery.start(served.run)
    sealer = Authenticator(None, "stranger").new_session(Channel.FRAME)
    body = sealer.seal(b"\x81\x81\x01\x02\x01")
    stream = await trio.open_tcp_stream(*served.address)
    await stream.send_all(LENGTH.pack(len(body)) + body)
    answer = b""
    with trio.move_on_after(5):
        while chunk := await stream.receive_some(4096):
            answer += chunk
    refusal = unpack(Authenticator(None, "me").open(answer[LENGTH.size :], Channel.FRAME).payload)
    assert refusal["kind"] == "DecodeError" and "unhashable" in refusal["error"], refusal
    await stream.aclose()
    async with open_rpc(served.address, Authenticator(None, "client")) as rpc:
        assert (await rpc.call("ping"))["pong"]


async def test_one_address_is_told_why_its_greetings_are_refused_a_few_times_a_second(
    nursery: trio.Nursery,
) -> None:
    # Garbage greetings from one address: the first ANSWERED_REFUSALS_PER_S of a second
    # get the sealed refusal (a FIN after it), the others are reset unanswered; another
    # address is still told why, and every one is counted.
    from meshgpu.daemon.api import ANSWERED_REFUSALS_PER_S
    from meshgpu.daemon.auth.envelope import Channel
    from meshgpu.daemon.framing import LENGTH, unpack

    served = Served(max_connections=64, idle_timeout_s=3600)
    await nursery.start(served.run)
    tries = ANSWERED_REFUSALS_PER_S + 6

    async def refused(source: str | None) -> str:
        stream = await trio.open_tcp_stream(*served.address, local_address=source)
        await stream.send_all(b"\x00\x00\x00\x10" + b"not an envelope!")
        answer = b""
        try:
            with trio.fail_after(10):
                while chunk := await stream.receive_some(4096):
                    answer += chunk
        except trio.BrokenResourceError:
            return "reset"
        finally:
            await stream.aclose()
        refusal = unpack(
            Authenticator(None, "me").open(answer[LENGTH.size :], Channel.FRAME).payload
        )
        assert "bad magic" in refusal["error"], refusal
        return "answered"

    outcomes = [await refused(HOSTILE) for _ in range(tries)]
    assert "reset" in outcomes, outcomes
    assert outcomes[:ANSWERED_REFUSALS_PER_S] == ["answered"] * ANSWERED_REFUSALS_PER_S
    assert await refused(None) == "answered"  # 127.0.0.1 has its own answers
    assert served.counters["frames_rejected"] == tries + 1
    assert served.counters.get("api_refusals_unanswered", 0) == outcomes.count("reset")
