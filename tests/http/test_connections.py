"""The HTTP port's bounds on connections (meshgpu/http/connections.py), on real sockets:
hundreds of idle connections, one host's flood, a client that sends its request head a
byte at a time and a request slower than every timeout; a real client's request is
answered through all of them. The hostile connections come from 127.0.0.2 (Linux routes
all of 127.0.0.0/8 to loopback) so that the real client, 127.0.0.1, is told apart."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from meshgpu.first_bytes import Verdict
from meshgpu.http.connections import judge_request_head
from meshgpu.http.server import HttpServer
from meshgpu.http.settings import HttpSettings
from tests.connection_probes import attempt, closed_by_server, closed_soon, how_closed

HOSTILE = "127.0.0.2"


class Served:
    """An HttpServer with a three-route app: ``/`` answers at once, ``/wait`` when
    released, ``/echo`` with the length of the body it read."""

    def __init__(self, **limits: Any) -> None:
        self.release = trio.Event()
        self.counters: dict[str, int] = {}
        self.requests = 0

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                while (await receive())["type"] != "lifespan.shutdown":
                    await send({"type": "lifespan.startup.complete"})
                await send({"type": "lifespan.shutdown.complete"})
                return
            self.requests += 1
            answer = b"served"
            headers = []
            if scope["path"] == "/wait":
                await self.release.wait()
            elif scope["path"] == "/echo":
                size = 0
                while True:
                    message = await receive()
                    size += len(message.get("body", b""))
                    if not message.get("more_body"):
                        break
                answer = f"read {size}".encode()
                headers = [(b"content-length", str(len(answer)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": answer})

        self.server = HttpServer(
            app, "127.0.0.1", HttpSettings(port=0, **limits), counters=self.counters
        )

    @property
    def address(self) -> tuple[str, int]:
        assert self.server.port is not None
        return ("127.0.0.1", self.server.port)


async def get(address: tuple[str, int], path: str = "/") -> bytes:
    """A real client's request (from 127.0.0.1): the whole answer."""
    stream = await trio.open_tcp_stream(*address)
    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    answer = b""
    with contextlib.suppress(trio.BrokenResourceError):
        while chunk := await stream.receive_some(65536):
            answer += chunk
    await stream.aclose()
    return answer


async def requests_in_progress(served: Served, count: int) -> None:
    """Wait until ``count`` requests are in the app (in flight on their connections).

    Not until that many connections are open: a client's connection is open at the gate
    from its accept, before its head is whole (under load its send can come a poll or
    more after its connect), and a connection at the gate is the first to make room for
    a new one, by design; a test that counted it as busy saw it evicted."""
    with trio.fail_after(30):
        while sum(c.in_flight for c in served.server.limits._connections.values()) < count:
            await trio.sleep(0.05)


async def test_hundreds_of_idle_connections_do_not_keep_a_real_client_out(
    nursery: trio.Nursery,
) -> None:
    served = Served(max_connections=32, max_connections_per_client=1000)
    await nursery.start(served.server.run)
    waiting = nursery.start_soon  # a request in progress since before the flood
    answers: list[bytes] = []

    async def in_progress() -> None:
        answers.append(await get(served.address, "/wait"))

    waiting(in_progress)
    await requests_in_progress(served, 1)
    idle = [await trio.open_tcp_stream(*served.address, local_address=HOSTILE) for _ in range(300)]
    with trio.fail_after(60):
        assert (await get(served.address)).startswith(b"HTTP/1.1 200")
    assert served.server.limits.open_connections <= 32
    assert served.counters["http_idle_evicted"] >= 300 - 32
    served.release.set()
    with trio.fail_after(60):
        while not answers:
            await trio.sleep(0.05)
    assert b"served" in answers[0]  # the busy connection was never evicted
    for stream in idle:
        await stream.aclose()
    served.server.stop()


async def test_one_address_holds_at_most_its_share(nursery: trio.Nursery) -> None:
    served = Served(max_connections=256, max_connections_per_client=8)
    await nursery.start(served.server.run)
    attempts = [await attempt(served.address, HOSTILE) for _ in range(100)]
    held = [stream for stream in attempts if stream is not None]  # None: reset at connect
    with trio.fail_after(60):
        assert (await get(served.address)).startswith(b"HTTP/1.1 200")
    refused = [stream for stream in held if await closed_soon(stream)]
    assert len(held) - len(refused) <= 8
    assert served.counters["http_client_limit_refused"] >= 100 - 8
    assert served.counters.get("http_idle_evicted", 0) == 0
    for stream in held:
        await stream.aclose()
    served.server.stop()


