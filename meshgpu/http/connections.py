"""The HTTP port's bounds on connections, in front of hypercorn's connection handler.

hypercorn bounds each connection (``h11_max_incomplete_size`` for a request's head,
``read_timeout`` between two reads, ``keep_alive_timeout`` between requests) but not how
many are open, nor how long a request's head may take when it comes a byte at a time
(every byte restarts ``read_timeout``: a slow-loris client holds its connection for as
long as it likes). :class:`ConnectionLimits` adds what the TCP API has
(daemon/api.py):

* ``max_connections`` open at most; at the limit a new connection takes the place of an
  idle one (no request in progress: one that never sent a whole request head first, else
  the one idle longest, ``http_idle_evicted``), or is closed at once when every
  connection has a request in progress (``http_connections_refused``);
* ``max_connections_per_client`` from one address (``http_client_limit_refused``, reset
  as soon as accepted); without API tokens the port listens on loopback only, where
  every client is 127.0.0.1 and this is one more global bound;
* a request head must be complete within ``header_timeout_s`` of the connection's start
  or of the end of its last request (nginx's ``client_header_timeout``, Apache's
  ``mod_reqtimeout``): ``http_header_timeouts``.

A new connection's first request goes to hypercorn only once its head is whole and its
body has come (whole, or its first :data:`BODY_AT_GATE` bytes; :func:`judge_request_head`),
as nginx buffers a request before it calls its upstream: a request whose declared body
never comes (a lying ``Content-Length``) costs no hypercorn task, only the gate's look
and a 400 when its client gives up (reset at the head deadline if it does not), and a
``Content-Length`` over the app's ``max_body_bytes`` gets its 413 at the gate.

Refused connections are decided on the address ``accept`` returns and reset there and
then (``SO_LINGER`` 0: an RST, not a FIN), before a stream, a TLS session or a task
exists for them, as the TCP API does (daemon/api.py): the daemon keeps no socket in
``TIME_WAIT`` for a flood of reconnects and the caller learns at once that it was
refused. An admitted connection is reset too as long as the daemon has sent it nothing
(its socket lingers 0 from the accept until the first bytes of an answer, a 400 for
garbage included), whoever closes it: the header timeout, an eviction, hypercorn's own
keep-alive timeout (5 s, before the header timeout), the shutdown; a connection that got
an answer is closed normally, so that the answer is not lost to the reset.

A request is in progress from the moment the app is called (its head is whole) until
the app returns, so a long inference or the dashboard's stream is never the one closed.
The app learns which connection a request came on from the ASGI scope's ``client``
(the peer's host and port, as hypercorn fills it).

:func:`serve` is hypercorn's trio worker (``hypercorn.trio.run.worker_serve``) with the
accept loop of :mod:`meshgpu.accepting` (:meth:`ConnectionLimits.admit` on the accepted
address, then
:meth:`ConnectionLimits.handle` around hypercorn's connection handler); hypercorn's own
entry point has no hook for either. Rejected alternatives: uvicorn's
``limit_concurrency`` (a 503 past a number of connections and tasks) would mean a second
server stack for one setting; a bare cap that refuses at the limit lets idle connections
keep real clients out; refusing inside the connection's task (a stream and a task per
refused connection, then a FIN) cost the daemon more per flooded connection.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app

from meshgpu.accepting import accept_forever, linger_zero
from meshgpu.first_bytes import AnswerBudget, FirstBytesGate, Refused, Verdict

Peer = tuple[str, int]
STALL_GRACE_S = 1.0
"""Seconds of running loop a header timeout waits before it closes a connection: a
keep-alive connection whose next head came during a stall of the loop (a worker thread
holding the GIL) longer than the timeout was closed unanswered (a slow head gains this)."""
AsgiApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


@dataclass(eq=False)
class _Connection:
    scope: trio.CancelScope
    client: str
    last_active: float
    in_flight: int = 0
    requests: int = 0
    changed: trio.Event = field(default_factory=trio.Event)
    """Set (and replaced) when a request begins or ends."""

    def fire(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


class ConnectionLimits:
    """Counts, evicts and times out the HTTP port's connections (see the module text;
    the defaults are :class:`~meshgpu.http.settings.HttpSettings`'s)."""

    def __init__(
        self,
        counters: dict[str, int],
        *,
        max_connections: int,
        max_connections_per_client: int,
        header_timeout_s: float,
        max_body_bytes: int = 64 << 20,
    ) -> None:
        self.counters = counters
        self.max_body_bytes = max_body_bytes
        """Request bodies longer are refused at the gate (the app's own limit)."""
        self.max_connections = max_connections
        self.max_connections_per_client = max_connections_per_client
        self.header_timeout_s = header_timeout_s
        self._connections: dict[Peer, _Connection] = {}
        self._per_client: Counter[str] = Counter()
        self._starting = 0
        self._lingering: dict[int, tuple[str, trio.CancelScope]] = {}
        """Refused connections still read and dropped after their 413 (:class:`_Refusals`),
        oldest first, by a token of each: their client's address and the drain's scope.
        Each counts in its address's share and in ``max_connections``, and is the first
        closed to make room."""
        """Connections admitted whose :meth:`handle` has not begun (a task started, not
        yet run): open, and in their address's budget."""
        self.gate: FirstBytesGate | None = None
        """New plain-HTTP connections until their first request head is whole
        (:func:`serve` builds it)."""

    @property
    def open_connections(self) -> int:
        """Connections open, those still at the gate and those whose handler is about
        to begin included."""
        gated = len(self.gate) if self.gate is not None else 0
        return len(self._connections) + self._starting + gated + len(self._lingering)

    def lingering(self, client: str | None = None) -> int:
        """Refused connections lingering (``client``: from that address)."""
        if client is None:
            return len(self._lingering)
        return sum(1 for owner, _ in self._lingering.values() if owner == client)

    def begin_lingering(self, client: str, scope: trio.CancelScope) -> int:
        """A refused connection from ``client`` lingers (still in its address's share,
        where the gate counted it): a token for :meth:`end_lingering`."""
        token = id(scope)
        self._lingering[token] = (client, scope)
        self._per_client[client] += 1
        return token

    def end_lingering(self, token: int) -> None:
        entry = self._lingering.pop(token, None)
        if entry is not None:
            self._per_client[entry[0]] -= 1
            if self._per_client[entry[0]] <= 0:
                del self._per_client[entry[0]]

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def wrap(self, app: AsgiApp) -> AsgiApp:
        """``app`` that marks its connection busy while a request is in progress."""

        async def bounded(scope: dict[str, Any], receive: Any, send: Any) -> None:
            client = scope.get("client") if scope.get("type") == "http" else None
            connection = self._connections.get((client[0], client[1])) if client else None
            if connection is None:
                await app(scope, receive, send)
                return
            connection.in_flight += 1
            connection.requests += 1
            connection.fire()
            try:
                await app(scope, receive, send)
            finally:
                connection.in_flight -= 1
                connection.last_active = trio.current_time()
                connection.fire()

        return bounded

    def admit(self, client: str) -> bool:
        """Whether a new connection from address ``client`` may open (room made if
        needed); a refusal is counted (the caller resets the connection)."""
        self._count("http_connections")
        if self._per_client[client] >= self.max_connections_per_client:
            self._count("http_client_limit_refused")
            return False
        if self.open_connections >= self.max_connections and not self._make_room():
            self._count("http_connections_refused")
            return False
        return True

    def starting(self, address: Any, budgeted: bool) -> None:
        """Invoked as an admitted connection's handler task is started (by the accept
        loop for TLS, by the gate once a first head is whole; ``budgeted``: in its
        address's budget since :meth:`hold`): it counts as open from then until
        :meth:`handle` ends. Counted only from :meth:`handle`'s start, the connections
        admitted in one step were not, and the port went past ``max_connections`` (and
        an address past its share) by as many."""
        self._starting += 1
        if not budgeted:
            peer = _peer_of(address)
            self._per_client[peer[0] if peer else ""] += 1

    async def handle(
        self,
        stream: trio.abc.Stream,
        serve_one: Callable[[trio.abc.Stream], Awaitable[None]],
        peer: Peer | None,
        head_whole: bool = False,
    ) -> None:
        """Serve one connection from ``peer``, counted since :meth:`starting`, with
        ``serve_one`` inside the bounds (``head_whole``: it comes from the gate, which
        saw its first request head whole)."""
        self._starting -= 1
        client = peer[0] if peer else ""
        connection = _Connection(trio.CancelScope(), client, trio.current_time())
        key: Peer = peer or ("", id(connection))
        self._connections[key] = connection
        try:
            with connection.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._header_deadline, connection, head_whole)
                    await serve_one(stream)
                    nursery.cancel_scope.cancel()
        finally:
            self._forget(key, connection)
            await _close(stream)

    async def _header_deadline(self, connection: _Connection, head_whole: bool) -> None:
        """Close the connection when no request head arrives within the timeout of its
        start or of the end of its last request. ``head_whole``: it comes from the gate,
        which timed its first head and saw it whole; only later heads are timed here.

        Timing that first head again reset connections whose client had done its part:
        after a loop stall longer than the timeout (a worker thread holding the GIL at
        load 30, right after ``models add``), the deadline fired in the same step that
        woke hypercorn to read the head, before the app was called."""
        timed = not head_whole
        while True:
            seen = connection.requests
            with trio.move_on_after(self.header_timeout_s if timed else math.inf):
                while connection.requests == seen:
                    await connection.changed.wait()
            timed = True
            if connection.requests == seen:
                # A loop stall past the timeout wakes this deadline in the step that
                # wakes hypercorn for a head that came meanwhile: judged again after a
                # grace of running loop, in which what was ready had its turn.
                with trio.move_on_after(STALL_GRACE_S):
                    while connection.requests == seen:
                        await connection.changed.wait()
            if connection.requests == seen:
                self._count("http_header_timeouts")
                connection.scope.cancel()
                return
            while connection.in_flight:
                await connection.changed.wait()

    def hold(self, sock: socket.socket, address: Any) -> None:
        """Invoked by the accept loop for an admitted plain-HTTP connection: it waits at
        the gate (counted in its address's budget) until its first request head is
        whole."""
        assert self.gate is not None
        peer = _peer_of(address)
        self._per_client[peer[0] if peer else ""] += 1
        self.gate.hold(sock, address)

    def released(self, address: Any, outcome: str) -> None:
        """A connection left the gate other than admitted (``outcome``, FirstBytesGate)."""
        peer = _peer_of(address)
        client = peer[0] if peer else ""
        self._per_client[client] -= 1
        if self._per_client[client] <= 0:
            del self._per_client[client]
        if outcome == "timed_out":
            self._count("http_header_timeouts")
        elif outcome == "silent":
            self._count("http_silent_closed")
        elif outcome == "evicted":
            self._count("http_idle_evicted")
        elif outcome == "refused":
            self._count("http_bad_requests")

    def _make_room(self) -> bool:
        if self._lingering:
            token, (_, scope) = next(iter(self._lingering.items()))
            scope.cancel()
            self.end_lingering(token)
            self._count("http_lingering_evicted")
            return True
        if self.gate is not None and self.gate.evict_oldest():
            return True
        idle = [c for c in self._connections.items() if c[1].in_flight == 0]
        if not idle:
            return False
        key, oldest = min(idle, key=lambda item: (item[1].requests > 0, item[1].last_active))
        self._forget(key, oldest)
        oldest.scope.cancel()
        self._count("http_idle_evicted")
        return True

    def _forget(self, key: Peer, connection: _Connection) -> None:
        if self._connections.get(key) is connection:
            del self._connections[key]
            self._per_client[connection.client] -= 1
            if self._per_client[connection.client] <= 0:
                del self._per_client[connection.client]


