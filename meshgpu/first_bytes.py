"""Connections that have not spoken yet, held without a task until their first bytes
say what they are: the stage between :mod:`meshgpu.accepting`'s admission and a
connection's handler, for the TCP API (daemon/api.py) and the plain HTTP port
(http/connections.py).

A stranger on a port costs what its handler builds for it: on the TCP API a stream, a
frame stream with its sealing session, a lock, a nursery and two tasks (the reader and
the handshake deadline), on the HTTP port hypercorn's connection handler, an h11
connection and their tasks; and it costs a trip through trio's scheduler for every
task step. Idle strangers, tricklers and bad greetings (garbage, a lying length, a
truncated header, a request that is not HTTP) are most of a hostile barrage, and
nearly none of them ever becomes a connection that serves anything.

:class:`FirstBytesGate` holds them in an epoll set of its own (edge-triggered, watched
by one task through the set's file descriptor): each time new bytes arrive, or the peer
closes, it peeks at what the kernel holds (``MSG_PEEK``: nothing is consumed, the
handler later reads the same bytes) and asks a ``judge`` for a :class:`Verdict`:

* ``ADMIT``: the greeting is well-formed so far: the socket leaves the set and goes to
  its handler, which reads it from the first byte;
* ``REFUSE``: not this port's protocol: a ``refused`` hook may tell the peer why (one
  non-blocking send; then the bytes that arrived are read and the socket is closed,
  :attr:`Refused.ANSWERED`), or not (it is closed at once: an RST,
  :attr:`Refused.RESET`), or keep the socket (the HTTP port's lingering close,
  :attr:`Refused.KEPT`);
* ``WAIT``: too few bytes to say; the socket stays until more arrive, its peer closes
  it (a truncated greeting: refused), or ``timeout_s`` after it was held (it is reset:
  ``timed_out``).

A peer that closes or resets before sending anything is closed quietly (``gone``). A
socket is looked at once when it is held, before any wait: a real client usually sends
its first request right after connecting, and goes to its handler in the same step.

The sockets held linger 0 (:func:`meshgpu.accepting.accept_forever`'s are born so), so
the gate's ``close`` of one is an RST, and a ``refused`` hook that answers turns that off.

Sockets that leave without being admitted never cost a task, a stream or a timer: one
wakeup of the gate's task takes every socket that became readable since the last, and
one deadline (the oldest's: the timeout is the same for all) stands for all of them.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import math
import select
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio


class Verdict(enum.Enum):
    """What a connection's first bytes say (the judge's answer)."""

    WAIT = "wait"
    ADMIT = "admit"
    REFUSE = "refuse"


class Refused(enum.Enum):
    """What a ``refused`` hook did with a refused socket (the gate acts on it)."""

    ANSWERED = "answered"
    """It told the peer why and turned the linger off: the gate reads what is left of
    the greeting (so that the close is a FIN after the answer, not an RST) and closes."""
    RESET = "reset"
    """It said nothing: the gate closes the socket at once (it lingers 0 from the
    listener: an RST, whatever is unread; no read to drain it)."""
    KEPT = "kept"
    """It keeps the socket open: the gate neither reads nor closes it."""


class AnswerBudget:
    """At most ``per_s`` refusals a second told why per address: the refusals a port
    answers (a sealed frame, a 400) cost most of what a refused greeting costs, paid for
    every greeting of a flood whose sender reads nothing; past the budget a refusal is
    reset unanswered. A tool that speaks the wrong protocol to the port is still told
    why on its first tries.

    An address's second begins with its first answer in it. At most ``max_addresses``
    are remembered, the one refused longest ago forgotten first: a flood from many
    addresses forgets the quiet ones, not the one that floods (emptying the whole table
    at the bound gave every address its answers back at once)."""

    def __init__(self, per_s: int, max_addresses: int = 1024) -> None:
        self.per_s = per_s
        self.max_addresses = max_addresses
        self._seconds: dict[str, tuple[float, int]] = {}
        """Per address: when its second began and the answers in it (the one refused
        longest ago first)."""

    def may_answer(self, client: str, now: float) -> bool:
        """Whether a refusal of ``client``'s greeting at ``now`` (trio's clock) is told
        why; it counts as one of the second's answers if so."""
        seconds = self._seconds
        began, answered = seconds.pop(client, (now, 0))
        if now - began >= 1.0:
            began, answered = now, 0
        if answered >= self.per_s:
            seconds[client] = (began, answered)
            return False
        seconds[client] = (began, answered + 1)
        if len(seconds) > self.max_addresses:
            del seconds[next(iter(seconds))]
        return True


