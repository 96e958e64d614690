"""Where a worker stores a result before it reports the attempt ok
(core/tasks/result_push.py; the daemon's data plane follows it)."""

from __future__ import annotations

from meshgpu.core.tasks.result_push import (
    PUSH_ROUNDS,
    keeps_own_copy,
    kept,
    needs_another_holder,
    owes_own_copy,
    retry_delay,
    round_targets,
    serves_result,
    takes_result,
)


def test_a_round_targets_named_and_current_holders_and_the_worker() -> None:
    assert round_targets(["h1"], {"h2"}, "w", []) == {"h1", "h2", "w"}
    assert round_targets(["h1", "h2"], set(), "w", ["h1", "w"]) == {"h2"}
    assert round_targets([], set(), "w", ["w"]) == set()


def test_a_worker_that_keeps_no_copy_of_its_own_is_no_target_unless_named() -> None:
    assert round_targets(["h1", "h2"], set(), "w", [], own_copy=False) == {"h1", "h2"}
    assert round_targets(["w", "h1"], set(), "w", [], own_copy=False) == {"w", "h1"}


def test_the_worker_keeps_its_own_copy_while_fewer_than_two_others_take_one() -> None:
    assert keeps_own_copy(set())
    assert keeps_own_copy({"h1"})
    assert not keeps_own_copy({"h1", "h2"})
    assert owes_own_copy([], "w")
    assert owes_own_copy(["h1"], "w")
    assert owes_own_copy(["h1", "w"], "w")
    assert not owes_own_copy(["h1", "h2"], "w")


def test_only_a_copy_off_the_worker_spares_another_holder() -> None:
    assert needs_another_holder([], "w")
    assert needs_another_holder(["w"], "w")
    assert not needs_another_holder(["h1"], "w")
    assert not needs_another_holder(["w", "h1"], "w")


def test_the_workers_copy_alone_is_kept_only_when_no_other_member_is_live() -> None:
    assert not kept([], "w", others_live=False)
    assert not kept(["w"], "w", others_live=True)
    assert kept(["w"], "w", others_live=False)
    assert kept(["h1"], "w", others_live=True)


def test_rounds_wait_longer_each_time() -> None:
    delays = [retry_delay(n) for n in range(PUSH_ROUNDS)]
    assert delays[0] == 0.0
    assert delays == sorted(delays) and len(set(delays)) == PUSH_ROUNDS


def test_a_holder_keeps_the_newest_attempt_it_was_pushed() -> None:
    assert takes_result(None, 2)
    assert takes_result(2, 2)  # the same push again: the same bytes
    # A newer attempt replaces it: the older one's report may never have been recorded
    # (the leader died with it), and keeping it for good failed every later attempt.
    assert takes_result(1, 2)
    assert not takes_result(2, 1)  # an older one never replaces a newer one


def test_a_holder_serves_the_attempt_a_reader_names_or_a_newer_one() -> None:
    assert serves_result(1, 1) and serves_result(1, None) and serves_result(None, 3)
    assert serves_result(2, 1)  # a newer attempt's copy is a whole result of the task
    assert not serves_result(1, 2)
