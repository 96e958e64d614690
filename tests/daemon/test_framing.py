"""Frames over a byte stream: round trips, limits, garbage, truncation, authentication."""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import threading
from typing import Any

import pytest
import trio
import trio.testing

from meshgpu.daemon import framing
from meshgpu.daemon.auth import Authenticator, MeshKey
from meshgpu.daemon.framing import FrameStream, pack, unpack
from meshgpu.errors import AuthenticationError, DecodeError, FrameTooLargeError

KEY = MeshKey.generate()


def pair(
    left_key: MeshKey | None = KEY, right_key: MeshKey | None = KEY, limit: int = 1 << 20
) -> tuple[FrameStream, FrameStream, trio.abc.Stream]:
    left_stream, right_stream = trio.testing.memory_stream_pair()
    left = FrameStream(left_stream, Authenticator(left_key, "left"), max_frame_bytes=limit)
    right = FrameStream(right_stream, Authenticator(right_key, "right"), max_frame_bytes=limit)
    return left, right, left_stream


async def test_messages_roundtrip_in_order() -> None:
    left, right, _ = pair()
    messages = [{"type": "status"}, {"blob": b"\x00" * 100_000, "n": [1, 2, 3]}, "x"]
    for message in messages:
        await left.send(message)
    assert [await right.receive() for _ in messages] == messages
    assert right.peer_sender == "left"


async def test_clean_close_between_frames_is_none() -> None:
    left, right, _ = pair()
    await left.send({"a": 1})
    await left.aclose()
    assert await right.receive() == {"a": 1}
    assert await right.receive() is None


async def test_oversized_announcement_is_refused_before_reading_body() -> None:
    _left, right, raw = pair(limit=1024)
    await raw.send_all(struct.pack("!I", 10_000_000))
    with pytest.raises(FrameTooLargeError, match="limit is 1024"):
        await right.receive()


async def test_http_request_is_refused_as_oversized() -> None:
    _, right, raw = pair()
    await raw.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(FrameTooLargeError, match="other than a meshgpu peer"):
        await right.receive()


async def test_a_lying_length_is_refused_at_its_first_bytes_not_after_the_body() -> None:
    """A frame announced at the limit whose body does not begin like an envelope is
    refused when its first bytes arrive: the rest is never waited for, nor given a
    buffer of the announced size."""
    _left, right, raw = pair(limit=64 << 20)
    await raw.send_all(struct.pack("!I", 64 << 20) + b"\x00\x00garbage")
    with trio.fail_after(10), pytest.raises(DecodeError, match="bad magic"):
        await right.receive()  # without the check: waits for 64 MiB that never come


async def test_the_first_frame_counts_as_begun_once_its_magic_arrives() -> None:
    _left, right, raw = pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(right.receive)
        await raw.send_all(struct.pack("!I", 100) + b"M")
        await trio.testing.wait_all_tasks_blocked()
        assert not right.header_seen.is_set()  # one byte of a trickle has begun nothing
        await raw.send_all(b"G")
        await trio.testing.wait_all_tasks_blocked()
        assert right.header_seen.is_set()
        nursery.cancel_scope.cancel()


async def test_sending_oversized_frame_is_refused_locally() -> None:
    left, _, _ = pair(limit=1024)
    with pytest.raises(FrameTooLargeError, match="chunks"):
        await left.send(b"x" * 2000)


async def test_truncated_frame_is_a_decode_error() -> None:
    left, right, raw = pair()
    sealed = left._sealer.seal(pack({"a": 1}))
    await raw.send_all(struct.pack("!I", len(sealed)) + sealed[:5])
    await raw.aclose()
    with pytest.raises(DecodeError, match="mid-frame"):
        await right.receive()


async def test_authenticated_garbage_is_a_decode_error() -> None:
    left, right, raw = pair()
    sealed = left._sealer.seal(b"\xc1\xc1 not msgpack")
    await raw.send_all(struct.pack("!I", len(sealed)) + sealed)
    with pytest.raises(DecodeError, match="msgpack"):
        await right.receive()


