"""What a submission gives back: a handle that waits for its task's one outcome.

An outcome arrives from the mesh at least once (several after a failover); the client
keeps the first per task id and drops the rest, so each handle resolves exactly once
and every later ``result()`` returns the same arrays (or raises the same error).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio

from meshgpu.daemon.payloads import decode_tensors
from meshgpu.errors import (
    ClientError,
    ConfigError,
    MeshError,
    ResultTimeoutError,
    TaskFailedError,
)

Outputs = dict[str, np.ndarray]


def wait_seconds(timeout: object) -> float:
    """A ``result``/``wait`` timeout as seconds (None: for ever); a ConfigError for
    anything but a number >= 0 (trio's ``ValueError: `seconds` must be non-negative``
    and a ``TypeError`` from a comparison came out of the client's loop)."""
    if timeout is None:
        return math.inf
    seconds = math.nan
    if isinstance(timeout, numbers.Real) and not isinstance(timeout, bool):
        seconds = float(timeout)
    if not seconds >= 0:
        raise ConfigError(
            f"timeout is a number of seconds >= 0 (None: wait for ever), got {timeout!r}"
        )
    return seconds


def client_not_open(entered: bool) -> ClientError:
    """Why an AsyncClient refuses a call outside its ``async with`` (``entered``: it was
    entered and has been closed since); without it the call waited for ever for a
    connection that no task was there to make."""
    if entered:
        return ClientError("this meshgpu client is closed; open a new one")
    return ClientError(
        "this AsyncClient was not entered: use it inside `async with AsyncClient(...) as "
        "client:` (or the blocking meshgpu.Client)"
    )


@dataclass(frozen=True)
class Outcome:
    """The end of one task as the client received it."""

    task_id: str
    state: str
    """``done`` or ``failed`` (mesh outcomes), or ``lost`` when the client lost the mesh."""
    worker: str | None
    outputs: Outputs | None = field(default=None, repr=False)
    error: MeshError | None = None

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Outcome:
        """From one ``results`` response (docs/client-api.md, section 3)."""
        task_id = str(message["task_id"])
        worker = message.get("worker")
        if message.get("state") == "done":
            try:
                # Copies: the decoded arrays would be read-only views of frame bytes.
                decoded = decode_tensors(message.get("outputs"))
                outputs = {name: array.copy() for name, array in decoded.items()}
            except MeshError as error:
                return cls(task_id, "failed", worker, error=TaskFailedError(task_id, str(error)))
            return cls(task_id, "done", worker, outputs=outputs)
        reason = str(message.get("reason") or "no reason given")
        return cls(task_id, "failed", worker, error=TaskFailedError(task_id, reason, worker))


class AsyncTaskHandle:
    """One submitted task: ``await handle.result(timeout)`` for its outputs.

    ``copies`` is how many nodes journaled the task before the acknowledgement (fewer
    than ``replicas`` when fewer nodes were alive). ``label``: the name it was submitted
    with. ``deferred``: its outcome is marked collected in the mesh by the caller
    (``collected``), not on receipt.
    """

    def __init__(
        self, task_id: str, copies: int = 0, replicas: int = 0, *, deferred: bool = False
    ) -> None:
        self.task_id = task_id
        self.copies = copies
        self.replicas = replicas
        self.deferred = deferred
        self.attached = False
        """Made by ``attach`` from an id alone: the mesh never acknowledged it to this
        client, so it may hold no such task."""
        self.label: str | None = None
        self.acknowledged = False
        """A deferred outcome already passed to ``collected``."""
        self.from_mesh = False
        """The outcome came from the mesh (not made up by the client: a refused
        request, the mesh lost): only such an outcome is acknowledged."""
        self._outcome: Outcome | None = None
        self._resolved = trio.Event()
        """Set with the outcome, or when the client closed without one (``orphan``)."""
        self._orphaned = False
        self._callbacks: list[Callable[[Outcome], None]] = []

    def __repr__(self) -> str:
        state = self._outcome.state if self._outcome else "waiting"
        return f"<task {self.task_id} {state}>"

    def done(self) -> bool:
        return self._outcome is not None

    @property
    def outcome(self) -> Outcome | None:
        return self._outcome

    @property
    def worker(self) -> str | None:
        """The node that ran the task (known once it is done)."""
        return None if self._outcome is None else self._outcome.worker

    def resolve(self, outcome: Outcome) -> bool:
        """Record the first outcome; False (and nothing changes) for any later one."""
        if self._outcome is not None:
            return False
        self._outcome = outcome
        self._resolved.set()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(outcome)
        return True

    def orphan(self) -> None:
        """The client closed before the outcome came: waiters are woken with an error
        (the task goes on in the mesh) instead of waiting for ever."""
        if self._outcome is None:
            self._orphaned = True
            self._resolved.set()

    def reopen(self) -> None:
        """Its client was entered again: wait for the outcome again."""
        if self._orphaned:
            self._orphaned = False
            self._resolved = trio.Event()

    def on_resolved(self, callback: Callable[[Outcome], None]) -> None:
        """Call ``callback(outcome)`` once the outcome is in (now, if it is): no task
        waits, which is what ``map`` needs for thousands of members at once."""
        if self._outcome is not None:
            callback(self._outcome)
        else:
            self._callbacks.append(callback)

    async def wait(self, timeout: float | None = None) -> Outcome:
        """The outcome, waiting up to ``timeout`` seconds (forever if None)."""
        with trio.move_on_after(wait_seconds(timeout)):
            await self._resolved.wait()
        if self._outcome is None and self._orphaned:
            raise ClientError(
                f"the client closed before task {self.task_id} had a result; it goes on in "
                "the mesh: collect it with attach(task_id) on an open client, or with "
                f"`meshgpu collect {self.task_id}`"
            )
        if self._outcome is None and self.attached:
            # An attached id this client never saw acknowledged: "it goes on in the
            # mesh" was said of a mistyped id too, which never has a result.
            raise ResultTimeoutError(
                f"task {self.task_id} has no result after {timeout} s; the mesh never "
                "acknowledged it to this client, so it may hold no such task: "
                "client.tasks() (or `meshgpu tasks`) lists the ids a peer's table holds; "
                "a mistyped id, one of another mesh or a result collected before never "
                "comes"
            )
        if self._outcome is None:
            raise ResultTimeoutError(
                f"task {self.task_id} has no result after {timeout} s; it goes on in the "
                "mesh: wait again, or collect it later with client.attach(task_id)"
            )
        return self._outcome

    async def result(self, timeout: float | None = None) -> Outputs:
        """The task's outputs by name; raises the task's error (with the mesh's reason)."""
        outcome = await self.wait(timeout)
        if outcome.error is not None:
            raise outcome.error
        assert outcome.outputs is not None
        return outcome.outputs


@dataclass(frozen=True)
class Completed:
    """One item of ``map``: which input (``index``), its task and its outputs or error."""

    index: int
    task_id: str | None
    outputs: Outputs | None = field(default=None, repr=False)
    worker: str | None = None
    error: MeshError | None = None
