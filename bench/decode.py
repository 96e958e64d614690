"""Decoding the membership updates every node receives again and again
(``meshgpu.core.membership.wire``): CPU nanoseconds per ``from_fields``, for a value seen
before (the decoding cache answers) and for values never seen (each is checked and
built), best of seven runs.

CPU time (``time.process_time``), not wall time: on a shared machine the wall clock
counts the waits for a core. To compare two versions of the code, run this script with
``PYTHONPATH`` at each tree in turn.

Usage::

    python bench/decode.py [--json] [--number 200000]

Benchmarks are not tests: this prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
import timeit
from collections.abc import Callable
from typing import Any


def cpu_ns(call: Callable[[], Any], number: int) -> float:
    timer = timeit.Timer(call, timer=time.process_time)
    return min(timer.repeat(number=number, repeat=7)) / number * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--number", type=int, default=200_000)
    args = parser.parse_args()

    from meshgpu.core.membership.wire import Ack, Alive, Dead, MemberRecord, Ping, Suspect

    fresh = itertools.count(1 << 20)  # a new incarnation or sequence number per call
    samples: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
        "Alive": (
            lambda: Alive.from_fields(["n001", "10.0.0.1", 7946, 5]),
            lambda: Alive.from_fields(["n001", "10.0.0.1", 7946, next(fresh)]),
        ),
        "MemberRecord": (
            lambda: MemberRecord.from_fields(["n001", "10.0.0.1", 7946, 0, 5]),
            lambda: MemberRecord.from_fields(["n001", "10.0.0.1", 7946, 0, next(fresh)]),
        ),
        "Suspect": (
            lambda: Suspect.from_fields(["n001", 5, "n002"]),
            lambda: Suspect.from_fields(["n001", next(fresh), "n002"]),
        ),
        "Dead": (
            lambda: Dead.from_fields(["n001", 5, "n002"]),
            lambda: Dead.from_fields(["n001", next(fresh), "n002"]),
        ),
        "Ping": (
            lambda: Ping.from_fields([7, "n002"]),
            lambda: Ping.from_fields([next(fresh), "n002"]),
        ),
        "Ack": (lambda: Ack.from_fields([7]), lambda: Ack.from_fields([next(fresh)])),
    }
    rows = [
        {
            "update": name,
            "seen_before_ns": round(cpu_ns(seen, args.number)),
            "new_ns": round(cpu_ns(new, args.number)),
        }
        for name, (seen, new) in samples.items()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'update':14} {'seen before ns':>15} {'new ns':>8}")
    for row in rows:
        print(f"{row['update']:14} {row['seen_before_ns']:15} {row['new_ns']:8}")


if __name__ == "__main__":
    main()