async def test_random_bytes_in_frame_are_refused() -> None:
    _, right, raw = pair()
    await raw.send_all(struct.pack("!I", 64) + bytes(range(64)))
    with pytest.raises(DecodeError):
        await right.receive()


async def test_wrong_key_frame_is_refused() -> None:
    left, right, _ = pair(left_key=MeshKey.generate())
    await left.send({"type": "status"})
    with pytest.raises(AuthenticationError):
        await right.receive()
    assert right.authenticator.counters["bad_tag"] == 1


async def test_replayed_frame_is_refused() -> None:
    left, right, raw = pair()
    sealed = left._sealer.seal(pack({"op": "submit"}))
    frame = struct.pack("!I", len(sealed)) + sealed
    await raw.send_all(frame + frame)
    assert await right.receive() == {"op": "submit"}
    with pytest.raises(AuthenticationError, match="replayed"):
        await right.receive()


async def test_request_gets_reply() -> None:
    left, right, _ = pair(left_key=None, right_key=None)

    async def echo() -> None:
        message = await right.receive()
        await right.send({"echo": message})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo)
        assert await left.request("ping") == {"echo": "ping"}


@pytest.mark.parametrize("key", [KEY, None], ids=["keyed", "open"])
async def test_a_large_range_crosses_a_socket_from_a_view_and_into_one_buffer(
    key: MeshKey | None,
) -> None:
    """A payload range is sent from a view of the caller's memory (framing.pack_pieces)
    and read with recv_into (a real socket): the receiver gets the same bytes, whatever
    order the map's keys were packed in."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    left_stream = await trio.testing.open_stream_to_socket_listener(listeners[0])
    right_stream = await listeners[0].accept()
    left = FrameStream(left_stream, Authenticator(key, "left"))
    right = FrameStream(right_stream, Authenticator(key, "right"))
    payload = bytes(range(256)) * (3 << 12)  # 3 MiB
    message = {"id": 7, "data": memoryview(payload)[1:], "offset": 1, "more": True}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(left.send, message)
        received = await right.receive()
    assert received == {"id": 7, "data": payload[1:], "offset": 1, "more": True}
    assert unpack(pack({**message, "data": payload[1:]})) == received
    await left.aclose()
    await right.aclose()
    await listeners[0].aclose()


def test_a_large_range_is_unpacked_as_a_view_of_its_frame_not_a_copy() -> None:
    """framing.unpack gives a range that ends a large frame (pack_pieces' form) as a
    read-only view of the frame's buffer: writing to the buffer shows through it."""
    data = bytes(range(256)) * 4096  # 1 MiB
    frame = bytearray(pack({"offset": 5, "more": True, "data": data}))
    message = unpack(frame)
    assert isinstance(message["data"], memoryview) and message["data"].readonly
    assert message == {"offset": 5, "more": True, "data": data}
    frame[-1] ^= 0xFF
    assert message["data"][-1] == data[-1] ^ 0xFF  # the frame's own memory


@pytest.mark.parametrize(
    "message",
    [
        {"data": b"\x01" * (1 << 20), "offset": 0},  # data not last: msgpack's order kept
        {"blob": b"\x01" * (1 << 20)},  # another name
        {"offset": 0, "data": "x" * (1 << 20)},  # not bytes
        [b"\x01" * (1 << 20)],  # not a map
        {"data": b"\x01" * 1000, "pad": "y" * (1 << 20)},  # small range in a large frame
    ],
    ids=["not-last", "other-key", "str", "list", "small"],
)
def test_other_large_frames_are_decoded_whole(message: object) -> None:
    import msgpack

    received = unpack(msgpack.packb(message, use_bin_type=True))
    assert received == message
    if isinstance(received, dict) and isinstance(received.get("data"), bytes | memoryview):
        assert isinstance(received["data"], bytes)


@pytest.mark.parametrize("cut", [1, 1000])
def test_a_large_range_that_is_cut_short_or_too_long_is_refused(cut: int) -> None:
    frame = pack({"offset": 0, "data": b"\x02" * (1 << 20)})
    with pytest.raises(DecodeError):
        unpack(frame[:-cut])
    with pytest.raises(DecodeError):
        unpack(frame + b"\x00" * cut)


def test_a_daemon_heap_keeps_large_frames_pages() -> None:
    """After ``keep_frame_memory`` (glibc), rounds of four 16 MiB frame buffers alive at
    once reuse the heap's pages instead of faulting fresh ones in every round. In a
    child process: the setting is the whole process's."""
    import subprocess
    import sys

    probe = (
        "import resource, sys\n"
        "from meshgpu.daemon.framing import keep_frame_memory\n"
        "if not keep_frame_memory(): sys.exit(3)\n"
        "def faults(): return resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(2): [bytearray(16 << 20) for _ in range(4)]\n"
        "before = faults()\n"
        "for _ in range(16): [bytearray(16 << 20) for _ in range(4)]\n"
        "print(faults() - before)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    if done.returncode == 3:
        pytest.skip("not glibc: no mallopt")
    assert done.returncode == 0, done.stderr
    # 16 rounds of 64 MiB faulted afresh would be 262,144 faults of 4 KiB pages.
    assert int(done.stdout) < 10_000


def test_a_large_frames_buffer_is_a_bytearray_not_zero_filled_first() -> None:
    """framing.unfilled_bytearray: the buffer a large frame is read into; every byte
    of it is then written by the receive (or the frame is refused)."""
    from meshgpu.daemon.framing import unfilled_bytearray

    buffer = unfilled_bytearray(1 << 20)
    assert isinstance(buffer, bytearray) and len(buffer) == 1 << 20
    buffer[:3] = b"abc"
    assert bytes(buffer[:3]) == b"abc"


def _a_range_kept_over_the_next_frame(pool: Any) -> memoryview:
    """A large frame whose range is handed on (still in use), then the next large frame
    written: the range keeps its bytes (not overwritten: a buffer of its own). Returns the
    kept range."""
    first = pool.buffer(1000, now=0.0)
    first[:4] = b"keep"
    kept: memoryview = first[:4].toreadonly()
    del first
    second = pool.buffer(1000, now=0.1)
    second[:4] = b"next"
    assert bytes(kept) == b"keep"
    return kept


def test_a_frame_buffer_is_used_again_only_once_nothing_refers_to_it() -> None:
    """framing.FramePool: a free buffer serves the next large frame (no fresh pages);
    one a view of a range still refers to is never handed out again."""
    from meshgpu.daemon.framing import FramePool

    pool = FramePool(spare=2, idle_s=5.0)
    kept = _a_range_kept_over_the_next_frame(pool)
    third = pool.buffer(900, now=0.2)  # the free one, cut to the frame's size
    assert len(third) == 900 and len(pool) == 2
    del third, kept
    pool.idle(now=1.0)
    assert len(pool) == 2  # large frames came lately: kept
    pool.idle(now=5.3)
    assert len(pool) == 0


@pytest.mark.parametrize("key", [KEY, None], ids=["keyed", "open"])
async def test_large_frames_read_into_reused_buffers_keep_their_bytes(
    key: MeshKey | None,
) -> None:
    """Ranges received into the stream's reused buffers: each range a receiver still
    holds keeps its own bytes while later frames arrive (a real socket: recv_into)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    left_stream = await trio.testing.open_stream_to_socket_listener(listeners[0])
    right_stream = await listeners[0].accept()
    left = FrameStream(left_stream, Authenticator(key, "left"))
    right = FrameStream(right_stream, Authenticator(key, "right"))
    payloads = [bytes([n]) * (1 << 20) for n in range(12)]
    held = []
    async with trio.open_nursery() as nursery:

        async def send_all() -> None:
            for n, payload in enumerate(payloads):
                await left.send({"offset": n, "data": payload})

        nursery.start_soon(send_all)
        for n in range(len(payloads)):
            received = await right.receive()
            if n % 3 == 0:
                held.append(received["data"])  # kept while later frames arrive
            else:
                assert received["data"] == payloads[n]
    assert [bytes(data) for data in held] == payloads[::3]
    assert 0 < len(right.frames) <= 6
    await left.aclose()
    await right.aclose()
    await listeners[0].aclose()


def test_a_buffer_a_view_refers_to_is_not_reused_where_the_interpreter_counts_fewer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """framing.FramePool judges a buffer free by its reference count, whose reading
    adds references of the interpreter's own (CPython 3.14 borrows stack references:
    fewer than 3.11's). With every count read lower than 3.11's, as there, a buffer a
    range's view still refers to is not handed out again (a fixed threshold of 3 read
    it as free, and the next frame overwrote the range)."""
    import sys

    from meshgpu.daemon.framing import FramePool

    real = sys.getrefcount
    monkeypatch.setattr(sys, "getrefcount", lambda thing: real(thing) - 10)
    pool = FramePool(spare=2, idle_s=5.0)
    kept = _a_range_kept_over_the_next_frame(pool)
    third = pool.buffer(1000, now=0.2)  # the free one is used again
    assert len(pool) == 2
    third[:4] = b"last"
    assert bytes(kept) == b"keep"


def test_the_answering_side_keeps_no_frame_buffers() -> None:
    """An API server's stream (``answering``): a peer that sends large frames before it
    is refused leaves no buffers behind in the connection."""
    left_stream, _ = trio.testing.memory_stream_pair()
    server = FrameStream(left_stream, Authenticator(KEY, "server"), answering=True)
    first = server.frames.buffer(1000, now=0.0)
    del first
    assert len(server.frames) == 0


async def test_a_quiet_connection_gives_its_frame_buffers_back() -> None:
    """A requesting side that received large frames and then nothing (a daemon's pooled
    link to a peer after the last ranges of a transfer; the link is never closed while
    the peer lives) kept their buffers until a small frame came: up to 6 x 16 MiB per
    peer, for as long as the link stayed quiet. They are given back once the pool's
    idle time passed, with the reader still waiting for the next frame, and a frame
    after that is read whole."""
    from meshgpu.daemon.framing import FramePool

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    left_stream = await trio.testing.open_stream_to_socket_listener(listeners[0])
    right_stream = await listeners[0].accept()
    left = FrameStream(left_stream, Authenticator(KEY, "left"))
    right = FrameStream(right_stream, Authenticator(KEY, "right"))
    right.frames = FramePool(idle_s=0.2)
    received: list[Any] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:

            async def receive_all() -> None:
                while (message := await right.receive()) is not None:
                    received.append(message)

            nursery.start_soon(receive_all)
            for n in range(3):
                await left.send({"offset": n, "data": bytes([n]) * (1 << 20)})
            while len(received) < 3:
                await trio.sleep(0.01)
            assert len(right.frames) >= 1
            with trio.fail_after(10):
                while len(right.frames):
                    await trio.sleep(0.05)
            assert len(received) == 3  # still waiting: nothing came, the buffers went
            await left.send({"offset": 3, "data": b"\x03" * (1 << 20)})
            await left.aclose()
    assert received[3]["offset"] == 3 and received[3]["data"] == b"\x03" * (1 << 20)
    await right.aclose()
    await listeners[0].aclose()


async def _socket_pair() -> tuple[Any, FrameStream, FrameStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    left_stream = await trio.testing.open_stream_to_socket_listener(listeners[0])
    right_stream = await listeners[0].accept()
    return (
        listeners[0],
        FrameStream(left_stream, Authenticator(None, "left")),
        FrameStream(right_stream, Authenticator(None, "right")),
    )


async def test_a_large_frame_to_a_reader_that_stalls_arrives_whole() -> None:
    """A large frame is moved by a worker thread while the bytes flow and by trio's loop
    while they do not: a reader that takes nothing for a while (the sender's thread
    finds no room, the receiver's no bytes) still gets every byte in order."""
    listener, left, right = await _socket_pair()
    payloads = [bytes([n]) * (9 << 20) for n in range(3)]
    received: list[bytes] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:

            async def send_all() -> None:
                for n, payload in enumerate(payloads):
                    await left.send({"offset": n, "data": payload})

            nursery.start_soon(send_all)
            await trio.sleep(0.3)  # the sender's thread stalls on a full socket
            for _ in payloads:
                received.append(bytes((await right.receive())["data"]))
                await trio.sleep(0.1)
    assert received == payloads
    await left.aclose()
    await right.aclose()
    await listener.aclose()


async def test_a_large_send_to_a_reader_that_never_reads_is_cancelled_promptly() -> None:
    """A send waiting for a peer that reads nothing holds no thread and is cancelled at
    once: the thread hands the rest to trio's loop once the socket has no room."""
    listener, left, right = await _socket_pair()
    with trio.fail_after(10):
        with trio.move_on_after(0.5) as waited:
            await left.send({"offset": 0, "data": b"\x01" * (48 << 20)})
    assert waited.cancelled_caught
    await left.aclose()
    await right.aclose()
    await listener.aclose()


async def test_a_peer_that_closes_mid_frame_is_a_decode_error() -> None:
    """A large frame cut short by its sender's close is a DecodeError, whichever of the
    thread and trio's loop was reading when the connection ended."""
    listener, left, right = await _socket_pair()
    body = b"\x00" * (8 << 20)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def send_part_and_close() -> None:
                pieces = left._sealer.seal_pieces(
                    [b"\x81\xa4data\xc6" + struct.pack("!I", len(body)), body]
                )
                size = sum(len(piece) for piece in pieces)
                await left.stream.send_all(struct.pack("!I", size) + b"".join(pieces)[: 3 << 20])
                await left.aclose()

            nursery.start_soon(send_part_and_close)
            with pytest.raises(DecodeError, match="closed mid-frame"):
                await right.receive()
    await right.aclose()
    await listener.aclose()


def _start_threads_late(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[threading.Event, threading.Event]:
    """Large frames' worker threads that start late (a loaded machine): each sets the
    first event, then moves nothing until the second is set."""
    started, proceed = threading.Event(), threading.Event()
    move = framing._move_while_flowing

    def late_move(descriptor: int, view: memoryview, receive: bool) -> tuple[int, bool]:
        started.set()
        proceed.wait(10)
        return move(descriptor, view, receive)

    monkeypatch.setattr(framing, "_move_while_flowing", late_move)
    return started, proceed


async def _take_number(closing: FrameStream, number: int, listener: Any) -> list[Any]:
    """Close ``closing`` and open a connection that ``number`` names: its two ends, and
    a descriptor to close after them where ``number`` was made for it (``dup2``: a lower
    number was free, which the next file opened takes first)."""
    await closing.stream.aclose()
    other = await trio.testing.open_stream_to_socket_listener(listener)
    borrowed = []
    if other.socket.fileno() != number:
        os.dup2(other.socket.fileno(), number)
        borrowed.append(number)
    return [other, await listener.accept(), *borrowed]


async def test_a_stream_closed_before_its_thread_starts_sends_nothing_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A large send's worker thread may start after other tasks ran (trio checkpoints
    while it takes a thread; a loaded machine starts it late): a task that closed the
    stream meanwhile, and a connection opened since that took its descriptor's number,
    never get the frame's bytes: the thread moves them on the socket it was given."""
    listener, left, right = await _socket_pair()
    assert left._socket is not None
    number = left._socket.fileno()
    started, proceed = _start_threads_late(monkeypatch)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:

            async def send_large() -> None:
                with pytest.raises((trio.ClosedResourceError, trio.BrokenResourceError)):
                    await left.send({"offset": 0, "data": b"\x07" * (4 << 20)})

            nursery.start_soon(send_large)
            while not started.is_set():
                await trio.sleep(0.01)
            other, other_end, *extra = await _take_number(left, number, listener)
            proceed.set()
        leaked = b""
        with trio.move_on_after(0.5):
            leaked = await other_end.receive_some(1 << 16)
    assert leaked == b""
    for stream in (other, other_end, right):
        await stream.aclose()
    for descriptor in extra:
        os.close(descriptor)
    await listener.aclose()


async def _large_frame_under_way(
    nursery: trio.Nursery,
    left: FrameStream,
    right: FrameStream,
    started: threading.Event,
    receiving: contextlib.AbstractContextManager[Any],
) -> None:
    """Send a 4 MiB frame from ``left`` to ``right`` in tasks of ``nursery`` (the receive
    inside ``receiving``, the send ignoring a closed or broken stream), once a worker
    thread has started."""

    async def receive_large() -> None:
        with receiving:
            await right.receive()

    async def send_large() -> None:
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            await left.send({"offset": 0, "data": b"\x07" * (4 << 20)})

    nursery.start_soon(receive_large)
    nursery.start_soon(send_large)
    while not started.is_set():
        await trio.sleep(0.01)


async def test_a_large_send_on_a_stream_closed_meanwhile_is_a_closed_resource_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As trio's ``send_all`` says of a stream this side closed: the thread moved the
    bytes on a copy of the descriptor, and the rest went to a socket with none (EBADF),
    which was reported as a broken connection (``BrokenResourceError``)."""
    listener, left, right = await _socket_pair()
    started, proceed = _start_threads_late(monkeypatch)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:

            async def send_large() -> None:
                with pytest.raises(trio.ClosedResourceError):  # the peer reads nothing
                    await left.send({"offset": 0, "data": b"\x07" * (48 << 20)})

            nursery.start_soon(send_large)
            while not started.is_set():
                await trio.sleep(0.01)
            await left.stream.aclose()
            proceed.set()
    await right.aclose()
    await listener.aclose()


async def test_a_large_receive_on_a_stream_closed_meanwhile_is_a_closed_resource_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The receiving side likewise (it was a DecodeError, "connection broken")."""
    listener, left, right = await _socket_pair()
    started, proceed = _start_threads_late(monkeypatch)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            closed = pytest.raises(trio.ClosedResourceError)
            await _large_frame_under_way(nursery, left, right, started, closed)
            await right.stream.aclose()
            proceed.set()
            await trio.sleep(0.2)
            await left.aclose()
    await listener.aclose()


async def test_a_stream_closed_before_its_receiving_thread_starts_reads_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The receiving side likewise: a thread that starts after its stream was closed,
    and its number given to a new connection, never reads that connection's bytes."""
    listener, left, right = await _socket_pair()
    assert right._socket is not None
    number = right._socket.fileno()
    started, proceed = _start_threads_late(monkeypatch)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            # cut short, or closed: either is fine here
            ended = contextlib.suppress(DecodeError, trio.ClosedResourceError)
            await _large_frame_under_way(nursery, left, right, started, ended)
            other, other_end, *extra = await _take_number(right, number, listener)
            await other_end.send_all(b"\x09" * 1000)
            await trio.sleep(0.1)
            proceed.set()
            await left.aclose()
        unread = b""
        with trio.move_on_after(0.5):
            unread = await other.receive_some(1 << 16)
    assert unread == b"\x09" * 1000
    for stream in (other, other_end):
        await stream.aclose()
    for descriptor in extra:
        os.close(descriptor)
    await listener.aclose()


async def test_large_frames_move_through_trio_when_no_descriptor_is_free(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A process at its open-file limit (a flood of connections) cannot duplicate a
    socket for a worker thread: its large frames go through trio's loop instead of
    breaking the connection as if the peer had failed."""
    listener, left, right = await _socket_pair()

    def no_descriptor(descriptor: int) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(framing.os, "dup", no_descriptor)
    payload = b"\x05" * (4 << 20)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(left.send, {"offset": 0, "data": payload})
            message = await right.receive()
    assert bytes(message["data"]) == payload
    await left.aclose()
    await right.aclose()
    await listener.aclose()