Judge = Callable[[bytes, bool], tuple[Verdict, str]]
"""``judge(peeked, closed)``: the verdict on the bytes so far (``closed``: the peer has
sent all it will) and, for a refusal, why (a message for the log and the peer)."""

_WATCH = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
_CLOSED = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_EXPIRY_SLACK_S = 0.1
"""Sockets whose deadlines fall within this of each other are reset in one wakeup."""
_DRAIN_BYTES = 64 * 1024
"""Bytes read from a refused socket before it is closed (with unread bytes left the
kernel resets it instead of closing it: a 64 MiB lie is reset, a short one closed)."""
_DRAIN = memoryview(bytearray(_DRAIN_BYTES))
"""Where they are read to and dropped (one buffer for every refusal, not a new
64 KiB ``bytes`` each)."""


@dataclass(eq=False, slots=True)
class _Held:
    sock: socket.socket
    fd: int
    address: Any
    deadline: float
    spoke: bool = False
    """Some of its first bytes have arrived (it is past ``silent_timeout_s``'s reach)."""


class FirstBytesGate:
    """Holds sockets until their first bytes are judged (see the module text).

    ``admitted(sock, address)`` takes an admitted socket (it must not block: start a
    task); ``refused(sock, address, peeked, why)`` may send the peer a last word before
    the gate closes it, or keep the socket (it says which, :class:`Refused`);
    ``released(address, outcome)`` is called for every socket that
    leaves other than admitted, ``outcome`` one of ``refused``, ``timed_out``, ``silent``
    (reset at ``silent_timeout_s`` having sent nothing: a shorter deadline for those,
    where the owner has one), ``gone`` and ``evicted`` (the owner's counters and
    per-address budget)."""

    def __init__(
        self,
        judge: Judge,
        *,
        peek_bytes: int,
        timeout_s: float,
        silent_timeout_s: float | None = None,
        admitted: Callable[[socket.socket, Any], None],
        refused: Callable[[socket.socket, Any, bytes, str], Refused],
        released: Callable[[Any, str], None],
    ) -> None:
        self.judge = judge
        self.peek_bytes = peek_bytes
        self.timeout_s = timeout_s
        self.silent_timeout_s = (
            silent_timeout_s
            if silent_timeout_s is not None and silent_timeout_s < timeout_s
            else None
        )
        self._admitted = admitted
        self._refused = refused
        self._released = released
        self._epoll = select.epoll()
        self._held: dict[int, _Held] = {}
        self._order: collections.deque[_Held] = collections.deque()
        """Held sockets in the order they came (their deadlines in the same order)."""
        self._spoken: collections.deque[_Held] = collections.deque()
        """With ``silent_timeout_s``: sockets past their silent deadline that had sent
        something, waiting for ``timeout_s`` (in the order they came)."""
        self._waiting: trio.CancelScope | None = None

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, sock: socket.socket, address: Any) -> None:
        """Invoked by the accept loop for an admitted, non-blocking socket: judge what
        it has sent already, and hold it if that is not enough to say."""
        first = self.silent_timeout_s if self.silent_timeout_s is not None else self.timeout_s
        held = _Held(sock, sock.fileno(), address, trio.current_time() + first)
        if self._look(held, 0):
            return
        self._held[held.fd] = held
        self._order.append(held)
        self._epoll.register(held.fd, _WATCH)
        waiting = self._waiting
        if waiting is not None and held.deadline + _EXPIRY_SLACK_S < waiting.deadline:
            waiting.deadline = held.deadline + _EXPIRY_SLACK_S

    def evict_oldest(self) -> bool:
        """Reset the socket held longest (the owner needs its room); False if none."""
        for order in (self._spoken, self._order):
            while order:
                held = order.popleft()
                if self._forget(held):
                    held.sock.close()
                    self._released(held.address, "evicted")
                    return True
        return False

    async def run(self) -> None:
        """Watch the held sockets forever (the owner's nursery runs this task); closes
        every socket still held when cancelled."""
        try:
            while True:
                deadline = self._oldest_deadline() + _EXPIRY_SLACK_S
                with trio.CancelScope(deadline=deadline) as self._waiting:
                    await trio.lowlevel.wait_readable(self._epoll.fileno())
                self._waiting = None
                for fd, events in self._epoll.poll(0):
                    held = self._held.get(fd)
                    if held is not None:
                        self._look(held, events)
                self._expire(trio.current_time())
        finally:
            self._waiting = None
            for held in list(self._held.values()):
                self._forget(held)
                held.sock.close()
            self._epoll.close()

    def _oldest_deadline(self) -> float:
        """The earliest deadline of a held socket (records of sockets that left
        already are dropped on the way: they must not wake the task)."""
        earliest = math.inf
        for order in (self._order, self._spoken):
            while order:
                if self._held.get(order[0].fd) is order[0]:
                    earliest = min(earliest, order[0].deadline)
                    break
                order.popleft()
        return earliest

    def _expire(self, now: float) -> None:
        order = self._order
        while order and order[0].deadline <= now:
            held = order.popleft()
            if self._held.get(held.fd) is not held:
                continue
            if self.silent_timeout_s is not None and held.spoke:
                held.deadline += self.timeout_s - self.silent_timeout_s
                self._spoken.append(held)
                continue
            self._forget(held)
            held.sock.close()
            self._released(held.address, "silent" if self.silent_timeout_s else "timed_out")
        spoken = self._spoken
        while spoken and spoken[0].deadline <= now:
            held = spoken.popleft()
            if self._forget(held):
                held.sock.close()
                self._released(held.address, "timed_out")

    def _forget(self, held: _Held, closing: bool = True) -> bool:
        """Take ``held`` out of the set; False if it had left already. A socket about to
        be closed (``closing``) leaves the epoll set with its ``close``, without an
        ``epoll_ctl`` of its own."""
        if self._held.get(held.fd) is not held:
            return False
        del self._held[held.fd]
        if not closing:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(held.fd)
        return True

    def _look(self, held: _Held, events: int) -> bool:
        """Peek at what ``held`` sent and act on the verdict; True if it left the gate."""
        sock = held.sock
        try:
            peeked = sock.recv(self.peek_bytes, socket.MSG_PEEK)
        except BlockingIOError:
            if not events & _CLOSED:
                return False
            peeked = b""
        except OSError:  # reset by the peer
            peeked = b""
            events |= select.EPOLLHUP
        closed = bool(events & _CLOSED)
        if not peeked:
            if not closed:
                return False  # nothing yet
            self._forget(held)
            sock.close()
            self._released(held.address, "gone")
            return True
        verdict, why = self.judge(peeked, closed)
        if verdict is Verdict.WAIT:
            if not closed:
                held.spoke = True
                return False
            verdict, why = Verdict.REFUSE, why or "closed before its first bytes were whole"
        self._forget(held, closing=verdict is not Verdict.ADMIT)
        if verdict is Verdict.ADMIT:
            self._admitted(sock, held.address)
            return True
        refusal = self._refused(sock, held.address, peeked, why)
        if refusal is Refused.KEPT:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(held.fd)  # the hook keeps it open
        else:
            if refusal is Refused.ANSWERED:
                with contextlib.suppress(OSError):
                    sock.recv_into(_DRAIN)
            sock.close()
        self._released(held.address, "refused")
        return True
