"""``GET /metrics``: the node's numbers for Prometheus, through ``prometheus_client``.

One :class:`~prometheus_client.CollectorRegistry` per daemon (several daemons in one
process, as in tests, never share numbers). Two custom collectors read their numbers at
scrape time, so nothing is copied on the hot path:

- :class:`InferenceStats` counts the protocol's infer requests under Triton's names,
  labelled ``model`` and ``version`` (``nv_inference_request_success`` ...), failures
  also by Triton's ``reason`` (``FAILURE_REASONS``), refusals before the run included.
  The two counts of work, ``nv_inference_exec_count`` (device runs) and ``nv_inference_count``
  (rows of the first dimension they ran), are this node's executor's, as Triton counts
  its own model executions: with dynamic batching one run answers several requests,
  so their ratio is the average batch (a request may also run on another node: the
  entry node counts the request, the worker the execution).
- :class:`MeshCollector` reads the ``status`` snapshot (the same data as ``meshgpu
  status``) into ``meshgpu_*`` families: members by state, the leader's view, suspicions
  and deaths, tasks by state, datagrams, authentication failures, devices.

The journal's fsync latency is a plain :class:`~prometheus_client.Histogram` observed by
the group commit (durability.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

FSYNC_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 1.0)


def fsync_histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        "meshgpu_journal_fsync_seconds",
        "Time of one journal fsync (one group commit).",
        buckets=FSYNC_BUCKETS,
        registry=registry,
    )


FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
"""The ``reason`` label of ``nv_inference_request_failure``, Triton's four: ``REJECTED``
(no node could take the request now, 503, or its deadline passed first, 504: what
Triton's scheduler rejects), ``CANCELED`` (the client went away before the answer),
``BACKEND`` (the model's run failed: its input refused where it ran, 400, or a failure
of the run, 500) and ``OTHER`` (a bad request refused before anything ran, 400). Every
model shows all four, as Triton does, so a rate over one reason starts from zero."""


@dataclass
class _ModelStats:
    success: int = 0
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_REASONS, 0))
    inferences: int = 0
    executions: int = 0
    request_us: int = 0
    queue_us: int = 0
    compute_us: int = 0
    pending: int = 0


class InferenceStats(Collector):
    """Triton's per-model inference counters for the requests this node's HTTP port took;
    ``executions`` (when given) reads (model, version) -> (executions, inferences) of
    this node's device runs at scrape time, and replaces the per-request counts."""

    def __init__(
        self,
        executions: Callable[[], Mapping[tuple[str, str], tuple[int, int]]] | None = None,
    ) -> None:
        self.models: dict[tuple[str, str], _ModelStats] = {}
        self.executions = executions

    def _of(self, model: str, version: str) -> _ModelStats:
        stats = self.models.get((model, version))
        if stats is None:
            stats = self.models[(model, version)] = _ModelStats()
        return stats

    def started(self, model: str, version: str) -> None:
        self._of(model, version).pending += 1

    def refused(self, model: str, version: str) -> None:
        """A request was refused before it ran (a bad request, answered 400): a failure
        for ``OTHER`` reasons, never pending."""
        self._of(model, version).failures["OTHER"] += 1

    def finished(
        self,
        model: str,
        version: str,
        *,
        ok: bool,
        batch: int,
        total_s: float,
        compute_s: float | None,
        reason: str = "OTHER",
    ) -> None:
        """One request ended. ``compute_s``: the run on the worker when known (a direct
        run); the rest of ``total_s`` is the queue (table, transfers). A request whose run
        time is not known counts in the request duration only. ``reason``: why it failed
        (one of ``FAILURE_REASONS``) when not ``ok``."""
        stats = self._of(model, version)
        stats.pending -= 1
        if not ok:
            stats.failures[reason] += 1
            return
        stats.success += 1
        stats.inferences += batch
        stats.executions += 1
        stats.request_us += int(total_s * 1e6)
        if compute_s is not None:
            stats.compute_us += int(compute_s * 1e6)
            stats.queue_us += int(max(0.0, total_s - compute_s) * 1e6)

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version"]
        families: dict[str, Metric] = {
            "success": CounterMetricFamily(
                "nv_inference_request_success", "Successful inference requests.", labels=labels
            ),
            "inferences": CounterMetricFamily(
                "nv_inference_count",
                "Inferences performed (a batch of N counts N).",
                labels=labels,
            ),
            "executions": CounterMetricFamily(
                "nv_inference_exec_count", "Model executions performed.", labels=labels
            ),
            "request_us": CounterMetricFamily(
                "nv_inference_request_duration_us",
                "Cumulative end-to-end inference request time in microseconds.",
                labels=labels,
            ),
            "queue_us": CounterMetricFamily(
                "nv_inference_queue_duration_us",
                "Cumulative time requests waited before running, in microseconds.",
                labels=labels,
            ),
            "compute_us": CounterMetricFamily(
                "nv_inference_compute_infer_duration_us",
                "Cumulative time spent running the model, in microseconds.",
                labels=labels,
            ),
        }
        failure = CounterMetricFamily(
            "nv_inference_request_failure",
            "Failed inference requests, by reason.",
            labels=[*labels, "reason"],
        )
        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count",
            "Inference requests received and not answered yet.",
            labels=labels,
        )
        runs = self.executions() if self.executions is not None else None
        for (model, version), stats in sorted(self.models.items()):
            for attribute, family in families.items():
                if runs is not None and attribute in ("executions", "inferences"):
                    continue
                family.add_metric([model, version], getattr(stats, attribute))  # type: ignore[attr-defined]
            for reason, count in stats.failures.items():
                failure.add_metric([model, version, reason], count)
            pending.add_metric([model, version], stats.pending)
        for (model, version), (executions, inferences) in sorted((runs or {}).items()):
            families["executions"].add_metric([model, version], executions)  # type: ignore[attr-defined]
            families["inferences"].add_metric([model, version], inferences)  # type: ignore[attr-defined]
        yield from families.values()
        yield failure
        yield pending


