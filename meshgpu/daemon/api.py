"""The answering side of the TCP API: one task per request, errors as answers.

The daemon registers one async handler per ``op``; each handler gets the request and a
:class:`Responder`, may send partial responses (a stream), and returns the fields of its
final response. What reaches the peer:

* a handler's :class:`~meshgpu.errors.MeshError` becomes ``{"ok": false, "error":
  message, "kind": class name}``; the connection stays open;
* any other exception is a bug: it is logged with its traceback, counted
  (``api_internal_errors``) and answered as an internal error; the daemon goes on;
* a frame that cannot be read (oversized, garbage, wrong key, replayed) is answered
  with one connection-level error (no ``id``) if the connection still works, counted
  (``frames_rejected``), and the connection is closed; other connections are untouched.

Connections are bounded, as Consul bounds its RPC port (``rpc_max_conns_per_client``,
``rpc_handshake_timeout``):

* one address holds at most ``max_connections_per_client`` connections; another one from
  it is reset as soon as it is accepted (``api_client_limit_refused``), before any
  state is built for it (no stream object, no task: :meth:`ApiServer.serve_listeners`
  decides on the address ``accept`` returns), so one host's flood costs an accept and
  a reset per connection;
* a new connection must begin its first frame (a length and an envelope's magic) within
  ``handshake_timeout_s`` or it is reset (``api_handshake_timeouts``): silent and
  trickling strangers go in seconds, not after the idle timeout; until it has, it waits
  at a :class:`~meshgpu.first_bytes.FirstBytesGate` with no stream and no task (a
  length over the limit or a bad magic is refused there, ``frames_rejected``, and told
  why in a sealed frame at most ``ANSWERED_REFUSALS_PER_S`` times a second per address,
  reset unanswered past that, ``api_refusals_unanswered``);
* one with no request in flight and no complete frame for ``idle_timeout_s`` is closed
  (``api_idle_closed``; a frame sent one byte at a time does not count as activity
  until it is whole);
* with ``max_connections`` open, a new one takes the place of an idle one
  (``api_idle_evicted``: one that never began a frame first, else the one idle
  longest), or is reset at once when every open connection has a request in flight
  (``api_connections_refused``).

Refused connections and strangers that never spoke are reset (``SO_LINGER`` 0: an RST,
not a FIN), as HAProxy's ``tcp-request connection reject`` does: the daemon keeps no
socket in ``TIME_WAIT`` for them (the side that closes first would, for a minute: a
hundred thousand sockets per minute under a flood of reconnects), and the other end
learns at once that it was refused. Connections that did speak are closed normally.

So idle or trickling connections, however many and from however many addresses, cannot
keep a real client out, cannot hold the event loop (a daemon that misses its 100 ms
probe deadlines is declared dead by its peers), and the open files they hold stay
bounded. A client or peer whose idle connection was closed connects again on its next
call (the connection pool and the client do).

Request shapes are in docs/client-api.md.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from meshgpu.accepting import accept_forever, linger_zero, reset
from meshgpu.daemon.auth import Authenticator, Channel, Sealer
from meshgpu.daemon.auth.handshake import MAGIC
from meshgpu.daemon.framing import DEFAULT_MAX_FRAME_BYTES, LENGTH, FrameStream, pack
from meshgpu.daemon.key_drops import KeyDrops
from meshgpu.errors import (
    AuthenticationError,
    DecodeError,
    FrameTooLargeError,
    IncompatiblePeerError,
    MeshError,
    RemoteProtocolError,
)
from meshgpu.first_bytes import AnswerBudget, FirstBytesGate, Refused, Verdict

logger = logging.getLogger(__name__)

Message = dict[str, Any]


class Responder:
    """Sends the responses of one request (serialised with the connection's other sends)."""

    def __init__(self, frames: FrameStream, lock: trio.Lock, request_id: int) -> None:
        self._frames = frames
        self._lock = lock
        self.request_id = request_id
        self.peer: str | None = frames.peer_sender
        self.key_id: bytes | None = frames.peer_key_id
        """The key that sealed the request (empty: none, see FrameStream)."""

    async def partial(self, fields: Message) -> None:
        """One response of a stream (the final one is the handler's return value)."""
        await self._send({**fields, "ok": True, "more": True})

    async def partials(self, many: list[Message]) -> None:
        """Several responses of a stream, written together (one send for a burst)."""
        async with self._lock:
            await self._frames.send_many(
                [{**fields, "id": self.request_id, "ok": True, "more": True} for fields in many]
            )

    async def _send(self, message: Message) -> None:
        async with self._lock:
            await self._frames.send({"id": self.request_id, **message})


Handler = Callable[[Message, Responder], Awaitable[Message]]

DEFAULT_MAX_CONNECTIONS = 512
"""Open API connections at most (below the usual 1,024 open-file limit of a process)."""
DEFAULT_IDLE_TIMEOUT_S = 120.0
"""Seconds a connection may sit without a request in flight or a complete frame."""
DEFAULT_MAX_CONNECTIONS_PER_CLIENT = 100
"""Open API connections from one address at most (Consul's ``rpc_max_conns_per_client``
default): a daemon peer uses one pooled connection plus one per transfer in flight, a
client one per session."""
DEFAULT_HANDSHAKE_TIMEOUT_S = 5.0
"""Seconds a new connection has to begin its first frame (Consul's
``rpc_handshake_timeout``); a frame larger than a range still has the idle timeout to
arrive whole (a slow link)."""

FIRST_BYTES = LENGTH.size + len(MAGIC)
"""Bytes of a new connection judged at the gate: a frame's length and its envelope's magic."""
WARNING_INTERVAL_S = 10.0
"""Seconds between two warnings about unreadable frames from one address."""
ANSWERED_REFUSALS_PER_S = 4
"""Refused greetings from one address told why (a sealed frame) per second at most; the
others are reset unanswered (``api_refusals_unanswered``)."""


@dataclass(eq=False)
class _Connection:
    scope: trio.CancelScope
    last_active: float
    """When the last complete frame arrived or the last request was answered."""
    client: str
    """The address it comes from (``max_connections_per_client``)."""
    in_flight: int = 0
    began: bool = False
    """Its first frame has begun (a length and an envelope's magic)."""
    reset: bool = False
    """Close it with an RST (it never spoke)."""


class ApiServer:
    """Serves requests on accepted TCP streams with the registered ``handlers``."""

    def __init__(
        self,
        handlers: Mapping[str, Handler],
        authenticator: Authenticator,
        counters: dict[str, int],
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        max_connections_per_client: int = DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
        handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT_S,
    ) -> None:
        self.handlers = handlers
        self.authenticator = authenticator
        self.counters = counters
        self.max_frame_bytes = max_frame_bytes
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.max_connections_per_client = max_connections_per_client
        self.handshake_timeout_s = handshake_timeout_s
        self._connections: set[_Connection] = set()
        self._per_client: Counter[str] = Counter()
        self._warned: dict[str, float] = {}
        self._answers = AnswerBudget(ANSWERED_REFUSALS_PER_S)
        """Refused greetings told why, per address and second."""
        self._key_drops = KeyDrops(trio.current_time)
        """Connections dropped for a wrong mesh key: written about once per address, then
        summed up every 10 minutes (a neighbouring mesh retries every 12-15 s forever)."""
        self.on_reject: Callable[[], None] | None = None
        """Called after a connection was dropped for an unreadable frame."""
        self._gate: FirstBytesGate | None = None
        """New connections until their first frame begins (:meth:`serve_listeners`)."""
        self._refusals: Sealer | None = None
        """The one sending session of every refusal at the gate (see
        :meth:`_refuse_first_bytes`)."""

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    @property
    def open_connections(self) -> int:
        """Connections open, those still at the gate included."""
        return len(self._connections) + (len(self._gate) if self._gate is not None else 0)

    def _make_room(self) -> bool:
        """At the limit: reset the stranger at the gate longest, or close the connection
        idle longest; False if none is idle."""
        if self._gate is not None and self._gate.evict_oldest():
            return True
        idle = [c for c in self._connections if c.in_flight == 0]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: (c.began, c.last_active))
        self._forget(oldest)
        oldest.scope.cancel()
        self._count("api_idle_evicted")
        return True

    def _may_warn(self, client: str) -> bool:
        """At most one warning per address per ``WARNING_INTERVAL_S`` (a flood of
        garbage is counted, not written to the log line by line)."""
        now = trio.current_time()
        if now - self._warned.get(client, -WARNING_INTERVAL_S) < WARNING_INTERVAL_S:
            return False
        if len(self._warned) > 1024:
            self._warned.clear()
        self._warned[client] = now
        return True

    def _forget(self, connection: _Connection) -> None:
        if connection in self._connections:
            self._connections.discard(connection)
            self._per_client[connection.client] -= 1
            if self._per_client[connection.client] <= 0:
                del self._per_client[connection.client]

    async def _close_when_idle(self, connection: _Connection, frames: FrameStream) -> None:
        with trio.move_on_after(min(self.handshake_timeout_s, self.idle_timeout_s)):
            await frames.header_seen.wait()
        if not frames.header_seen.is_set():
            silent_too_long = self.idle_timeout_s <= self.handshake_timeout_s
            self._count("api_idle_closed" if silent_too_long else "api_handshake_timeouts")
            connection.reset = True
            connection.scope.cancel()
            return
        connection.began = True
        while True:
            await trio.sleep_until(connection.last_active + self.idle_timeout_s)
            if connection.in_flight:
                await trio.sleep(min(1.0, self.idle_timeout_s))
            elif trio.current_time() - connection.last_active >= self.idle_timeout_s:
                self._count("api_idle_closed")
                connection.scope.cancel()
                return

    async def serve_listeners(
        self,
        listeners: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections on ``listeners`` and serve each admitted one, forever.

        What :func:`trio.serve_listeners` does, with the admission decided on the
        address ``accept`` returns (a refused connection is reset there and then,
        before a stream or a task exists for it), and the first frame's beginning
        checked before a connection gets its stream and task (:class:`FirstBytesGate`:
        strangers that stay silent or send something else never get either).
        """
        async with trio.open_nursery() as nursery:
            self._gate = FirstBytesGate(
                self._judge_first_bytes,
                peek_bytes=FIRST_BYTES,
                timeout_s=min(self.handshake_timeout_s, self.idle_timeout_s),
                admitted=lambda sock, address: nursery.start_soon(
                    self._serve_admitted,
                    _spoken_stream(sock),
                    _client_of(address),
                    True,
                ),
                refused=self._refuse_first_bytes,
                released=self._release_held,
            )
            nursery.start_soon(self._gate.run)
            for listener in listeners:
                nursery.start_soon(self._accept_forever, listener)
            task_status.started()

    async def _accept_forever(self, listener: trio.SocketListener) -> None:
        def admit(address: Any) -> bool:
            self._count("api_connections")
            return self._admit(_client_of(address))

        def hold(sock: socket.socket, address: Any) -> None:
            self._per_client[_client_of(address)] += 1
            assert self._gate is not None
            self._gate.hold(sock, address)

        await accept_forever(listener.socket, admit, hold)

    def _judge_first_bytes(self, peeked: bytes, closed: bool) -> tuple[Verdict, str]:
        """A new connection's first bytes: a frame's length and its envelope's magic
        (what FrameStream checks before a frame counts as begun)."""
        if len(peeked) < LENGTH.size:
            return Verdict.WAIT, "connection closed mid-frame (a truncated length)"
        (length,) = LENGTH.unpack_from(peeked)
        if length > self.max_frame_bytes:
            return Verdict.REFUSE, (
                f"peer announced a {length}-byte frame, the limit is {self.max_frame_bytes} "
                "(is something other than a meshgpu peer talking to this port?)"
            )
        want = min(length, len(MAGIC))
        if len(peeked) < LENGTH.size + want:
            return Verdict.WAIT, f"connection closed mid-frame (a {length}-byte frame)"
        if want == len(MAGIC) and peeked[LENGTH.size : LENGTH.size + want] != MAGIC:
            return Verdict.REFUSE, (
                f"a {length}-byte frame that is not a meshgpu envelope (bad magic); "
                "is something other than a meshgpu peer talking to this port?"
            )
        return Verdict.ADMIT, ""

    def _refuse_first_bytes(
        self, sock: socket.socket, address: Any, peeked: bytes, why: str
    ) -> Refused:
        """A connection whose first bytes are not a meshgpu frame: counted, warned about
        (once per address per interval) and told why in one frame, as a connection
        whose frame fails later is (:meth:`_serve`), or past its address's answers of
        the second (:data:`ANSWERED_REFUSALS_PER_S`) reset unanswered: the seal and the
        send are most of what a refused greeting costs. A tool that speaks the wrong
        protocol to the port is told why on its first tries; a flood of garbage is
        reset."""
        self._count("frames_rejected")
        if self.on_reject is not None:
            self.on_reject()
        client = _client_of(address)
        if self._may_warn(client):
            logger.warning("dropping connection from %s: %s", _peer_of(address), why)
        if not self._answers.may_answer(client, trio.current_time()):
            # Past the address's answers of this second: reset unanswered (it lingers 0
            # from the listener), without sealing and sending a frame nobody reads.
            self._count("api_refusals_unanswered")
            return Refused.RESET
        # One session seals every refusal at the gate (a new counter each), not a fresh
        # random session per stranger: the session's random bytes were a getrandom call
        # per refusal. A peer that is refused twice sees two counters of one session,
        # each new to its replay window, as it would from one connection's frames. The
        # sealed bytes are never reused: a peer refused twice the same way (a client
        # retrying a frame over the limit) would see the second as a replay, and a
        # cached refusal would go stale after max_clock_skew.
        if self._refusals is None:
            self._refusals = self.authenticator.new_session(Channel.FRAME)
        body = self._refusals.seal(pack({"ok": False, "error": why, "kind": _error_kind(why)}))
        with contextlib.suppress(OSError):
            sock.send(LENGTH.pack(len(body)) + body)
        linger_zero(sock, False)  # a FIN: the refusal is not lost to a reset
        return Refused.ANSWERED

    def _release_held(self, address: Any, outcome: str) -> None:
        """A connection left the gate other than admitted (``outcome``, FirstBytesGate)."""
        client = _client_of(address)
        self._per_client[client] -= 1
        if self._per_client[client] <= 0:
            del self._per_client[client]
        if outcome == "timed_out":
            silent_too_long = self.idle_timeout_s <= self.handshake_timeout_s
            self._count("api_idle_closed" if silent_too_long else "api_handshake_timeouts")
        elif outcome == "evicted":
            self._count("api_idle_evicted")

    def _admit(self, client: str) -> bool:
        """Whether a new connection from ``client`` may open (room made if needed);
        a refusal is counted."""
        if self._per_client[client] >= self.max_connections_per_client:
            self._count("api_client_limit_refused")
            return False
        if self.open_connections >= self.max_connections and not self._make_room():
            self._count("api_connections_refused")
            return False
        return True

    async def serve(self, stream: trio.SocketStream) -> None:
        """Handle one connection until the peer closes it, sends something unreadable,
        stays idle too long or is evicted for a newer one (for a caller that accepted
        it; :meth:`serve_listeners` refuses connections before they become streams)."""
        self._count("api_connections")
        client = _client_address(stream)
        if not self._admit(client):
            reset(stream.socket)
            return
        await self._serve_admitted(stream, client)

    async def _serve_admitted(
        self, stream: trio.SocketStream, client: str, began: bool = False
    ) -> None:
        """Serve one admitted connection (``began``: it comes from the gate, counted
        in its address's budget already, its first frame begun)."""
        connection = _Connection(trio.CancelScope(), trio.current_time(), client, began=began)
        self._connections.add(connection)
        if not began:
            self._per_client[client] += 1
        frames = FrameStream(
            stream, self.authenticator, max_frame_bytes=self.max_frame_bytes, answering=True
        )
        lock = trio.Lock()
        try:
            with connection.scope:
                await self._serve(frames, lock, stream, connection)
        finally:
            self._forget(connection)
            if connection.reset:
                reset(stream.socket)
            with trio.CancelScope(shield=True):
                await frames.aclose()

    async def _serve(
        self,
        frames: FrameStream,
        lock: trio.Lock,
        stream: trio.SocketStream,
        connection: _Connection,
    ) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._close_when_idle, connection, frames)
            while True:
                try:
                    message = await frames.receive()
                except RemoteProtocolError as error:
                    self._count("frames_rejected")
                    if self.on_reject is not None:
                        self.on_reject()
                    if isinstance(error, AuthenticationError) and error.reason == "bad_tag":
                        self._key_drops.dropped(connection.client, _peer(stream), error)
                    elif self._may_warn(connection.client):
                        logger.warning("dropping connection from %s: %s", _peer(stream), error)
                    if isinstance(error, IncompatiblePeerError):
                        if error.reason != "refused_by_peer":
                            await _try_refuse(frames, lock, error)
                        break
                    await _try_send(
                        frames,
                        lock,
                        {"ok": False, "error": str(error), "kind": type(error).__name__},
                    )
                    break
                if message is None:
                    break
                request_id = message.get("id") if isinstance(message, dict) else None
                if not isinstance(request_id, int) or not isinstance(message.get("op"), str):
                    self._count("frames_rejected")
                    await _try_send(
                        frames,
                        lock,
                        {
                            "ok": False,
                            "error": "a request must be a map with an integer 'id' and a "
                            "string 'op' (see docs/client-api.md)",
                            "kind": "DecodeError",
                        },
                    )
                    break
                connection.last_active = trio.current_time()
                connection.in_flight += 1
                nursery.start_soon(self._answer, frames, lock, message, connection)
            nursery.cancel_scope.cancel()  # the peer is gone: stop its streams

    async def _answer(
        self, frames: FrameStream, lock: trio.Lock, request: Message, connection: _Connection
    ) -> None:
        try:
            await self._answer_one(frames, lock, request)
        finally:
            connection.in_flight -= 1
            connection.last_active = trio.current_time()

    async def _answer_one(self, frames: FrameStream, lock: trio.Lock, request: Message) -> None:
        responder = Responder(frames, lock, request["id"])
        handler = self.handlers.get(request["op"])
        try:
            if handler is None:
                raise RemoteProtocolError(
                    f"unknown op {request['op']!r}; known ops: {', '.join(sorted(self.handlers))}"
                )
            result = await handler(request, responder)
            response: Message = {**result, "ok": True, "more": False}
        except MeshError as error:
            response = {
                **error.answer_fields(),
                "ok": False,
                "error": str(error),
                "kind": type(error).__name__,
            }
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the peer went away mid-stream
        except Exception as error:
            self._count("api_internal_errors")
            logger.exception("internal error answering %r", request.get("op"))
            response = {"ok": False, "error": f"internal error: {error!r}", "kind": "InternalError"}
        try:
            await responder._send(response)
        except MeshError as error:  # e.g. the answer is larger than a frame may be
            self._count("api_unsendable_answers")
            await _try_send(
                frames,
                lock,
                {
                    "id": request["id"],
                    "ok": False,
                    "error": str(error),
                    "kind": type(error).__name__,
                },
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # nobody left to tell


async def _try_send(frames: FrameStream, lock: trio.Lock, message: Message) -> None:
    """Best effort: tell the peer why its connection is being closed."""
    try:
        with trio.move_on_after(1):
            async with lock:
                await frames.send(message)
    except (trio.BrokenResourceError, trio.ClosedResourceError, MeshError, OSError):
        pass


async def _try_refuse(frames: FrameStream, lock: trio.Lock, error: IncompatiblePeerError) -> None:
    """Best effort: tell a peer of another protocol version or mesh why it is refused."""
    try:
        with trio.move_on_after(1):
            async with lock:
                await frames.send_refusal(error)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


def _spoken_stream(sock: socket.socket) -> trio.SocketStream:
    """The stream of a connection the gate admitted: it spoke, so it ends with a FIN (it
    lingers 0 from the listener until now)."""
    linger_zero(sock, False)
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))


