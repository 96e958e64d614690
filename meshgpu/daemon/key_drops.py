"""The log of connections dropped because the peer holds another mesh key.

Two meshes with different keys on one network (mDNS on, one mesh name) keep finding each
other: each daemon retries the other every 12-15 s and each try is dropped at the API
server. Warned about once per interval, that was a warning per try per peer for as long
as both ran. Here the first drop from an address is a warning that says what to do,
then at most one summary line per address per :data:`SUMMARY_INTERVAL_S` with the count
dropped since. The counters (``frames_rejected``, ``bad_tag``) still count every drop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

logger = logging.getLogger("meshgpu.daemon.api")

SUMMARY_INTERVAL_S = 600.0
"""Seconds between two summary lines about one address's dropped connections."""
ADDRESSES_REMEMBERED = 1024
"""Addresses the table holds; past it, the one heard from least recently is forgotten
(its next drop is warned about as a first one)."""

ADVICE = (
    "if that node belongs to another mesh on purpose, give one of the two meshes another "
    "--mesh name (mDNS then keeps them apart) or start them with --no-mdns; otherwise "
    "give both the same --key-file. Further drops from this address are summed up "
    "every {minutes:g} minutes"
)


class KeyDrops:
    """Per address: when it was last written about and the drops since."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        interval_s: float = SUMMARY_INTERVAL_S,
        remembered: int = ADDRESSES_REMEMBERED,
    ) -> None:
        self._clock = clock
        self._interval_s = interval_s
        self._remembered = remembered
        self._addresses: dict[str, tuple[float, int]] = {}

    def __len__(self) -> int:
        return len(self._addresses)

    def dropped(self, address: str, peer: str, why: object) -> None:
        """One connection from ``address`` (``peer`` is address and port) was dropped
        for ``why`` (a wrong mesh key): warned about, summed up, or only counted."""
        now = self._clock()
        entry = self._addresses.pop(address, None)
        if entry is None:
            if len(self._addresses) >= self._remembered:
                del self._addresses[next(iter(self._addresses))]
            self._addresses[address] = (now, 0)
            logger.warning(
                "dropping connection from %s: %s; %s",
                peer,
                why,
                ADVICE.format(minutes=self._interval_s / 60),
            )
            return
        since, count = entry
        count += 1
        if now - since < self._interval_s:
            self._addresses[address] = (since, count)
            return
        self._addresses[address] = (now, 0)
        logger.warning(
            "dropped %d connection%s from %s in the last %.0f minutes: %s",
            count,
            "" if count == 1 else "s",
            address,
            (now - since) / 60,
            why,
        )
