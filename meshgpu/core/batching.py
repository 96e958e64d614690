"""Dynamic batching rules: which waiting runs of one model go to the device together, and
how long a run that holds a device slot waits for more (docs/task-queue.md, "Dynamic
batching on the worker").

Triton's dynamic batcher is the model (``max_batch_size``, ``max_queue_delay_microseconds``,
``preferred_batch_size``). The daemon's worker (``daemon/batching.py``) and the simulator's
(``sim/task_driver.py``) both ask these functions; they differ only in what they queue
(tensors and their rows there, task specs and their member counts here in the simulator)
and in how they wait (trio there, scheduled calls in the simulator).

The rules:

* **Oldest first, then whatever still fits.** The oldest waiting run always goes (alone if
  it is larger than ``max_batch`` by itself); every later run, in arrival order, joins
  while the batch stays within ``max_batch`` rows. A run too large for what is left is
  passed over, not waited for: it heads the next batch, so it is never starved.
* **Powers of two, for engines that plan per input shape.** With ``powers_of_two`` a
  batch that is not full is cut back, newest first, until it holds no more rows than
  the largest power of two below its size (exactly that many when each run has one
  row): the OpenCL executor builds one plan per input shape, so batches of every size
  from 2 to 16 would build 15 plans; powers of two build four. Triton's
  ``preferred_batch_size`` serves the same purpose. A device with no per-shape cost (the
  simulator's profiles, onnxruntime) takes any size.
* **Wait at most ``max_delay`` from the moment the batch has a slot**, and only while fewer
  than ``max_batch`` rows wait: a full batch never waits, and with no delay (the default)
  a batch forms only from runs that were waiting anyway, so a lone task is never held
  back.

Rejected: waiting for a full batch before taking a slot (an idle device would sit idle),
and strict FIFO that closes a batch at the first run that does not fit (on a queue of
mixed sizes it sends smaller batches for no gain in fairness, since the run passed over
heads the next batch anyway).
"""

from __future__ import annotations

from collections.abc import Sequence

from meshgpu.core.catalog import Batching


def pick_batch(sizes: Sequence[int], max_batch: int, *, powers_of_two: bool = False) -> list[int]:
    """The positions (ascending) in ``sizes`` (the rows of each waiting run, oldest first)
    of the runs that form the next batch; empty only when nothing waits."""
    if not sizes:
        return []
    chosen = [0]
    total = sizes[0]
    for index in range(1, len(sizes)):
        if total >= max_batch:
            break
        if total + sizes[index] <= max_batch:
            chosen.append(index)
            total += sizes[index]
    if powers_of_two and len(chosen) > 1 and total != max_batch:
        target = 1 << (total.bit_length() - 1)
        while total > target and len(chosen) > 1:
            total -= sizes[chosen.pop()]
    return chosen


def delay_left(waiting_rows: int, batching: Batching, slot_at: float, now: float) -> float:
    """Seconds a run that got its device slot at ``slot_at`` still waits for more runs
    before it gathers its batch (0: gather now), with ``waiting_rows`` rows waiting."""
    if not batching.max_delay_us or waiting_rows >= batching.max_batch:
        return 0.0
    return max(0.0, slot_at + batching.max_delay_us / 1e6 - now)
