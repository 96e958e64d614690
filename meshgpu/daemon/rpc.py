"""Requests and responses over one frame stream, many in flight at once.

Every TCP connection to a daemon (from a client, or from another daemon moving payloads)
speaks the same shape, documented in docs/client-api.md:

* request:  ``{"id": int, "op": str, ...fields}``
* response: ``{"id": int, "ok": true, "more": bool, ...fields}`` or
  ``{"id": int, "ok": false, "error": str, "kind": str}``

A request gets one response, or a stream of them (``"more": true`` on all but the last).
Ids are chosen by the requester and only need to be unique among its requests in flight
on that connection, so one connection carries a ``results`` stream and any number of
``submit`` calls at the same time.

:class:`RpcConnection` is the requesting side (used by the daemon for peer transfers and
by the Python client); the answering side is :mod:`meshgpu.daemon.api`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from meshgpu.core.types import Address
from meshgpu.daemon.auth import Authenticator
from meshgpu.daemon.framing import DEFAULT_MAX_FRAME_BYTES, FrameStream
from meshgpu.errors import ClientError, DecodeError, RemoteProtocolError, RequestFailedError

Message = dict[str, Any]
_ANSWER_KEYS = frozenset({"id", "ok", "more", "error", "kind"})
"""The keys every answer has; an error answer's others are its fields
(``RequestFailedError.fields``)."""


class RpcConnection:
    """The requesting side of one connection; open it with :func:`open_rpc`."""

    def __init__(self, frames: FrameStream, peer: str) -> None:
        self.frames = frames
        self.peer = peer
        self._ids = itertools.count(1)
        self._pending: dict[int, trio.MemorySendChannel[Message]] = {}
        self._send_lock = trio.Lock()
        self._broken: str | None = None
        self.broken_by: BaseException | None = None
        """The error that broke the connection (an AuthenticationError tells the client
        its mesh key is missing or wrong), None while it works or when the peer closed."""
        self.closed = trio.Event()
        """Set when the connection can carry no more responses."""

    @property
    def usable(self) -> bool:
        return self._broken is None and not self.closed.is_set()

    async def call(self, op: str, **fields: Any) -> Message:
        """Send one request and return its (single, final) response."""
        last: Message = {}
        async for response in self.stream(op, **fields):
            last = response
        return last

    async def stream(self, op: str, **fields: Any) -> AsyncIterator[Message]:
        """Send one request and yield each response until the final one (``more`` false)."""
        if self._broken is not None:
            raise ClientError(f"connection to {self.peer} is broken: {self._broken}")
        request_id = next(self._ids)
        sender, receiver = trio.open_memory_channel[Message](math.inf)
        self._pending[request_id] = sender
        try:
            async with self._send_lock:
                try:
                    await self.frames.send({"id": request_id, "op": op, **fields})
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
                    raise ClientError(f"cannot send to {self.peer}: {error}") from None
            async with receiver:
                async for response in receiver:
                    if not response.get("ok", False):
                        raise RequestFailedError(
                            f"{self.peer}: {response.get('error', 'request failed')}",
                            kind=str(response.get("kind", "MeshError")),
                            fields={
                                name: value
                                for name, value in response.items()
                                if name not in _ANSWER_KEYS
                            },
                        )
                    yield response
                    if not response.get("more", False):
                        return
            raise ClientError(
                f"connection to {self.peer} closed before answering {op!r}"
                + (f": {self._broken}" if self._broken else "")
            ) from self.broken_by
        finally:
            self._pending.pop(request_id, None)

    async def _read_responses(self) -> None:
        try:
            while True:
                message = await self.frames.receive()
                if message is None:
                    self._broken = "closed by peer"
                    break
                if not isinstance(message, dict) or not isinstance(message.get("id"), int):
                    if isinstance(message, dict) and message.get("ok") is False:
                        self._broken = str(message.get("error"))  # connection-level error
                        break
                    raise DecodeError(f"response without an id from {self.peer}")
                channel = self._pending.get(message["id"])
                if channel is not None:
                    channel.send_nowait(message)
        except (RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError) as error:
            self._broken = str(error)
            self.broken_by = error
        finally:
            self._broken = self._broken or "closed"
            self.closed.set()
            for channel in list(self._pending.values()):
                channel.close()


@asynccontextmanager
async def open_rpc(
    address: Address,
    authenticator: Authenticator,
    *,
    connect_timeout: float = 5.0,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    key_id: bytes | None = None,
) -> AsyncIterator[RpcConnection]:
    """Connect to a daemon's TCP port and yield a connection for requests; ``key_id``
    seals them with that key of the keyring whatever the node's policy says."""
    host, port = address
    try:
        with trio.fail_after(connect_timeout):
            stream = await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError) as error:
        raise ClientError(
            f"cannot connect to meshgpu at {host}:{port}: {error or 'timed out'}; "
            "is `meshgpu join` running there, and is the port open?"
        ) from None
    frames = FrameStream(stream, authenticator, max_frame_bytes=max_frame_bytes, key_id=key_id)
    connection = RpcConnection(frames, f"{host}:{port}")
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection._read_responses)
            try:
                yield connection
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The reader never raises, so a group holds the caller's own error: unwrap it
        # so callers can `except ClientError` as with any other call.
        if len(group.exceptions) == 1:
            only = group.exceptions[0]
            raise only from only.__cause__  # the cause says why (a wrong mesh key)
        raise
    finally:
        with trio.CancelScope(shield=True):
            await frames.aclose()