async def test_a_slow_request_head_is_cut_and_a_slow_answer_is_not(nursery: trio.Nursery) -> None:
    served = Served(header_timeout_s=0.5)
    await nursery.start(served.server.run)
    slow = await trio.open_tcp_stream(*served.address, local_address=HOSTILE)
    silent = await trio.open_tcp_stream(*served.address, local_address=HOSTILE)

    async def one_byte_at_a_time() -> None:
        with (
            trio.move_on_after(30),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            for byte in b"GET / HTTP/1.1\r\n" + b"X-Slow: y\r\n" * 20 + b"\r\n":
                await slow.send_all(bytes([byte]))
                await trio.sleep(0.1)

    nursery.start_soon(one_byte_at_a_time)
    answers: list[bytes] = []

    async def slower_than_every_timeout() -> None:
        answers.append(await get(served.address, "/wait"))

    nursery.start_soon(slower_than_every_timeout)
    with trio.fail_after(30):
        assert await closed_by_server(slow)
        assert await closed_by_server(silent)
    assert served.counters["http_header_timeouts"] >= 2
    assert (await get(served.address)).startswith(b"HTTP/1.1 200")
    served.release.set()
    with trio.fail_after(30):
        while not answers:
            await trio.sleep(0.05)
    assert answers[0].startswith(b"HTTP/1.1 200")
    await slow.aclose()
    await silent.aclose()
    served.server.stop()


async def test_with_every_connection_busy_a_new_one_is_refused(nursery: trio.Nursery) -> None:
    served = Served(max_connections=2)
    await nursery.start(served.server.run)
    answers: list[bytes] = []

    async def in_progress() -> None:
        answers.append(await get(served.address, "/wait"))

    nursery.start_soon(in_progress)
    nursery.start_soon(in_progress)
    await requests_in_progress(served, 2)
    third = await attempt(served.address)
    with trio.fail_after(30):  # reset (before or after the connect returned)
        assert third is None or await how_closed(third) == "reset"
    assert served.counters["http_connections_refused"] == 1
    served.release.set()
    with trio.fail_after(30):
        while len(answers) < 2:
            await trio.sleep(0.05)
    assert all(b"served" in answer for answer in answers)
    if third is not None:
        await third.aclose()
    served.server.stop()


async def test_refused_connections_and_silent_strangers_are_reset_and_an_answered_client_is_closed(
    nursery: trio.Nursery,
) -> None:
    served = Served(max_connections=64, max_connections_per_client=2, header_timeout_s=0.5)
    await nursery.start(served.server.run)
    first = await trio.open_tcp_stream(*served.address, local_address=HOSTILE)
    second = await trio.open_tcp_stream(*served.address, local_address=HOSTILE)
    third = await attempt(served.address, HOSTILE)  # over the share of 127.0.0.2
    with trio.fail_after(30):
        assert third is None or await how_closed(third) == "reset"
        assert served.counters["http_client_limit_refused"] == 1
        assert await how_closed(first) == "reset"  # no request head: the header timeout
        assert await how_closed(second) == "reset"
    assert served.counters["http_header_timeouts"] == 2
    # a client that was answered and then sent nothing more is closed with a FIN
    spoke = await trio.open_tcp_stream(*served.address)
    await spoke.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    with trio.fail_after(30):
        while b"served" not in answer:
            answer += await spoke.receive_some(4096)
        assert answer.startswith(b"HTTP/1.1 200")
        assert await how_closed(spoke) == "closed"
    for stream in (first, second, third, spoke):
        if stream is not None:
            await stream.aclose()
    served.server.stop()


async def test_a_stranger_closed_by_the_keep_alive_timeout_is_reset_and_garbage_gets_its_400(
    nursery: trio.Nursery,
) -> None:
    # hypercorn closes a connection silent for its keep-alive timeout (5 s) itself, before
    # the header timeout (30 s here): still an RST, as nothing was answered on it
    served = Served(header_timeout_s=30)
    await nursery.start(served.server.run)
    silent = await trio.open_tcp_stream(*served.address, local_address=HOSTILE)
    garbage = await trio.open_tcp_stream(*served.address, local_address=HOSTILE)
    await garbage.send_all(b"\x01\x02 not a request\r\n\r\n")
    answer = b""
    with trio.fail_after(30):
        while not answer.startswith(b"HTTP/1.1 400"):
            answer += await garbage.receive_some(4096)
        assert await how_closed(garbage) == "closed"  # answered: a FIN, the 400 kept
        assert await how_closed(silent) == "reset"
    assert served.counters.get("http_header_timeouts", 0) == 0
    await silent.aclose()
    await garbage.aclose()
    served.server.stop()


async def test_one_address_gets_a_few_400s_a_second_and_the_rest_are_reset(
    nursery: trio.Nursery,
) -> None:
    # Garbage from one address: the first ANSWERED_400_PER_S of a second are answered
    # (a 400, then a FIN), the rest reset unanswered; another address is still answered,
    # and every one is counted.
    from meshgpu.http.connections import ANSWERED_400_PER_S

    served = Served(header_timeout_s=30)
    await nursery.start(served.server.run)
    tries = ANSWERED_400_PER_S + 6

    async def refused(source: str | None) -> str:
        stream = await trio.open_tcp_stream(*served.address, local_address=source)
        await stream.send_all(b"\x01\x02 not a request\r\n\r\n")
        answer = b""
        try:
            with trio.fail_after(10):
                while chunk := await stream.receive_some(4096):
                    answer += chunk
        except trio.BrokenResourceError as error:
            assert isinstance(error.__cause__, ConnectionResetError), error
            assert not answer
            return "reset"
        finally:
            await stream.aclose()
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
        return "answered"

    outcomes = [await refused(HOSTILE) for _ in range(tries)]
    assert outcomes[:ANSWERED_400_PER_S] == ["answered"] * ANSWERED_400_PER_S
    assert "reset" in outcomes, outcomes
    assert await refused(None) == "answered"  # 127.0.0.1 has its own answers
    assert served.counters["http_bad_requests"] == tries + 1
    assert served.counters.get("http_refusals_unanswered", 0) == outcomes.count("reset")
    served.server.stop()


def _exchange_blocking(address: tuple[str, int]) -> bytes:
    """One request from a thread (the daemon's loop is held meanwhile): the answer's
    first line, or RESET."""
    with socket.create_connection(address, timeout=30) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        try:
            return client.recv(4096).split(b"\r\n")[0]
        except ConnectionResetError:
            return b"RESET"


@pytest.mark.parametrize("steps", [1, 2, 3])
async def test_a_loop_stall_after_admission_does_not_reset_a_whole_head(
    nursery: trio.Nursery, steps: int
) -> None:
    """Twelve tritonclient infers right after ``models add`` at load 30 met ECONNRESET
    (``http_header_timeouts`` 0 -> 4): a worker thread held the loop past the header
    timeout while their heads, judged whole at the gate, waited to be read; the deadline
    fired in the same step that woke hypercorn. The gate times a first head, once."""
    served = Served(header_timeout_s=0.3)
    await nursery.start(served.server.run)
    gate = served.server.limits.gate
    assert gate is not None
    admit = gate._admitted

    async def hold_the_loop() -> None:
        for _ in range(steps):  # past the connection's first steps: its deadline is set
            await trio.sleep(0)
        time.sleep(0.5)  # a thread holding the GIL, as onnx parsing a model does

    def admitted(sock: socket.socket, address: Any) -> None:
        admit(sock, address)
        nursery.start_soon(hold_the_loop)

    gate._admitted = admitted
    for _ in range(3):
        answer = await trio.to_thread.run_sync(_exchange_blocking, served.address)
        assert answer == b"HTTP/1.1 200 ", answer
    served.server.stop()


async def read_answer(stream: trio.abc.Stream, ending: bytes) -> bytes:
    """What the server sends until ``ending`` has come (an answer's last bytes)."""
    answer = b""
    with trio.fail_after(30):
        while ending not in answer:
            chunk = await stream.receive_some(65536)
            assert chunk, f"closed after {answer!r}"
            answer += chunk
    return answer


async def test_a_body_that_never_comes_and_one_over_the_limit_are_refused_at_the_gate(
    nursery: trio.Nursery,
) -> None:
    served = Served(header_timeout_s=1, max_body_bytes=100_000)
    await nursery.start(served.server.run)
    # a lying Content-Length, then the client says it is done: a 400, the app never called
    lying = await trio.open_tcp_stream(*served.address, local_address=HOSTILE)
    await lying.send_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\n\r\n{")
    await lying.send_eof()
    answer = await read_answer(lying, b'bytes"}')
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head  # the app's error shape
    assert json.loads(body) == {"error": "closed after 1 of its body's 50000 bytes"}
    # a length over the node's limit: a 413 before the body is sent
    too_large = await trio.open_tcp_stream(*served.address, local_address=HOSTILE)
    await too_large.send_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100001\r\n\r\n")
    answer = await read_answer(too_large, b')"}')
    assert answer.startswith(b"HTTP/1.1 413 Content Too Large\r\n")
    assert b"connection: close" in answer
    # a lying Content-Length held open: reset at the head deadline
    held = await trio.open_tcp_stream(*served.address, local_address=HOSTILE)
    await held.send_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\n\r\n{")
    with trio.fail_after(30):
        assert await how_closed(held) == "reset"
    assert served.requests == 0
    assert served.counters["http_bad_requests"] == 2
    assert served.counters["http_header_timeouts"] == 1
    for stream in (lying, too_large, held):
        await stream.aclose()
    served.server.stop()


async def test_bodies_that_come_late_in_pieces_chunked_or_after_a_continue_are_served(
    nursery: trio.Nursery,
) -> None:
    served = Served(header_timeout_s=10)
    await nursery.start(served.server.run)
    stream = await trio.open_tcp_stream(*served.address)
    # the head, then the body in two pieces
    await stream.send_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
    await trio.sleep(0.2)
    await stream.send_all(b"01234")
    await trio.sleep(0.2)
    await stream.send_all(b"56789")
    assert (await read_answer(stream, b"read 10")).startswith(b"HTTP/1.1 200")
    # keep-alive: a chunked body next on the same connection, its last chunk late
    await stream.send_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    )
    await trio.sleep(0.2)
    await stream.send_all(b"3\r\nabc\r\n0\r\n\r\n")
    assert (await read_answer(stream, b"read 8")).startswith(b"HTTP/1.1 200")
    await stream.aclose()
    # a first request chunked, with trailers, its chunks late
    chunked = await trio.open_tcp_stream(*served.address)
    await chunked.send_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n"
    )
    await trio.sleep(0.2)
    await chunked.send_all(b"0\r\nX-Trailer: y\r\n\r\n")
    assert (await read_answer(chunked, b"read 4")).startswith(b"HTTP/1.1 200")
    await chunked.aclose()
    # Expect: 100-continue: the body comes only after hypercorn's 100
    expecting = await trio.open_tcp_stream(*served.address)
    await expecting.send_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
    )
    assert (await read_answer(expecting, b"\r\n\r\n")).startswith(b"HTTP/1.1 100")
    await expecting.send_all(b"abc")
    assert b"read 3" in await read_answer(expecting, b"read 3")
    await expecting.aclose()
    # a body far longer than what the gate waits for, its first bytes late
    large = await trio.open_tcp_stream(*served.address)
    size = 4 << 20
    await large.send_all(
        f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode()
    )
    await trio.sleep(0.2)
    await large.send_all(b"x" * size)
    assert (await read_answer(large, f"read {size}".encode())).startswith(b"HTTP/1.1 200")
    await large.aclose()
    assert served.counters.get("http_bad_requests", 0) == 0
    served.server.stop()


