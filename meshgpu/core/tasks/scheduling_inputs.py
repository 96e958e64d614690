"""What a change of a task's state means for the leader's next scheduling round.

Every node, leader or not, keeps the inputs of :mod:`~meshgpu.core.tasks.leading` current
as it sees entries change, so leadership moves with nothing to rebuild:

* the queue and the task book (``requeue``; ``book.py``): which tasks are open, queued,
  due for a retry (``retry_at``, with the retry policy's back-off) or orphaned by a dead
  worker (``orphaned_at``);
* what the strategies learn from outcomes (``observe_outcome``): each worker's circuit
  breaker, the adaptive latency model, and, as leader, the fairness counts.

Pure bookkeeping on the queue and the book: nothing here emits an effect. Kept apart from
the component so the reaction to a change (``TaskComponent._on_change``) reads as a list
of roles, and these rules, which decide assignments, can be read on their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshgpu.core.tasks import state as st
from meshgpu.core.tasks.state import Phase
from meshgpu.core.tasks.table import TaskEntry

if TYPE_CHECKING:
    from meshgpu.core.tasks.component import TaskComponent


def observe_outcome(
    tasks: TaskComponent, before: TaskEntry | None, after: TaskEntry, now: float
) -> None:
    """Feed breakers and the adaptive model from state changes this node sees."""
    state = after.state
    model = after.spec.model_digest
    previous = None if before is None else before.state
    if (
        previous is not None
        and previous.phase is Phase.ASSIGNED
        and previous.worker is not None
        and previous.worker != state.worker
        and state.phase is Phase.ASSIGNED
        and not st.is_steal(state)  # handed over unstarted: nothing failed
    ):
        # Reassigned away (the worker died or timed out): a failure of that worker for
        # the breaker and the adaptive model, though not for the task's retry budget.
        tasks.breakers[previous.worker].on_failure(now)
        tasks.learned.observe_failure(previous.worker, model)
    if state.phase is Phase.ASSIGNED:
        facts = tasks.book.get(after.task_id)
        if facts is None:
            return
        attempts = facts.assigned_seen
        if state.attempt not in attempts and state.worker is not None:
            attempts[state.attempt] = now
            if tasks.known_leader == tasks.node_id:
                # Fairness counts only what this node sees as leader: it sees every
                # assignment of its terms (and the open ones handed over), while as a
                # plain node it would see every task it runs itself and few others,
                # and as leader would then starve itself.
                counts = tasks.selection.assigned
                counts[state.worker] = counts.get(state.worker, 0) + 1
        return
    if state.worker is None or state.phase not in (Phase.DONE, Phase.RETRYING):
        return
    if st.is_hand_back(state) or st.is_input_wait(state):
        return  # a graceful leave, or inputs no holder served: not a failure of the worker
    started = tasks.book.assigned_at(after.task_id, state.attempt)
    elapsed = None if started is None else now - started
    if state.phase is Phase.DONE:
        tasks.breakers[state.worker].on_success(now)
        if elapsed is not None:
            tasks.learned.observe_success(state.worker, model, elapsed)
    else:
        tasks.breakers[state.worker].on_failure(now)
        tasks.learned.observe_failure(state.worker, model)


def requeue(tasks: TaskComponent, entry: TaskEntry, now: float) -> None:
    """Put ``entry`` where its new state belongs: out of every index once terminal; out of
    the queue while assigned to a live worker; queued (with its retry time) otherwise."""
    tid = entry.task_id
    state = entry.state
    book = tasks.book
    facts = book.get(tid)
    assert facts is not None  # recorded by the change that calls this
    if state.terminal:
        tasks.queue.forget(tid)
        book.open.discard(tid)
        facts.retry_at = facts.orphaned_at = facts.inputs_wanted_since = None
        facts.input_waits = 0
        facts.assigned_seen.clear()
        return
    book.open.add(tid)
    facts.orphaned_at = None
    if state.phase is Phase.ASSIGNED:
        facts.retry_at = None
        if state.worker in tasks.mesh.live_members():
            tasks.queue.remove(tid)
            return  # a wait for the inputs goes on: this attempt tells whether it ended
        facts.orphaned_at = now
        facts.inputs_wanted_since, facts.input_waits = None, 0  # the worker died: anew
    elif state.phase is Phase.RETRYING:
        if st.is_input_wait(state):
            # The attempt never ran: the wait goes on, bounded by time (leading.py), and
            # the next attempt backs off by the task's policy as the waits add up, so a
            # holder that refuses connections for a moment is not asked in a tight loop.
            if facts.inputs_wanted_since is None:
                facts.inputs_wanted_since = now
            facts.input_waits += 1
            facts.retry_at = now + entry.spec.retry.delay(facts.input_waits, tasks.rng)
        else:
            facts.inputs_wanted_since, facts.input_waits = None, 0  # a run ended otherwise
            if st.is_hand_back(state):
                facts.retry_at = now  # nothing failed: no back-off
            else:
                facts.retry_at = now + entry.spec.retry.delay(state.failures, tasks.rng)
    tasks.queue.push(tid, entry.spec.priority)
    tasks.schedule_at = min(tasks.schedule_at, now)