_TOKEN = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
"""The bytes of an HTTP token (RFC 9110, 5.6.2): what a request's method is made of."""
_LONGEST_METHOD = 32
_HEAD_ENDS = (b"\n\r\n", b"\n\n")
"""What ends a request's head (h11 takes a bare LF as a line's end too)."""
BODY_AT_GATE = 16 * 1024
"""Bytes of a request's body the gate waits for (or the whole body, if shorter) before
it admits the request: well inside the receive window a new connection starts with, so
a body longer than this is admitted while the peer can still send."""


def judge_request_head(
    limit: int, max_body_bytes: int = 64 << 20
) -> Callable[[bytes, bool], tuple[Verdict, str]]:
    """The gate's judge of a plain-HTTP connection's first bytes: admitted once the
    first request's head is whole (hypercorn then parses it, from the first byte) and
    its body has come, whole or its first :data:`BODY_AT_GATE` bytes; refused at once
    when its first bytes cannot begin a request line (a method token, then a space),
    when ``limit`` bytes hold no whole head (hypercorn's ``h11_max_incomplete_size``),
    or when its ``Content-Length`` is over ``max_body_bytes`` (a 413, what the app would
    answer). A request whose peer closes before its body came is refused (a 400), one
    whose body is still missing at the gate's deadline is reset. The gate must peek
    ``limit + BODY_AT_GATE`` bytes. Refusals say their status first (``"413 ..."``,
    :func:`_refuse_request`)."""

    def judge(peeked: bytes, closed: bool) -> tuple[Verdict, str]:
        space = peeked.find(b" ", 0, _LONGEST_METHOD + 1)
        method = peeked[: space if space >= 0 else _LONGEST_METHOD + 1]
        if space == 0 or len(method) > _LONGEST_METHOD or method.translate(None, _TOKEN):
            return Verdict.REFUSE, "400 not an HTTP request line"
        ends = [at + len(end) for end in _HEAD_ENDS if (at := peeked.find(end, 0, limit)) >= 0]
        if not ends:
            if len(peeked) >= limit:
                return Verdict.REFUSE, f"400 a request head longer than {limit} bytes"
            return Verdict.WAIT, "400 closed before its request head was whole"
        head_end = min(ends)
        return _judge_body(peeked[:head_end], memoryview(peeked)[head_end:], max_body_bytes)

    return judge


