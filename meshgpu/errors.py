"""The one error hierarchy of meshgpu.

Every error meshgpu raises on purpose is a :class:`MeshError`. Each subclass names a kind
of failure; the message says what was wrong and, where it can, what to do about it.
Modelled on h11's ``LocalProtocolError`` / ``RemoteProtocolError`` split: errors caused by
what a peer sent are :class:`RemoteProtocolError`, errors caused by our own caller are the
others.
"""

from __future__ import annotations


class MeshError(Exception):
    """Base class of every error meshgpu raises deliberately."""

    def answer_fields(self) -> dict[str, int | str]:
        """Fields an error answer of the TCP API carries beside its message, for a peer
        that acts on them (never parsed out of the text); none by default."""
        return {}


class ConfigError(MeshError):
    """A configuration value or scenario file is invalid."""


class RemoteProtocolError(MeshError):
    """A peer sent something we cannot accept (malformed, oversized, unknown version)."""


class DecodeError(RemoteProtocolError):
    """A datagram or frame could not be decoded into a known message."""


class IncompatiblePeerError(DecodeError):
    """A peer of another protocol version or another mesh, or one sealing with a key the
    mesh removed; the message names both sides' versions (or meshes, or keys).
    ``reason``: ``bad_version``, ``other_mesh``, ``removed_key`` or, on the side that was
    refused, ``refused_by_peer``."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class AuthenticationError(RemoteProtocolError):
    """A datagram or frame failed authentication or was a replay. ``reason`` is the
    refusal's counter name in auth/envelope.py (``keyed_peer_but_no_key``,
    ``unauthenticated``, ``bad_tag``, ``replay``...): what the client tells its user
    depends on it."""

    def __init__(self, message: str, reason: str = "rejected") -> None:
        super().__init__(message)
        self.reason = reason


class TaskError(MeshError):
    """A task could not be accepted, run or delivered."""


class PermanentTaskError(TaskError):
    """A task failed for a reason that retrying cannot fix (bad model, bad input)."""


class InferenceError(MeshError):
    """Base class of inference-engine errors."""


class ModelError(InferenceError, PermanentTaskError):
    """The model is corrupt, truncated, or otherwise cannot be loaded."""


class InputError(InferenceError, PermanentTaskError):
    """A feed is missing, or has the wrong shape or dtype."""


class UnsupportedOperatorError(InferenceError, PermanentTaskError):
    """The model uses an operator (or an attribute of one) this backend cannot run."""


class DeviceError(InferenceError):
    """A device is missing, out of memory, or failed while running."""


class ClientError(MeshError):
    """The client could not reach the mesh or the mesh refused a request."""


class FrameTooLargeError(DecodeError):
    """A peer announced a TCP frame larger than the configured limit."""


class DigestMismatchError(RemoteProtocolError):
    """Bytes fetched from a peer do not hash to the sha256 digest they were asked for."""


class InputsUnavailableError(MeshError):
    """No holder of a task's inputs served them: none was live, or each one tried failed.
    A worker reports it as ``inputs_unavailable``: the task waits for a holder rather
    than counting a failed attempt (docs/task-queue.md, "Waiting for the inputs")."""


class StorageError(MeshError):
    """The daemon's data dir (journal, payloads, model cache) could not be read or written."""


class OtherAttemptKept(StorageError):
    """A node refused an attempt's result of a task, or a read of it: it keeps another
    attempt's result, whole (core/tasks/result_push.py: a newer one's where a push was
    refused, an older one's where a read was). ``kept_attempt`` says which, in the
    error answer too (``answer_fields``): a refused worker reports that attempt's result
    instead of its own, a reader that finds no other copy reads that one
    (docs/daemon.md, "One attempt's result per holder")."""

    def __init__(self, message: str, kept_attempt: int) -> None:
        super().__init__(message)
        self.kept_attempt = kept_attempt

    def answer_fields(self) -> dict[str, int | str]:
        return {"kept_attempt": self.kept_attempt}


class DiskFullError(StorageError):
    """A write to the data dir failed because the disk is full (ENOSPC/EDQUOT)."""


class IdentityError(MeshError):
    """This node's identity cannot be used: its data dir is in use or its id is taken."""


class DataDirLockedError(IdentityError):
    """Another daemon already runs on this data dir."""


class DuplicateIdentityError(IdentityError):
    """Another live node uses this node's id (usually a data dir copied between machines)."""


class SimulationError(MeshError):
    """A simulated run could not go on (a node raised, or the scenario cannot be applied)."""


class MeshKeyError(ClientError):
    """A daemon answered, but this client's mesh key does not match the mesh's: it has
    none, or another one, or the mesh is open and the client has a key."""


class IncompatibleDaemonError(ClientError):
    """A daemon answered, but speaks another protocol version than this client (or
    belongs to another mesh): it refused the client's first request, naming both."""


class KeyringError(MeshError):
    """A keyring operation was refused (the primary key removed, an unknown or ambiguous
    key id, a removed key installed again, a key sent in clear) or the keyring file in
    the data dir cannot be read; the message says which and what to do."""


class RequestFailedError(ClientError):
    """A peer answered a request with an error; ``kind`` names the error class it raised,
    ``fields`` what else its answer carried (``MeshError.answer_fields``)."""

    def __init__(
        self, message: str, kind: str = "MeshError", fields: dict[str, object] | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.fields = fields or {}


class TaskFailedError(TaskError):
    """A submitted task ended FAILED; ``reason`` is the mesh's explanation (e.g. the
    inference engine's message for a bad model or input), ``worker`` the node that ran it."""

    def __init__(self, task_id: str, reason: str, worker: str | None = None) -> None:
        where = f" on {worker}" if worker else ""
        super().__init__(f"task {task_id} failed{where}: {reason}")
        self.task_id = task_id
        self.reason = reason
        self.worker = worker


class ResultTimeoutError(ClientError, TimeoutError):
    """A result did not arrive within the caller's timeout; the task goes on in the mesh
    and its result can still be collected later by task id."""