MEMBER_STATES = ("alive", "suspect", "dead", "left")


class MeshCollector(Collector):
    """``meshgpu_*`` families from a ``status`` snapshot taken at scrape time."""

    def __init__(self, status: Callable[[], Mapping[str, Any]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        status = self.status()
        members = GaugeMetricFamily(
            "meshgpu_members", "Members this node knows, by SWIM state.", labels=["state"]
        )
        states = {state: 0 for state in MEMBER_STATES}
        for member in status["members"]:
            states[member["state"]] = states.get(member["state"], 0) + 1
        for state, count in sorted(states.items()):
            members.add_metric([state], count)
        yield members
        leader = GaugeMetricFamily(
            "meshgpu_leader_view",
            "The leader's view number as this node sees it (label: the leader).",
            labels=["leader"],
        )
        leader.add_metric([status["leader"] or ""], status["view"])
        yield leader
        node_counters = status["counters"]["node"]
        daemon_counters = status["counters"]["daemon"]
        for name, value, help_text in (
            ("suspicions", node_counters.get("suspicions", 0), "Members this node suspected."),
            (
                "deaths",
                node_counters.get("deaths_to_suspicions", 0),
                "Suspicions that ended in a death.",
            ),
            ("datagrams_sent", daemon_counters.get("datagrams_sent", 0), "Datagrams sent."),
            (
                "datagrams_received",
                daemon_counters.get("datagrams_received", 0),
                "Datagrams received.",
            ),
            (
                "datagrams_dropped",
                daemon_counters.get("datagrams_rejected", 0)
                + daemon_counters.get("datagrams_dropped_early", 0)
                + daemon_counters.get("datagram_send_errors", 0)
                + daemon_counters.get("datagram_receive_errors", 0),
                "Datagrams rejected on receipt, dropped unread past a source's budget, "
                "or lost to socket errors.",
            ),
            (
                "auth_failures",
                status["counters"]["auth"].get("rejected", 0),
                "Datagrams and requests refused by the mesh key's authentication.",
            ),
        ):
            counter = CounterMetricFamily(f"meshgpu_{name}", help_text)
            counter.add_metric([], value)
            yield counter
        tasks = GaugeMetricFamily(
            "meshgpu_tasks", "Tasks in this node's table, by state.", labels=["state"]
        )
        for state, count in sorted(status["tasks"].items()):
            tasks.add_metric([state], count)
        yield tasks
        queue = GaugeMetricFamily("meshgpu_queue_length", "Tasks waiting for a worker.")
        queue.add_metric([], status["queue_length"])
        yield queue
        node = status["node"]
        usable = GaugeMetricFamily(
            "meshgpu_device_usable",
            "1 for each device this node runs on that passed its probe.",
            labels=["device"],
        )
        for device in node["usable_devices"]:
            usable.add_metric([device], 1)
        yield usable
        own = next((m for m in status["members"] if m["node_id"] == node["node_id"]), None)
        load = (own or {}).get("load") or {}
        for name, key, help_text in (
            ("device_utilisation", "utilisation", "This node's device utilisation (0 to 1)."),
            ("device_memory_used_bytes", "memory_used", "Device memory in use."),
            ("device_memory_total_bytes", "memory_total", "Device memory in all."),
            ("active_tasks", "active_tasks", "Tasks running on this node."),
        ):
            gauge = GaugeMetricFamily(f"meshgpu_{name}", help_text)
            gauge.add_metric([], float(load.get(key) or 0))
            yield gauge


def new_registry(
    status: Callable[[], Mapping[str, Any]], stats: InferenceStats
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(stats)
    registry.register(MeshCollector(status))
    return registry