def _judge_body(head: bytes, body: memoryview, max_body_bytes: int) -> tuple[Verdict, str]:
    """Whether a whole request head's body has come (RFC 9112, 6: a ``Content-Length``
    or a chunked ``Transfer-Encoding``; neither, no body). Where the head is one h11
    refuses (two lengths, a length that is not a number), or the client waits for a
    ``100 Continue`` before it sends its body, the request is admitted: hypercorn answers
    it as it would have."""
    lengths: list[bytes] = []
    chunked = expects_continue = False
    for line in head.split(b"\n")[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        name = name.strip().lower()
        if name == b"content-length":
            lengths.append(value.strip())
        elif name == b"transfer-encoding":
            chunked = True
        elif name == b"expect":
            expects_continue = value.strip().lower() == b"100-continue"
    if expects_continue:
        return Verdict.ADMIT, ""
    if chunked:
        if len(body) >= BODY_AT_GATE or _chunked_body_whole(body):
            return Verdict.ADMIT, ""
        return Verdict.WAIT, "400 closed before its chunked body was whole"
    if len(lengths) != 1 or not lengths[0].isdigit():
        return Verdict.ADMIT, ""
    length = int(lengths[0])
    if length > max_body_bytes:
        return Verdict.REFUSE, (
            f"413 the body is {length} bytes, more than this node accepts ({max_body_bytes})"
        )
    if len(body) >= min(length, BODY_AT_GATE):
        return Verdict.ADMIT, ""
    return Verdict.WAIT, f"400 closed after {len(body)} of its body's {length} bytes"


_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,20}")
"""A chunk's size as h11 reads it (``h11._abnf.chunk_size``): hex digits only."""