class ConnectionPool:
    """One long-lived connection per peer for small, frequent requests (the data plane's
    inputs and results), so a task does not pay a TCP handshake per transfer.

    A call first tries the pooled connection with a short timeout; if that connection is
    broken or silent (a peer restarted, a partition), it is closed and the call is made
    once more on a fresh connection with the full timeout. Error *answers* from the peer
    (:class:`RequestFailedError`) are not retried. Run the pool with
    ``await nursery.start(pool.run)``; cancelling that nursery closes every connection.
    """

    def __init__(
        self,
        authenticator: Authenticator,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        first_try_timeout: float = 5.0,
    ) -> None:
        self.authenticator = authenticator
        self.max_frame_bytes = max_frame_bytes
        self.first_try_timeout = first_try_timeout
        self._links: dict[Address, RpcConnection] = {}
        self._scopes: dict[Address, trio.CancelScope] = {}
        self._opening: dict[Address, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def call(self, address: Address, op: str, *, timeout: float, **fields: Any) -> Message:
        link = self._links.get(address)
        if link is not None and link.usable:
            try:
                with trio.fail_after(min(timeout, self.first_try_timeout)):
                    return await link.call(op, **fields)
            except RequestFailedError:
                raise
            except (ClientError, trio.TooSlowError):
                self._close(address, link)
        with trio.fail_after(timeout):
            link = await self._connect(address)
            return await link.call(op, **fields)

    @asynccontextmanager
    async def dedicated(
        self, address: Address, *, timeout: float
    ) -> AsyncIterator[Callable[..., Awaitable[Message]]]:
        """``call(op, **fields)`` on a connection of its own, each answered within
        ``timeout``: for the ranges of one transfer larger than a range (transfers.py).
        Not the pooled connection: a window of 16 MiB frames on it would hold up every
        small request to that peer, and a call on it gets only a short first try."""
        async with open_rpc(
            address, self.authenticator, max_frame_bytes=self.max_frame_bytes
        ) as rpc:

            async def call(op: str, **fields: Any) -> Message:
                with trio.fail_after(timeout):
                    return await rpc.call(op, **fields)

            yield call

    async def _connect(self, address: Address) -> RpcConnection:
        lock = self._opening.setdefault(address, trio.Lock())
        async with lock:
            link = self._links.get(address)
            if link is not None and link.usable:
                return link
            assert self._nursery is not None, "run the pool before calling through it"
            try:
                started: RpcConnection = await self._nursery.start(self._hold, address)
            except BaseExceptionGroup as group:
                if len(group.exceptions) == 1:
                    raise group.exceptions[0] from None
                raise
            return started

    async def _hold(self, address: Address, *, task_status: trio.TaskStatus[RpcConnection]) -> None:
        with trio.CancelScope() as scope:
            async with open_rpc(
                address, self.authenticator, max_frame_bytes=self.max_frame_bytes
            ) as link:
                self._links[address] = link
                self._scopes[address] = scope
                task_status.started(link)
                try:
                    await link.closed.wait()
                finally:
                    if self._links.get(address) is link:
                        del self._links[address]
                        del self._scopes[address]

    def _close(self, address: Address, link: RpcConnection) -> None:
        if self._links.get(address) is link:
            self._scopes[address].cancel()
            del self._links[address]
            del self._scopes[address]
