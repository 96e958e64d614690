"""hypercorn's HTTP/1.1 protocol sends a response's head with its body in one write
(server.send_head_with_body), and a streamed response's head at once."""

from __future__ import annotations

import types
from typing import Any

import h11
from hypercorn.config import Config
from hypercorn.events import RawData
from hypercorn.protocol.events import Body, EndBody, Response
from hypercorn.protocol.h11 import H11Protocol

from meshgpu.http.server import send_head_with_body


class Recorder:
    """What a protocol writes to its connection: the ``send`` hypercorn hands it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def __call__(self, event: Any) -> None:
        if isinstance(event, RawData):
            self.writes.append(bytes(event.data))


def protocol(recorder: Recorder) -> Any:
    """An object with the fields the protocol's ``stream_send`` uses, its h11
    connection past a request."""
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(connection.next_event(), h11.Request)
    connection.next_event()  # EndOfMessage

    class Fake:
        pass

    fake = Fake()
    fake.connection = connection  # type: ignore[attr-defined]
    fake.config = Config()  # type: ignore[attr-defined]
    fake.keep_alive_requests = 1  # type: ignore[attr-defined]
    fake.send = recorder  # type: ignore[attr-defined]
    fake._send_h11_event = types.MethodType(H11Protocol._send_h11_event, fake)  # type: ignore[attr-defined]
    return fake


async def test_a_sized_response_is_one_write() -> None:
    send_head_with_body()
    recorder = Recorder()
    fake = protocol(recorder)
    head = Response(stream_id=1, status_code=200, headers=[(b"content-length", b"5")])
    await H11Protocol.stream_send(fake, head)
    assert recorder.writes == []  # held for the body
    await H11Protocol.stream_send(fake, Body(stream_id=1, data=b"hello"))
    await H11Protocol.stream_send(fake, EndBody(stream_id=1))
    (write,) = [w for w in recorder.writes if w]
    assert write.startswith(b"HTTP/1.1 200 ") and write.endswith(b"\r\n\r\nhello")
    assert fake.connection.our_state is h11.DONE


async def test_a_streamed_response_sends_its_head_at_once() -> None:
    send_head_with_body()
    recorder = Recorder()
    fake = protocol(recorder)
    head = Response(stream_id=1, status_code=200, headers=[(b"content-type", b"text/plain")])
    await H11Protocol.stream_send(fake, head)
    assert len(recorder.writes) == 1 and recorder.writes[0].startswith(b"HTTP/1.1 200 ")
    await H11Protocol.stream_send(fake, Body(stream_id=1, data=b"tick"))
    assert recorder.writes[1].endswith(b"tick\r\n")  # chunked, after the head


async def test_an_empty_sized_body_still_goes_with_its_head() -> None:
    send_head_with_body()
    recorder = Recorder()
    fake = protocol(recorder)
    head = Response(stream_id=1, status_code=204, headers=[(b"content-length", b"0")])
    await H11Protocol.stream_send(fake, head)
    await H11Protocol.stream_send(fake, EndBody(stream_id=1))
    assert len(recorder.writes) == 1 and recorder.writes[0].startswith(b"HTTP/1.1 204 ")
