"""The warm inputs and the early results draw on one budget of tensors kept in memory
(memory_budget.py): what the two hold together stays under the node's cap."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import trio

from meshgpu.daemon.early_results import EarlyResultError, EarlyResults
from meshgpu.daemon.memory_budget import MemoryBudget
from meshgpu.daemon.warm_inputs import WarmInputs
from tests.daemon.fakes import data_plane

MIB = 1 << 20


def test_a_data_planes_warm_inputs_and_early_results_share_one_budget(tmp_path: Path) -> None:
    plane = data_plane(tmp_path).plane
    assert plane.warm.budget is plane.early.budget is plane.memory


def test_what_one_part_keeps_leaves_the_other_less_room() -> None:
    budget = MemoryBudget(4 * MIB)
    warm, early = WarmInputs(budget=budget), EarlyResults(budget=budget)
    receiver = warm.receiver(3 * MIB, now=0)
    assert receiver is not None and budget.used_bytes == 3 * MIB
    early.start("r", 1, 4 * MIB, 0.0)
    early.add("r", 1, 0, b"a" * MIB, 0.0)
    assert early.used_bytes == MIB and budget.used_bytes == 4 * MIB
    early.add("r", 1, MIB, b"a" * MIB, 0.0)  # the warm copy holds the rest: no room
    assert early.size("r") is None and early.used_bytes == 0
    assert budget.used_bytes == 3 * MIB
    assert warm.receiver(2 * MIB, now=0) is None
    warm.release(receiver)
    assert budget.used_bytes == 0


async def test_the_sum_of_both_parts_stays_under_the_cap() -> None:
    """Random uploads and results, kept, taken, dropped and failed: at every step the
    two parts together hold at most the cap, and the budget counts exactly what they
    hold."""
    rng = random.Random(13)
    cap = 16 * MIB
    budget = MemoryBudget(cap)
    warm, early = WarmInputs(budget=budget), EarlyResults(budget=budget)
    receivers = []
    results: dict[str, int] = {}  # key -> bytes pushed so far
    peak = 0
    for step in range(2000):
        action = rng.randrange(6)
        if action == 0:
            receiver = warm.receiver(rng.randrange(1, 6) * MIB, now=step)
            if receiver is not None:
                receivers.append(receiver)
        elif action == 1 and receivers:
            warm.release(receivers.pop(rng.randrange(len(receivers))))
        elif action == 2:
            key = f"r{rng.randrange(4)}"
            early.start(key, step, 32 * MIB, float(step))
            results[key] = 0
        elif action == 3 and results:
            key = rng.choice(sorted(results))
            early.add(key, early.attempt(key) or 0, results[key], b"x" * MIB, float(step))
            results[key] += MIB
        elif action == 4 and results:
            key = rng.choice(sorted(results))
            offset = rng.randrange(0, results[key] + 1, MIB) if results[key] else 0
            with trio.move_on_after(0):
                with contextlib.suppress(EarlyResultError):
                    await early.take(key, offset, MIB)
        elif action == 5 and results:
            early.drop(rng.choice(sorted(results)), "dropped")
        assert budget.used_bytes == warm.used_bytes + early.used_bytes
        assert budget.used_bytes <= cap
        peak = max(peak, budget.used_bytes)
    assert peak > cap // 2  # the run did press against the cap