async def test_curl_posts_are_served(nursery: trio.Nursery, tmp_path: Any) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("no curl on this machine")
    served = Served()
    await nursery.start(served.server.run)
    body = tmp_path / "body"
    body.write_bytes(b"y" * (3 << 20))  # curl sends Expect: 100-continue for large bodies
    url = f"http://127.0.0.1:{served.address[1]}/echo"
    for extra in ([], ["-H", "Transfer-Encoding: chunked"]):
        with trio.fail_after(60):
            done = await trio.run_process(
                [curl, "-sS", "--data-binary", f"@{body}", *extra, url, url],
                capture_stdout=True,
            )
        assert done.stdout == f"read {3 << 20}".encode() * 2  # two requests, one connection
    served.server.stop()


@pytest.mark.parametrize("size_line", [b"-6", b" -6", b"+4", b"1_0", b"zz"])
def test_a_chunk_size_h11_would_refuse_is_admitted_to_hypercorn_at_once(size_line: bytes) -> None:
    """The gate reads a chunked first body on the event loop: a size that is no run of hex
    digits is h11's to refuse (admitted), never one the gate's reading loops on ("-6"
    moved its place back to where it was, and the daemon spun for ever)."""
    judge = judge_request_head(16384)
    head = b"POST /v2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"

    def stuck(signum: int, frame: Any) -> None:
        raise TimeoutError("the gate's judge did not return")

    previous = signal.signal(signal.SIGALRM, stuck)
    signal.setitimer(signal.ITIMER_REAL, 2.0)
    try:
        assert judge(head + size_line + b"\r\n", False) == (Verdict.ADMIT, "")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _two_requests_blocking(address: tuple[str, int], stall: Any) -> list[bytes]:
    """Two requests on one keep-alive connection from a thread, ``stall()`` called on
    the loop's thread between them: each answer's first line, or b"" if closed."""
    lines = []
    with socket.create_connection(address, timeout=30) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b"0\r\n\r\n"):  # the chunked body's end
            answer += client.recv(4096)
        lines.append(answer.split(b"\r\n")[0])
        trio.from_thread.run_sync(stall)
        time.sleep(0.1)  # the next head comes while the loop is held
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        try:
            lines.append(client.recv(4096).split(b"\r\n")[0])
        except ConnectionResetError:
            lines.append(b"RESET")
    return lines


