"""Fast constructors against the generated ``__init__`` (meshgpu.core.fast_construct).

Prints, for each class with a fast constructor, the nanoseconds per object both ways and
their ratio (best of five runs of 200,000; on a shared machine compare the ratio only).

Usage::

    python bench/construct.py [--json]

Benchmarks are not tests: this prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import timeit
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import meshgpu.core  # noqa: F401  (makes every fast constructor)
    from meshgpu.core.effects import SendDatagram
    from meshgpu.core.events import DatagramReceived
    from meshgpu.core.fast_construct import FAST_CONSTRUCTORS
    from meshgpu.core.membership.wire import Ack, Ping
    from meshgpu.core.messages import Envelope

    samples: dict[type[Any], tuple[Any, ...]] = {
        SendDatagram: (("10.0.0.1", 7946), b"payload"),
        DatagramReceived: (("10.0.0.2", 7946), b"payload"),
        Ping: (7, "n001"),
        Ack: (7,),
        Envelope: ("n001", 3, 2, Ping(7, "n002"), ()),
    }
    rows = []
    number = 200_000
    for cls, values in samples.items():
        fast = FAST_CONSTRUCTORS[cls]
        plain_ns = min(timeit.repeat(lambda c=cls, v=values: c(*v), number=number, repeat=5))
        fast_ns = min(timeit.repeat(lambda f=fast, v=values: f(*v), number=number, repeat=5))
        plain_ns /= number
        fast_ns /= number
        rows.append(
            {
                "class": cls.__name__,
                "plain_ns": round(plain_ns * 1e9),
                "fast_ns": round(fast_ns * 1e9),
                "ratio": round(fast_ns / plain_ns, 2),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'class':18} {'plain ns':>9} {'fast ns':>8} {'ratio':>6}")
    for row in rows:
        print(f"{row['class']:18} {row['plain_ns']:9} {row['fast_ns']:8} {row['ratio']:6}")


if __name__ == "__main__":
    main()
