"""Property tests: frames survive any chunking of the byte stream; the replay window
accepts exactly the counters it has not seen and that are inside the window."""

from __future__ import annotations

import struct

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from meshgpu.daemon.auth import Authenticator, Channel, MeshKey
from meshgpu.daemon.framing import FrameStream
from meshgpu.errors import AuthenticationError

KEY = MeshKey.generate()
messages = st.lists(
    st.one_of(
        st.binary(max_size=300),
        st.dictionaries(
            st.text(max_size=8),
            st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.text(max_size=20),
            max_size=5,
        ),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=40, deadline=None, print_blob=True)
@given(messages=messages, cuts=st.lists(st.integers(min_value=1, max_value=64), max_size=40))
def test_frames_survive_any_chunking(messages: list[object], cuts: list[int]) -> None:
    async def scenario() -> list[object]:
        sender_stream, receiver_stream = trio.testing.memory_stream_pair()
        capture_left, capture_right = trio.testing.memory_stream_pair()
        sender = FrameStream(capture_left, Authenticator(KEY, "sender"))
        for message in messages:
            await sender.send(message)
        await capture_left.aclose()
        wire = b""
        while chunk := await capture_right.receive_some(1 << 20):
            wire += chunk
        position = 0
        for cut in [*cuts, len(wire)]:  # the same bytes, delivered in arbitrary pieces
            await sender_stream.send_all(wire[position : position + cut])
            position += cut
            if position >= len(wire):
                break
        if position < len(wire):
            await sender_stream.send_all(wire[position:])
        await sender_stream.aclose()
        receiver = FrameStream(receiver_stream, Authenticator(KEY, "receiver"))
        received = []
        while (message := await receiver.receive()) is not None:
            received.append(message)
        return received

    assert trio.run(scenario) == messages


@settings(max_examples=150, deadline=None, print_blob=True)
@given(order=st.lists(st.integers(min_value=0, max_value=40), max_size=80))
def test_replay_window_accepts_each_counter_once_within_the_window(order: list[int]) -> None:
    window = 16
    sender = Authenticator(KEY, "sender")
    receiver = Authenticator(KEY, "receiver", window=window)
    session = sender.new_session(Channel.DATAGRAM).session
    sealed = {n: sender.seal_with(Channel.DATAGRAM, session, n, b"x") for n in set(order)}
    seen: set[int] = set()
    highest = -1
    for counter in order:
        fresh = counter not in seen and counter > highest - window
        try:
            receiver.open(sealed[counter], Channel.DATAGRAM)
            accepted = True
        except AuthenticationError:
            accepted = False
        assert accepted == fresh, (counter, sorted(seen), highest)
        if accepted:
            seen.add(counter)
            highest = max(highest, counter)


def test_length_prefix_is_big_endian_and_counts_the_envelope() -> None:
    async def scenario() -> bytes:
        left, right = trio.testing.memory_stream_pair()
        await FrameStream(left, Authenticator(None, "s")).send({"a": 1})
        return await right.receive_some(1 << 16)

    wire = trio.run(scenario)
    (length,) = struct.unpack("!I", wire[:4])
    assert length == len(wire) - 4


operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 5), st.binary(max_size=40)),
        st.tuples(st.just("delete"), st.integers(0, 5), st.just(b"")),
        st.tuples(st.just("compact"), st.just(0), st.just(b"")),
        st.tuples(st.just("reopen"), st.just(0), st.just(b"")),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None, print_blob=True)
@given(operations=operations, torn=st.integers(min_value=0, max_value=30))
def test_journal_replays_what_was_written_and_survives_a_torn_tail(
    operations: list[tuple[str, int, bytes]], torn: int
) -> None:
    import tempfile
    from pathlib import Path

    from meshgpu.daemon.journal import JOURNAL_NAME, Journal

    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        journal = Journal.open(directory, compact_min_bytes=0)
        model: dict[int, bytes] = {}
        for op, key, value in operations:
            if op == "put":
                journal.put(key, value)
                model[key] = value
            elif op == "delete":
                journal.delete(key)
                model.pop(key, None)
            elif op == "compact":
                journal.compact()
            else:
                journal.close()
                journal = Journal.open(directory, compact_min_bytes=0)
            assert dict(journal.items()) == model
        journal.close()
        assert dict(Journal.open(directory).items()) == model
        # A crash mid-append: a partial record at the end is cut, nothing before it lost.
        path = directory / JOURNAL_NAME
        with open(path, "ab") as handle:
            handle.write(b"\x00\x00\x01\x00" + b"\xab" * torn)
        replayed = Journal.open(directory)
        assert dict(replayed.items()) == model
        assert replayed.torn_bytes == 4 + torn