@pytest.mark.parametrize("steps", [3, 4, 5])
async def test_a_loop_stall_does_not_close_a_keep_alive_connection_whose_next_head_came(
    nursery: trio.Nursery, steps: int
) -> None:
    """The header timeout of a keep-alive connection's next head passed during a stall
    of the loop in which that head arrived; it closed the connection unanswered."""
    served = Served(header_timeout_s=0.3)
    await nursery.start(served.server.run)

    async def hold_the_loop() -> None:
        for _ in range(steps):
            await trio.sleep(0)
        time.sleep(0.6)

    for _ in range(4):
        lines = await trio.to_thread.run_sync(
            _two_requests_blocking, served.address, lambda: nursery.start_soon(hold_the_loop)
        )
        assert lines == [b"HTTP/1.1 200 ", b"HTTP/1.1 200 "], lines
    served.server.stop()


def _stream_a_body_blocking(address: tuple[str, int], size: int) -> bytes:
    """A POST whose whole body is sent before the answer is read (as http.client and
    urllib send one): the answer's first line, or what went wrong."""
    with socket.create_connection(address, timeout=30) as client:
        try:
            client.sendall(
                f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode()
            )
            chunk = b"x" * (1 << 20)
            for _ in range(size >> 20):
                client.sendall(chunk)
            return client.recv(4096).split(b"\r\n")[0]
        except OSError as error:
            return repr(error).encode()