def _client_of(address: Any) -> str:
    """The address part of what ``accept`` returns ("" if none: those share one budget)."""
    return str(address[0]) if isinstance(address, tuple) else ""


def _peer_of(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return "a peer"


def _error_kind(why: str) -> str:
    return FrameTooLargeError.__name__ if "-byte frame, the limit" in why else DecodeError.__name__


def _client_address(stream: trio.SocketStream) -> str:
    """The address a connection comes from ("" if unknown: those share one budget)."""
    try:
        return str(stream.socket.getpeername()[0])
    except (OSError, AttributeError):
        return ""


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "a peer"


def request_field(request: Message, name: str, kind: type | tuple[type, ...]) -> Any:
    """Field ``name`` of a request, checked to be a ``kind``; a DecodeError otherwise."""
    value = request.get(name)
    if not isinstance(value, kind):
        raise DecodeError(f"request field {name!r} is missing or not a {kind}")
    return value


def request_seconds(request: Message, name: str, default: float) -> float:
    """Field ``name`` of a request, a count of seconds >= 0 (``default`` when absent or
    None; infinity allowed); a DecodeError otherwise. NaN and a string raised ValueError
    in ``float()`` or trio's deadline arithmetic, answered as an internal error."""
    value = request.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise DecodeError(f"request field {name!r} is a number of seconds >= 0, got {value!r}")
    return float(value)