def _chunked_body_whole(body: memoryview) -> bool:
    """Whether ``body`` holds a whole chunked body (RFC 9112, 7.1: chunks of a hex size,
    a last chunk of size 0, trailer lines, an empty line); True too where it cannot be
    read as one (h11 refuses it)."""
    data = body.tobytes()
    at = 0
    while True:
        line_end = data.find(b"\r\n", at)
        if line_end < 0:
            return False
        size_text = data[at:line_end].split(b";", 1)[0].rstrip(b" \t")
        if not _CHUNK_SIZE.fullmatch(size_text):
            # Not h11's chunk size. int() took "-6" too, which moved ``at`` back to
            # where it was: the gate spun on the event loop for ever.
            return True
        size = int(size_text, 16)
        if size == 0:
            return data.startswith(b"\r\n", line_end + 2) or data.find(b"\r\n\r\n", line_end) >= 0
        at = line_end + 2 + size + 2
        if at > len(data):
            return False


LINGER_S = 10.0
"""Seconds a refused connection's unread bytes are read and dropped after its answer
(nginx's ``lingering_time``, 30 s): a client still sending a body the gate refused (a
``Content-Length`` over the limit, whose client sends the body before it reads) reads
its 413 instead of a reset."""
MAX_LINGERING = 16
"""Refused connections lingering at once; past this one is closed at once (its client,
if still sending, sees a reset)."""
MAX_LINGERING_PER_CLIENT = 2
"""Refused connections lingering at once from one address: one client streaming bodies
over the limit on many connections kept all :data:`MAX_LINGERING` busy for
:data:`LINGER_S` each."""
ANSWERED_400_PER_S = 4
"""400s answered per address and second at most; past them a bad request is reset
unanswered (``http_refusals_unanswered``). Without API tokens every client of the port
is 127.0.0.1: a tool that floods it with garbage costs the others their 400s for that
second, not their connections."""
LINGER_MAX_BYTES = 128 << 20
"""Most bytes a lingering connection is read for: its declared body (and the head the
gate saw), up to this; past them it is closed (a reset, if its client still sends). A
client streaming at whatever rate it likes was read for the whole :data:`LINGER_S`."""


