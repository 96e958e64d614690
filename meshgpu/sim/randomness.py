"""One seed, many independent random streams.

Every source of randomness in a simulation (latency, loss, duplication, reordering, slow
processing, bootstrap seeds, random fault targets, and each node's own injected
``random.Random``) draws from its own stream derived from the run's seed and the stream's
purpose. Separate streams keep runs comparable: turning loss on does not shift the latency
draws, and a node's protocol choices do not depend on how many datagrams the network
happened to drop elsewhere.

Streams are seeded with a string, which ``random.Random`` hashes with SHA-512 (seed
version 2): the result does not depend on ``PYTHONHASHSEED`` or the platform, which the
determinism invariant (design.md section 4, item 10) needs.
"""

from __future__ import annotations

import random


def stream(seed: int, purpose: str) -> random.Random:
    """The random stream for ``purpose`` in a run with ``seed``; same inputs, same stream."""
    return random.Random(f"meshgpu-sim:{seed}:{purpose}")


def node_stream(seed: int, index: int, life: int) -> random.Random:
    """The ``random.Random`` injected into node ``index`` in its ``life``-th start (0-based).

    A restarted node gets a fresh stream, as a restarted process would.
    """
    return stream(seed, f"node:{index}:{life}")
