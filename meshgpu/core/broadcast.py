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

Memory: a forming mesh of n nodes holds about n updates in each node's queue (n squared in
one simulator process), so an item is only its key and its payload bytes: the key in
``queued`` (a set) and the pair in the bucket of its transmission count (key -> payload).
Which bucket holds a key is not kept: only replacing or discarding a queued key needs it,
and looks for it in the few buckets (``limit`` at most), while each transmission of each
item would pay to keep it. Rejected: an ``OrderedDict`` per bucket (about 250 bytes an
item at 1,000 nodes, against about 60 for a dict) and an object per item holding the
payload and its count.
A plain dict keeps the slots of deleted keys until it next resizes, so a scan from the
front may step over them; that walk runs in C and costs less than the interpreter's work
on the items it returns.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from itertools import islice

_MAX_MISFITS = 6
"""Stop looking for items that fit after this many that did not, in one ``take``."""


class BroadcastQueue:
    """Keyed, transmit-limited queue of pre-encoded piggyback items."""

    __slots__ = ("_buckets", "_scan_limit", "queued")

    def __init__(self, scan_limit: int = 96) -> None:
        self._buckets: list[dict[Hashable, bytes]] = [{}]
        """``_buckets[t]``: the items sent ``t`` times so far, oldest first (key -> payload)."""
        self.queued: set[Hashable] = set()
        """Every queued key. Read-only for others: truthy exactly when the queue is
        (``NodeContext.send`` reads it on every datagram instead of calling ``__bool__``)."""
        self._scan_limit = scan_limit

    def __len__(self) -> int:
        return len(self.queued)

    def __bool__(self) -> bool:
        return bool(self.queued)

    def __contains__(self, key: Hashable) -> bool:
        return key in self.queued

    def enqueue(self, key: Hashable, payload: bytes) -> None:
        """Queue ``payload`` under ``key``, replacing (and restarting) any item with that key."""
        queued = self.queued
        if key in queued:
            self._remove(key)
        else:
            queued.add(key)
        self._buckets[0][key] = payload

    def discard(self, key: Hashable) -> None:
        """Forget the queued item under ``key`` if any."""
        queued = self.queued
        if key in queued:
            queued.discard(key)
            self._remove(key)
            if not queued:
                self.queued = set()  # a fresh set: a drained one keeps its largest capacity

    def take(self, budget: int, limit: int, max_items: int) -> list[bytes]:
        """Pick items totalling at most ``budget`` bytes, fewest transmissions first.

        Each picked item counts one transmission and is dropped once sent ``limit`` times.

        The rule, item by item in bucket order: an item is picked if it fits in what is
        left of the budget, else it is a misfit; the scan stops at ``max_items`` picked,
        under 8 bytes left, :data:`_MAX_MISFITS` misfits or ``scan_limit`` items examined.
        Most takes pick the first items of the lowest bucket, which all fit together with
        8 bytes to spare (updates are a few tens of bytes, ``max_items`` of them far less
        than a datagram): those are taken as a run, examined, picked and moved on by C
        loops (``islice``, ``map``) rather than one interpreted step each; the item by
        item rule runs from the first bucket whose run does not fit. Either way the same
        items, in the same order, and the same buckets after.
        """
        picked: list[bytes] = []
        queued = self.queued
        if not queued or budget <= 0 or max_items <= 0:
            return picked
        buckets = self._buckets
        runs: list[tuple[int, list[Hashable], list[bytes]]] = []
        examined = 0
        scan_limit = self._scan_limit
        sent = 0
        done = False
        for sent, bucket in enumerate(buckets):
            if not bucket:
                continue
            count = min(len(bucket), max_items - len(picked), scan_limit - examined)
            keys = list(islice(bucket, count))
            payloads = list(islice(bucket.values(), count))
            size = sum(map(len, payloads))
            if size > budget - 8:
                break  # this run does not fit whole: item by item from here
            runs.append((sent, keys, payloads))
            picked += payloads
            budget -= size
            examined += count
            if len(picked) >= max_items or examined >= scan_limit:
                done = True
                break
        else:
            done = True
        if not done:
            misses = 0
            first = sent
            for sent, bucket in enumerate(buckets[first:], first):
                for key, payload in bucket.items():
                    examined += 1
                    size = len(payload)
                    if size <= budget:
                        picked.append(payload)
                        budget -= size
                        runs.append((sent, [key], [payload]))  # a run of one
                        done = len(picked) >= max_items or budget < 8
                    else:
                        # A few misfits in a row: the space left is smaller than what is queued.
                        misses += 1
                        done = misses >= _MAX_MISFITS
                    if done or examined >= scan_limit:
                        done = True
                        break
                if done:
                    break
        # Move the picked items on one bucket, in the order picked (the runs, then the
        # items picked one by one, each a run of one).
        for sent, keys, payloads in runs:
            bucket = buckets[sent]
            deque(map(bucket.__delitem__, keys), 0)
            if not bucket:
                buckets[sent] = {}  # see _remove
            sent += 1
            if sent >= limit:
                queued.difference_update(keys)
                continue
            if len(buckets) <= sent:
                buckets.append({})
            buckets[sent].update(zip(keys, payloads, strict=True))
        if not queued:
            self.queued = set()  # see discard
        return picked

    def _remove(self, key: Hashable) -> None:
        """Delete ``key`` from the bucket holding it; an emptied bucket becomes a fresh dict.
        A dict never shrinks when keys are deleted, and every item passes through every
        bucket up to ``limit``: kept, the drained buckets of a 1,000-node mesh that had
        formed held about 0.6 MB per node of empty capacity."""
        buckets = self._buckets
        for sent, bucket in enumerate(buckets):
            if key in bucket:
                del bucket[key]
                if not bucket:
                    buckets[sent] = {}
                return