class _Refusals:
    """The gate's ``refused`` hook: the answer, then for a 413 a lingering close (RFC
    9112, 9.6: a server that closes while its client still sends may lose its answer
    to the reset that the unread bytes cause). The answer goes out with a FIN after it
    (the write side is shut), then what the client still sends is read and dropped
    until it closes, for :data:`LINGER_S` at most, its declared body's bytes at most
    (:data:`LINGER_MAX_BYTES` at most), by at most :data:`MAX_LINGERING` tasks,
    :data:`MAX_LINGERING_PER_CLIENT` of them for one address. A lingering connection
    counts in its address's share and in ``max_connections`` (the first closed to make
    room: ``ConnectionLimits``). A 400 is closed at once, as before: its client sent
    garbage, or closed already (a truncated body), and a barrage of them must cost no
    task; past :data:`ANSWERED_400_PER_S` a second from one address it is reset
    unanswered (``http_refusals_unanswered``), as the TCP API resets a flood of bad
    greetings (daemon/api.py). A 413 is always answered (a real client's body over the
    limit)."""

    def __init__(self, nursery: trio.Nursery, limits: ConnectionLimits) -> None:
        self.nursery = nursery
        self.limits = limits
        self.answers = AnswerBudget(ANSWERED_400_PER_S)

    def refuse(self, sock: socket.socket, address: Any, peeked: bytes, why: str) -> Refused:
        """The answer, if any; :attr:`Refused.KEPT` if ``sock`` lingers (the gate
        leaves it to this)."""
        peer = _peer_of(address)
        client = peer[0] if peer else ""
        too_large = why.startswith("413")
        if not too_large and not self.answers.may_answer(client, trio.current_time()):
            # it lingers 0 from the listener: the gate's close is an RST, unread
            self.limits._count("http_refusals_unanswered")
            return Refused.RESET
        _refuse_request(sock, address, peeked, why)
        if (
            not too_large
            or self.limits.lingering() >= MAX_LINGERING
            or self.limits.lingering(client) >= MAX_LINGERING_PER_CLIENT
        ):
            return Refused.ANSWERED  # a 400's client is not sending a body still
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return Refused.ANSWERED  # gone already
        scope = trio.CancelScope(deadline=trio.current_time() + LINGER_S)
        token = self.limits.begin_lingering(client, scope)
        budget = min(len(peeked) + _declared_length(peeked), LINGER_MAX_BYTES)
        self.nursery.start_soon(self._linger, sock, scope, token, budget)
        return Refused.KEPT

    async def _linger(
        self, sock: socket.socket, scope: trio.CancelScope, token: int, budget: int
    ) -> None:
        lingering = trio.socket.from_stdlib_socket(sock)
        try:
            with scope, contextlib.suppress(OSError):
                while budget > 0 and (read := len(await lingering.recv(1 << 16))):
                    budget -= read
        finally:
            self.limits.end_lingering(token)
            lingering.close()