async def test_a_client_still_sending_a_body_refused_at_the_gate_reads_its_413(
    nursery: trio.Nursery,
) -> None:
    """The gate read 64 KiB of a refused request and closed: the rest of a 50 MB body
    that its client was still sending made the close a reset, and the client (one that
    sends its body before it reads) met ECONNRESET instead of its 413."""
    served = Served(max_body_bytes=100_000)
    await nursery.start(served.server.run)
    for _ in range(2):
        answer = await trio.to_thread.run_sync(_stream_a_body_blocking, served.address, 50 << 20)
        assert answer == b"HTTP/1.1 413 Content Too Large", answer
    assert served.requests == 0
    served.server.stop()


async def test_a_connection_admitted_by_the_gate_counts_before_its_handler_starts(
    nursery: trio.Nursery,
) -> None:
    """Between the gate's admission and the start of its handler's task a connection
    was counted nowhere: the connections admitted in one step took the port past
    ``max_connections`` (and an address past its share) by as many."""
    served = Served(max_connections=1)
    await nursery.start(served.server.run)
    limits = served.server.limits
    gate = limits.gate
    assert gate is not None
    admit = gate._admitted
    seen: list[tuple[int, bool]] = []

    def admitted(sock: socket.socket, address: Any) -> None:
        admit(sock, address)
        seen.append((limits.open_connections, limits.admit("127.0.0.3")))

    gate._admitted = admitted
    assert (await get(served.address)).startswith(b"HTTP/1.1 200 ")
    assert seen == [(1, False)]
    assert served.counters["http_connections_refused"] == 1
    served.server.stop()


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made by the openssl command."""
    import subprocess

    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


def _tls_exchange_blocking(address: tuple[str, int], cert: Any, stall: Any) -> list[bytes]:
    """Two requests on one TLS keep-alive connection from a thread, ``stall()`` called
    on the loop's thread before each: each answer's first line, or RESET."""
    import ssl

    context = ssl.create_default_context(cafile=str(cert))
    lines = []
    with socket.create_connection(address, timeout=30) as raw:
        trio.from_thread.run_sync(stall)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as client:
            for last in (False, True):
                if last:
                    trio.from_thread.run_sync(stall)
                    time.sleep(0.1)  # the next head comes while the loop is held
                client.sendall(
                    b"GET /echo HTTP/1.1\r\nHost: x\r\n"
                    + (b"Connection: close\r\n" if last else b"")
                    + b"\r\n"
                )
                try:
                    answer = b""
                    while not answer.endswith(b"read 0"):
                        chunk = client.recv(4096)
                        if not chunk:
                            break
                        answer += chunk
                    lines.append(answer.split(b"\r\n")[0])
                except (ConnectionResetError, ssl.SSLError):
                    lines.append(b"RESET")
    return lines


@pytest.mark.parametrize("steps", [1, 3, 5])
async def test_a_loop_stall_does_not_reset_a_tls_connection_whose_head_came(
    nursery: trio.Nursery, certificate: tuple[Any, Any], steps: int
) -> None:
    """A TLS connection skips the gate: its first head is timed by its handler alone,
    and both its heads are judged again after a stall, as a plain one's are."""
    cert, key = certificate
    served = Served(header_timeout_s=0.3, tls_cert=cert, tls_key=key)
    await nursery.start(served.server.run)

    async def hold_the_loop() -> None:
        for _ in range(steps):
            await trio.sleep(0)
        time.sleep(0.6)

    for _ in range(3):
        lines = await trio.to_thread.run_sync(
            _tls_exchange_blocking,
            served.address,
            cert,
            lambda: nursery.start_soon(hold_the_loop),
        )
        assert lines == [b"HTTP/1.1 200 ", b"HTTP/1.1 200 "], lines
    served.server.stop()


