"""The TCP API's bounds on connections: thousands of idle connections cannot keep a real
client out (the idlest is closed to make room), a connection with a request in flight is
never the one closed, an idle or trickling connection is closed after the idle timeout,
and with every slot busy a new connection is refused at once."""

from __future__ import annotations

import contextlib
from typing import Any

import trio

from meshgpu.daemon.api import ApiServer, Responder
from meshgpu.daemon.auth import Authenticator
from meshgpu.daemon.rpc import open_rpc

IDLE = 3000


class Served:
    def __init__(self, max_connections: int, idle_timeout_s: float) -> None:
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
        )
        self.port = 0

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1", backlog=4096)
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self.server.serve, listeners, task_status=task_status)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


async def closed_by_server(stream: trio.SocketStream) -> bool:
    """True once the server closed ``stream`` (reads end); waits for it."""
    try:
        while await stream.receive_some(4096):
            pass
    except trio.BrokenResourceError:
        pass
    return True


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
            for byte in b"\x00\x00\x00\x08abcdefgh":
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
            while served.server.open_connections < 2 or any(
                c.in_flight == 0 for c in served.server._connections
            ):
                await trio.sleep(0.05)
        third = await trio.open_tcp_stream(*served.address)
        with trio.fail_after(30):
            assert await closed_by_server(third)
        assert served.counters["api_connections_refused"] == 1
        served.release.set()
        with trio.fail_after(30):
            while len(answers) < 2:
                await trio.sleep(0.05)
        await third.aclose()
