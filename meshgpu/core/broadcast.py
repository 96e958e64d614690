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

Memory and order: a forming mesh of n nodes holds about n updates in each node's queue
(n squared in one simulator process), so an item is only its key and its payload bytes:
``queued`` is the set of queued keys, and each bucket is two parallel lists (keys,
payloads) read from a head index. Items leave a bucket at its front (a take) and enter at
its back (a take from the bucket below, or an enqueue into bucket 0), so a take reads its
run as one slice of each list and moves the head on; the lists are cut once half of them
lies before the head. Replacing or discarding a queued key (rare: a newer update about
the same member or load) looks for it in the buckets' lists. Rejected: a dict per bucket
(key -> payload), the form before: a dict reuses the slots of deleted keys only when it
next resizes, so every read from a bucket's front walked over the slots earlier takes had
emptied (hundreds at 1,000 members, twice a take), and each transmission hashed its key
out of one bucket and into the next; an ``OrderedDict`` per bucket (about 250 bytes an
item at 1,000 nodes); an object per item holding the payload and its count; keeping each
key's bucket (every transmission of every item would pay to keep it).
"""

from __future__ import annotations

from collections.abc import Hashable

_MAX_MISFITS = 6
"""Stop looking for items that fit after this many that did not, in one ``take``."""

_CUT_AT = 64
"""A bucket's lists are cut once at least this many items (and half of them) lie before
its head: the cut moves what is left, so its cost per item taken stays bounded."""


class BroadcastQueue:
    """Keyed, transmit-limited queue of pre-encoded piggyback items."""

    __slots__ = ("_heads", "_keys", "_payloads", "_scan_limit", "queued")

    def __init__(self, scan_limit: int = 96) -> None:
        self._keys: list[list[Hashable]] = [[]]
        """``_keys[t][_heads[t]:]``: the keys of the items sent ``t`` times so far, oldest
        first; ``_payloads[t]`` holds their payloads at the same places."""
        self._payloads: list[list[bytes]] = [[]]
        self._heads: list[int] = [0]
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

    def buckets(self) -> list[dict[Hashable, bytes]]:
        """Each bucket's items in order (key -> payload): for tests and inspection."""
        return [
            dict(zip(keys[head:], payloads[head:], strict=True))
            for keys, payloads, head in zip(self._keys, self._payloads, self._heads, strict=True)
        ]

    def enqueue(self, key: Hashable, payload: bytes) -> None:
        """Queue ``payload`` under ``key``, replacing (and restarting) any item with that key."""
        queued = self.queued
        if key in queued:
            self._remove(key)
        else:
            queued.add(key)
        self._keys[0].append(key)
        self._payloads[0].append(payload)

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
        than a datagram): those are taken as a run, a slice of the bucket's lists, and
        moved on by C loops rather than one interpreted step each; the item by item rule
        runs from the first bucket whose run does not fit. Either way the same items, in
        the same order, and the same buckets after.
        """
        picked: list[bytes] = []
        queued = self.queued
        if not queued or budget <= 0 or max_items <= 0:
            return picked
        all_keys = self._keys
        all_payloads = self._payloads
        heads = self._heads
        runs: list[tuple[int, list[Hashable], list[bytes]]] = []
        """What moves on, in the order picked: (bucket, keys, payloads)."""
        examined = 0
        scan_limit = self._scan_limit
        sent = 0
        done = False
        for sent, keys in enumerate(all_keys):
            head = heads[sent]
            waiting = len(keys) - head
            if not waiting:
                continue
            count = min(waiting, max_items - len(picked), scan_limit - examined)
            end = head + count
            payloads = all_payloads[sent][head:end]
            size = sum(map(len, payloads))
            if size > budget - 8:
                break  # this run does not fit whole: item by item from here
            runs.append((sent, keys[head:end], payloads))
            heads[sent] = end
            picked += payloads
            budget -= size
            examined += count
            if len(picked) >= max_items or examined >= scan_limit:
                done = True
                break
        else:
            done = True
        touched = [run[0] for run in runs]
        if not done:
            misses = 0
            first = sent
            for sent in range(first, len(all_keys)):
                keys = all_keys[sent]
                payloads = all_payloads[sent]
                taken: list[int] = []
                for index in range(heads[sent], len(keys)):
                    examined += 1
                    payload = payloads[index]
                    size = len(payload)
                    if size <= budget:
                        picked.append(payload)
                        budget -= size
                        taken.append(index)
                        runs.append((sent, [keys[index]], [payload]))  # a run of one
                        done = len(picked) >= max_items or budget < 8
                    else:
                        # A few misfits in a row: the space left is smaller than what is queued.
                        misses += 1
                        done = misses >= _MAX_MISFITS
                    if done or examined >= scan_limit:
                        done = True
                        break
                if taken:
                    touched.append(sent)
                    head = heads[sent]
                    if taken[-1] - head == len(taken) - 1:
                        heads[sent] = head + len(taken)  # all from the front
                    else:
                        for index in reversed(taken):
                            del keys[index]
                            del payloads[index]
                if done:
                    break
        # Cut (or renew, when emptied) the buckets items left.
        for sent in touched:
            keys = all_keys[sent]
            head = heads[sent]
            if head == len(keys):
                # a fresh list: a cut one keeps capacity for what it held
                all_keys[sent] = []
                all_payloads[sent] = []
                heads[sent] = 0
            elif head >= _CUT_AT and head * 2 >= len(keys):
                del keys[:head]
                del all_payloads[sent][:head]
                heads[sent] = 0
        # Move the picked items on one bucket, in the order picked.
        for sent, keys, payloads in runs:
            sent += 1
            if sent >= limit:
                queued.difference_update(keys)
                continue
            if len(all_keys) <= sent:
                all_keys.append([])
                all_payloads.append([])
                heads.append(0)
            all_keys[sent] += keys
            all_payloads[sent] += payloads
        if not queued:
            self.queued = set()  # see discard
        return picked

    def _remove(self, key: Hashable) -> None:
        """Delete ``key``'s item from the bucket holding it, looked for in each (which
        bucket holds a key is not kept: each transmission of each item would pay to keep
        it); an emptied bucket gets fresh lists.
        A list keeps capacity for what it held, and every item passes through every
        bucket up to ``limit``: kept, the drained buckets of a 1,000-node mesh that had
        formed would hold empty capacity in every node."""
        for sent, keys in enumerate(self._keys):
            head = self._heads[sent]
            try:
                index = keys.index(key, head)
            except ValueError:
                continue
            break
        else:
            raise AssertionError(f"queued key {key!r} is in no bucket")
        del keys[index]
        del self._payloads[sent][index]
        if len(keys) == head:
            self._keys[sent] = []
            self._payloads[sent] = []
            self._heads[sent] = 0
