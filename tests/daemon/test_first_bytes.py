"""The gate's budget of answered refusals per address (meshgpu/first_bytes.py)."""

from __future__ import annotations

from meshgpu.first_bytes import AnswerBudget


def test_an_address_is_answered_a_few_times_a_second() -> None:
    budget = AnswerBudget(per_s=2)
    assert [budget.may_answer("a", 100.0 + i * 0.1) for i in range(4)] == [True, True, False, False]
    assert budget.may_answer("b", 100.35)  # another address has its own
    assert budget.may_answer("a", 101.0)  # a second after its first answer: a new second
    assert budget.may_answer("a", 101.5)
    assert not budget.may_answer("a", 101.9)


def test_a_flood_from_many_addresses_forgets_the_quiet_ones_not_the_flooding_one() -> None:
    budget = AnswerBudget(per_s=1, max_addresses=3)
    assert budget.may_answer("flood", 0.0)
    for i, client in enumerate(["x", "y", "z", "w"]):
        assert not budget.may_answer("flood", 0.1 + i * 0.1)  # refused: still remembered
        assert budget.may_answer(client, 0.1 + i * 0.1)
    assert not budget.may_answer("flood", 0.6)  # not forgotten, not answered again
    assert budget.may_answer("x", 0.7)  # forgotten (refused longest ago): answered anew
