"""The dissemination queue: updates waiting to be piggybacked, each sent a bounded number
of times (SWIM's infection-style dissemination, memberlist's TransmitLimitedQueue).

Every node that learns something new enqueues it; every datagram the node sends carries
as many queued updates as fit, those sent fewest times first. An update is dropped after
``limit`` transmissions, ``lambda * ceil(log10(n + 1))`` (``MeshConfig.retransmit_limit``),
which is enough for the epidemic to reach every member with high probability.

Updates are keyed: a newer update about the same thing (``("member", id)``, ``("load",
id)``) replaces the queued one and restarts its count, so the queue never holds more than
one update per key. Items are stored pre-encoded and spliced into datagrams as bytes.

Cost: :meth:`take` looks at the fewest-sent buckets first and stops at ``max_items`` or
after examining ``scan_limit`` items, so a long queue never makes one send expensive.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

_MAX_MISFITS = 6
"""Stop looking for items that fit after this many that did not, in one ``take``."""


@dataclass(slots=True)
class _Queued:
    payload: bytes
    transmits: int


class BroadcastQueue:
    """Keyed, transmit-limited queue of pre-encoded piggyback items."""

    def __init__(self, scan_limit: int = 96) -> None:
        # OrderedDict, not dict: items leave from the front and join at the back; a plain
        # dict keeps the deleted slots and every scan would walk over all of them.
        self._buckets: list[OrderedDict[Hashable, _Queued]] = [OrderedDict()]
        self.queued: dict[Hashable, int] = {}
        """Each queued key and the bucket (transmissions so far) it is in. Read-only for
        others: truthy exactly when the queue is (``NodeContext.send`` reads it on every
        datagram instead of calling ``__bool__``)."""
        self._scan_limit = scan_limit

    def __len__(self) -> int:
        return len(self.queued)

    def __bool__(self) -> bool:
        return bool(self.queued)

    def __contains__(self, key: Hashable) -> bool:
        return key in self.queued

    def enqueue(self, key: Hashable, payload: bytes) -> None:
        """Queue ``payload`` under ``key``, replacing (and restarting) any item with that key."""
        old = self.queued.get(key)
        if old is not None:
            del self._buckets[old][key]
        self._buckets[0][key] = _Queued(payload, 0)
        self.queued[key] = 0

    def discard(self, key: Hashable) -> None:
        """Forget the queued item under ``key`` if any."""
        old = self.queued.pop(key, None)
        if old is not None:
            del self._buckets[old][key]

    def take(self, budget: int, limit: int, max_items: int) -> list[bytes]:
        """Pick items totalling at most ``budget`` bytes, fewest transmissions first.

        Each picked item counts one transmission and is dropped once sent ``limit`` times.
        """
        picked: list[bytes] = []
        if not self.queued or budget <= 0 or max_items <= 0:
            return picked
        moved: list[tuple[Hashable, _Queued]] = []
        examined = 0
        misses = 0
        done = False
        for bucket in self._buckets:
            for key, item in bucket.items():
                examined += 1
                size = len(item.payload)
                if size <= budget:
                    picked.append(item.payload)
                    budget -= size
                    moved.append((key, item))
                    done = len(picked) >= max_items or budget < 8
                else:
                    # A few misfits in a row: the space left is smaller than what is queued.
                    misses += 1
                    done = misses >= _MAX_MISFITS
                if done or examined >= self._scan_limit:
                    done = True
                    break
            if done:
                break
        for key, item in moved:
            del self._buckets[item.transmits][key]
            item.transmits += 1
            if item.transmits >= limit:
                del self.queued[key]
                continue
            while len(self._buckets) <= item.transmits:
                self._buckets.append(OrderedDict())
            self._buckets[item.transmits][key] = item
            self.queued[key] = item.transmits
        return picked