def _declared_length(peeked: bytes) -> int:
    """The ``Content-Length`` of the request head at the start of ``peeked`` (0 without
    one that reads as a number)."""
    head = peeked.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    for line in head.split(b"\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"content-length" and value.strip().isdigit():
            return int(value.strip())
    return 0


def _refuse_request(sock: socket.socket, address: Any, peeked: bytes, why: str) -> None:
    """Tell a refused plain-HTTP connection why, in one non-blocking send (the status
    the judge put first, 400 or 413, and ``Connection: close``, as hypercorn answers a
    request h11 cannot parse), in the app's error shape (``{"error": ...}``, the Open
    Inference Protocol's): a client refused at the gate read text where the same 413
    from the app, after an ``Expect: 100-continue``, was JSON."""
    status, _, message = why.partition(" ")
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Bad Request')}\r\n".encode()
        + b"content-type: application/json\r\n"
        b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    with contextlib.suppress(OSError):
        sock.send(head + body)
    linger_zero(sock, False)  # a FIN: the answer is not lost to a reset


_REASONS = {"400": "Bad Request", "413": "Content Too Large"}


def _peer_of(address: Any) -> Peer | None:
    """``accept``'s address as (host, port) (None for a socket without one)."""
    if isinstance(address, tuple) and len(address) >= 2:
        return (str(address[0]), int(address[1]))
    return None


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    transport = getattr(stream, "transport_stream", stream)  # an SSLStream's socket
    return getattr(transport, "socket", None)


class _Server(TCPServer):
    """hypercorn's handler of one connection, whose close stays an RST until the first
    bytes of an answer go out (the socket lingers 0 from the accept; see the module
    text).

    A write that meets the close is the peer gone, not an error: when a client closes
    while its answer is being written (one that sent a body shorter than its
    ``Content-Length``, then gave up), hypercorn's close (``send_eof``) and the answer's
    write meet on the stream, and the write's ``trio.BusyResourceError`` reached the
    app as "Error in ASGI Framework" with a traceback; it is handled as hypercorn
    handles a broken stream (the connection is closed)."""

    answered = False

    async def protocol_send(self, event: Event) -> None:
        if not self.answered and isinstance(event, RawData):
            self.answered = True
            linger_zero(_socket_of(self.stream), False)
        try:
            await super().protocol_send(event)
        except trio.BusyResourceError:
            await self.protocol.handle(Closed())


async def _accept_forever(
    listener: trio.SocketListener,
    tls: Any,
    limits: ConnectionLimits,
    handler: Callable[[trio.abc.Stream, Peer | None], Awaitable[None]],
    nursery: trio.Nursery,
) -> None:
    """:func:`meshgpu.accepting.accept_forever` with the limits' admission; an admitted
    plain-HTTP connection waits at the limits' gate for its first request head
    (:func:`serve`), a TLS one goes to its handler at once; either lingers 0 (from the
    listener) until it is answered (:class:`_Server`)."""

    def admit(address: Any) -> bool:
        peer = _peer_of(address)
        return limits.admit(peer[0] if peer else "")

    def admitted(sock: socket.socket, address: Any) -> None:
        if tls is None and limits.gate is not None:
            limits.hold(sock, address)
            return
        stream: trio.abc.Stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        if tls is not None:
            stream = trio.SSLStream(stream, tls, server_side=True, https_compatible=True)
        limits.starting(address, budgeted=False)
        nursery.start_soon(handler, stream, _peer_of(address))

    await accept_forever(listener.socket, admit, admitted)


async def _close(stream: trio.abc.Stream) -> None:
    with trio.CancelScope(shield=True), contextlib.suppress(trio.BrokenResourceError, OSError):
        await stream.aclose()


async def serve(
    app: AsgiApp,
    config: Config,
    limits: ConnectionLimits,
    *,
    shutdown_trigger: Callable[[], Awaitable[Any]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """hypercorn's trio worker serving ``app`` on ``config.bind``, each connection inside
    ``limits``; ``task_status`` gets the URLs listened on."""
    wrapped = wrap_app(cast(Any, limits.wrap(app)), config.wsgi_max_body_size, "asgi")
    state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            sockets = config.create_sockets()
            listeners: list[tuple[trio.SocketListener, Any]] = []
            urls = []
            for scheme, group in (
                ("https", sockets.secure_sockets),
                ("http", sockets.insecure_sockets),
            ):
                for sock in group:
                    sock.listen(config.backlog)
                    tls = config.create_ssl_context() if scheme == "https" else None
                    listeners.append(
                        (trio.SocketListener(trio.socket.from_stdlib_socket(sock)), tls)
                    )
                    urls.append(f"{scheme}://{repr_socket_addr(sock.family, sock.getsockname())}")

            async def one(
                stream: trio.abc.Stream, peer: Peer | None, head_whole: bool = False
            ) -> None:
                connection_state = ConnectionState(state.copy())
                await limits.handle(
                    stream,
                    lambda s: _Server(wrapped, config, context, connection_state, s),  # type: ignore[arg-type]
                    peer,
                    head_whole,
                )

            def admitted(sock: socket.socket, address: Any) -> None:
                limits.starting(address, budgeted=True)
                stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
                server_nursery.start_soon(one, stream, _peer_of(address), True)

            if any(tls is None for _, tls in listeners):
                limits.gate = FirstBytesGate(
                    judge_request_head(config.h11_max_incomplete_size, limits.max_body_bytes),
                    peek_bytes=config.h11_max_incomplete_size + BODY_AT_GATE,
                    timeout_s=limits.header_timeout_s,
                    # hypercorn closes a connection that sends nothing for its
                    # keep-alive timeout (5 s) before the head deadline would
                    silent_timeout_s=config.keep_alive_timeout,
                    admitted=admitted,
                    refused=_Refusals(server_nursery, limits).refuse,
                    released=limits.released,
                )
                server_nursery.start_soon(limits.gate.run)

            task_status.started(urls)
            async with trio.open_nursery() as accepting:
                for listener, tls in listeners:
                    accepting.start_soon(
                        _accept_forever, listener, tls, limits, one, server_nursery
                    )
                await shutdown_trigger()
                accepting.cancel_scope.cancel()
            await context.terminated.set()
            server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
