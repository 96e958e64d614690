"""The dynamic batching rules (meshgpu/core/batching.py) that the daemon's worker and the
simulator both follow: which waiting runs form the next batch, and how long a batch that
has a slot waits for more."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshgpu.core.batching import delay_left, pick_batch
from meshgpu.core.catalog import Batching

SIZES = st.lists(st.integers(min_value=1, max_value=40), max_size=30)
MAX_BATCH = st.integers(min_value=1, max_value=32)


def test_the_oldest_goes_then_later_runs_that_still_fit() -> None:
    assert pick_batch([], 8) == []
    assert pick_batch([3, 4, 2, 1], 8) == [0, 1, 3]  # 3+4 = 7: 2 no longer fits, 1 does
    assert pick_batch([3, 6, 2, 1], 8) == [0, 2, 3]  # 6 is passed over, not waited for
    assert pick_batch([12, 1, 1], 8) == [0]  # too large alone: runs alone, first
    assert pick_batch([1] * 10, 8) == list(range(8))


def test_a_partial_batch_is_cut_back_to_a_power_of_two_rows() -> None:
    assert pick_batch([1] * 7, 16, powers_of_two=True) == [0, 1, 2, 3]
    assert pick_batch([1] * 7, 7, powers_of_two=True) == list(range(7))  # full: kept
    assert pick_batch([2, 2, 1], 16, powers_of_two=True) == [0, 1]
    assert pick_batch([3], 16, powers_of_two=True) == [0]  # a lone run is never cut


@given(SIZES, MAX_BATCH, st.booleans())
def test_a_batch_keeps_order_and_never_exceeds_max_batch(
    sizes: list[int], max_batch: int, powers: bool
) -> None:
    chosen = pick_batch(sizes, max_batch, powers_of_two=powers)
    assert bool(chosen) == bool(sizes)
    if not sizes:
        return
    assert chosen[0] == 0  # the oldest always goes: nothing starves
    assert chosen == sorted(set(chosen))
    total = sum(sizes[i] for i in chosen)
    assert total <= max_batch or chosen == [0]


@given(SIZES, MAX_BATCH)
def test_every_run_left_out_would_not_fit(sizes: list[int], max_batch: int) -> None:
    chosen = pick_batch(sizes, max_batch)
    total = sum(sizes[i] for i in chosen)
    for index in set(range(len(sizes))) - set(chosen):
        assert total + sizes[index] > max_batch


@given(SIZES, MAX_BATCH)
def test_powers_of_two_take_a_prefix_of_the_same_choice(sizes: list[int], max_batch: int) -> None:
    anything = pick_batch(sizes, max_batch)
    powers = pick_batch(sizes, max_batch, powers_of_two=True)
    assert powers == anything[: len(powers)]
    whole = sum(sizes[i] for i in anything)
    total = sum(sizes[i] for i in powers)
    if powers != anything:  # cut back, newest first, to the power of two below `whole`
        target = 1 << (whole.bit_length() - 1)
        assert whole != max_batch and (total <= target or powers == [0])
        assert len(powers) == 1 or total + sizes[anything[len(powers)]] > target
    if all(sizes[i] == 1 for i in anything) and whole != max_batch:
        assert total & (total - 1) == 0  # single rows: exactly a power of two


def test_a_batch_waits_only_while_not_full_and_at_most_the_delay() -> None:
    two_ms = Batching(max_batch=8, max_delay_us=2000)
    assert delay_left(3, two_ms, slot_at=10.0, now=10.0) == pytest.approx(0.002)
    assert delay_left(3, two_ms, slot_at=10.0, now=10.0015) == pytest.approx(0.0005)
    assert delay_left(3, two_ms, slot_at=10.0, now=10.003) == 0.0  # waited enough
    assert delay_left(8, two_ms, slot_at=10.0, now=10.0) == 0.0  # full: no wait
    assert delay_left(1, Batching(max_batch=8, max_delay_us=0), 10.0, 10.0) == 0.0


@given(
    st.integers(min_value=0, max_value=64),
    MAX_BATCH,
    st.integers(min_value=0, max_value=10_000_000),
    st.floats(min_value=0, max_value=20, allow_nan=False),
)
def test_the_wait_never_passes_the_deadline(
    rows: int, max_batch: int, delay_us: int, elapsed: float
) -> None:
    batching = Batching(max_batch=max_batch, max_delay_us=delay_us)
    left = delay_left(rows, batching, slot_at=100.0, now=100.0 + elapsed)
    assert 0.0 <= left <= delay_us / 1e6 + 1e-9  # (floating-point rounding of slot_at)
    assert left == 0.0 or 100.0 + elapsed + left == pytest.approx(100.0 + delay_us / 1e6)
    if rows >= max_batch:
        assert left == 0.0
