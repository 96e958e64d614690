"""Replay protection: a sliding window per sending session, and a bound on clock skew.

Every envelope carries its session (8 random bytes per sending session), a counter that
increases by one per envelope of the session, and the sender's wall clock in
milliseconds (``envelope.py``). The receiver keeps a sliding window of seen counters per
(sender, session), as IPsec does (RFC 4303 section 3.4.3), and refuses anything it has
seen or that is older than the window; it refuses envelopes older or newer than
``max_clock_skew`` by its own clock, so a replay recorded before the receiver restarted
(its windows are in memory only) is still refused. Only keyed envelopes are checked: an
open envelope can be forged anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

PRUNE_EVERY = 1024
"""Accepted envelopes between two sweeps of idle windows."""


@dataclass
class _Window:
    """Sliding window of seen counters for one (sender, session)."""

    highest: int = -1
    seen: int = 0  # bit i set <=> counter (highest - i) was accepted
    last_used: float = 0.0

    def check(self, counter: int, size: int) -> str | None:
        """Why ``counter`` must be refused, or None if it is new."""
        if counter > self.highest:
            return None
        offset = self.highest - counter
        if offset >= size:
            return "older than the replay window"
        if self.seen >> offset & 1:
            return "replayed"
        return None

    def accept(self, counter: int, mask: int) -> None:
        if counter > self.highest:
            shift = counter - self.highest
            self.seen = (self.seen << shift | 1) & mask
            self.highest = counter
        else:
            self.seen |= 1 << (self.highest - counter)


class ReplayGuard:
    """The windows of every (sender, session) heard from, pruned when idle."""

    def __init__(self, max_clock_skew: float, window: int, clock: Callable[[], float]) -> None:
        self._max_skew_ms = int(max_clock_skew * 1000)
        self._size = window
        self._mask = (1 << window) - 1
        self._clock = clock
        self._windows: dict[tuple[str, bytes], _Window] = {}
        self._since_prune = 0

    def check(
        self, sender: str, session: bytes, counter: int, timestamp_ms: int
    ) -> tuple[str, str] | None:
        """Accept envelope ``counter`` of ``session``, or say why not: (counter name,
        message)."""
        now = self._clock()
        now_ms = int(now * 1000)
        if abs(now_ms - timestamp_ms) > self._max_skew_ms:
            return (
                "stale",
                f"envelope from {sender} is {(now_ms - timestamp_ms) / 1000:.0f} s old by our "
                f"clock (limit {self._max_skew_ms / 1000:.0f} s): a replay, or clocks out of "
                "step (run NTP)",
            )
        slot = (sender, session)
        window = self._windows.get(slot)
        if window is None:
            window = self._windows[slot] = _Window()
        reason = window.check(counter, self._size)
        if reason is not None:
            return "replayed", f"envelope {counter} from {sender} {reason}"
        window.accept(counter, self._mask)
        window.last_used = now
        self._since_prune += 1
        if self._since_prune >= PRUNE_EVERY:
            self._prune(now)
        return None

    def _prune(self, now: float) -> None:
        """Forget windows idle for twice the skew: their envelopes would be stale anyway."""
        self._since_prune = 0
        horizon = now - 2 * self._max_skew_ms / 1000
        for slot in [slot for slot, w in self._windows.items() if w.last_used < horizon]:
            del self._windows[slot]