def _trickle_blocking(address: tuple[str, int], declared: int, stop: Any) -> str:
    """A POST declaring ``declared`` body bytes from 127.0.0.2, then 4 KiB at a time
    until ``stop()``, whether or not it was declared: how the connection ended."""
    with socket.create_connection(address, timeout=30, source_address=(HOSTILE, 0)) as client:
        try:
            client.sendall(
                f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n".encode()
            )
            while not stop():
                client.sendall(b"x" * 4096)
                time.sleep(0.005)
            return "still open"
        except OSError:
            return "reset"


async def test_one_address_cannot_keep_every_lingering_close_busy(nursery: trio.Nursery) -> None:
    """A refused 413 lingers (its client reads the answer), but one address trickling
    bodies over the limit on many connections kept all 16 lingering drains busy for
    their 10 s, outside the port's and the address's counts: at most 2 linger per
    address, and they count in its share."""
    served = Served(max_body_bytes=1000, max_connections_per_client=8)
    await nursery.start(served.server.run)
    limits = served.server.limits
    done = False
    async with trio.open_nursery() as clients:
        for _ in range(6):
            clients.start_soon(
                trio.to_thread.run_sync, _trickle_blocking, served.address, 10 << 20, lambda: done
            )
        with trio.fail_after(30):
            while served.counters.get("http_bad_requests", 0) < 6:
                await trio.sleep(0.05)
        assert limits.lingering(HOSTILE) == 2
        assert limits._per_client[HOSTILE] == 2  # the lingering ones hold their share
        assert limits.open_connections == 2
        done = True
    assert (await get(served.address)).startswith(b"HTTP/1.1 200")
    served.server.stop()


async def test_a_lingering_close_reads_no_more_than_the_declared_body(
    nursery: trio.Nursery,
) -> None:
    """A lingering 413 was read for its whole 10 s at whatever rate its client sent: it
    now ends once the declared body (and the head) have been read."""
    served = Served(max_body_bytes=1000)
    await nursery.start(served.server.run)
    limits = served.server.limits
    start = trio.current_time()
    deadline = time.monotonic() + 30
    ended = await trio.to_thread.run_sync(
        _trickle_blocking, served.address, 64 << 10, lambda: time.monotonic() > deadline
    )
    assert ended == "reset"  # closed while its client still sent past its declared body
    assert trio.current_time() - start < 5
    assert limits.lingering() == 0
    served.server.stop()
