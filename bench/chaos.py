"""A fault campaign on real daemons: a seeded nemesis against a steady workload, checked
end to end (docs/reliability.md).

Run as root on Linux::

    python bench/chaos.py --minutes 2 --seed 7 --nodes 5 --json

``--nodes`` daemons (``meshgpu join``, onnxruntime backend, a mesh key, mDNS discovery)
each run in a network namespace on one bridge (the lab of tests/netns/lab.py), plus one
more namespace for the client. The client submits the digits model's rows through the
public Python client (``AsyncClient.submit_many``, replicas=2) at a steady pace and keeps
every task's handle. A nemesis, drawn from ``--seed``, applies one fault at a time for a
few seconds, then heals it:

* ``partition_halves``: the daemons split into two random sides (bridge ports moved);
* ``partition_leader``: the current leader alone on the other side;
* ``partition_bridge``: two sides that cannot reach each other and one node that reaches
  both (blackhole routes in each namespace: a non-transitive partition);
* ``netem_loss``, ``netem_delay``, ``netem_duplicate``, ``netem_reorder``: packet faults
  on one daemon's link, both directions, through the lab's userspace stand-in for ``tc
  netem`` (tests/netns/impairment.py: an AF_PACKET relay in front of the host whose
  random decisions come from a seed drawn from ``--seed``); the frames it dropped,
  duplicated and reordered are summed in ``relay_frames``;
* ``pause``: SIGSTOP, then SIGCONT (a frozen process);
* ``kill_restart``: SIGKILL, then a restart with its journal;
* ``wipe_restart``: SIGKILL, then a restart with an empty data directory;
* ``disk_full``: the daemon whose data directory is a small tmpfs finds it full;
* ``kill_entry``: the client's own entry node is killed (restarted with its journal).

After the last fault heals, the workload stops submitting and waits (``--drain-s``) for
every acknowledged task. The checker then counts, over the whole history: ``lost``
(acknowledged, never resolved, and no live node's table lists it), ``unresolved``
(acknowledged and never resolved), ``duplicate_deliveries`` (a task id handed to the
workload twice: two acknowledgements naming one id, or one handle resolved twice),
``wrong_outputs`` (a result that differs from onnxruntime's on the same row),
``duplicate_executions`` (runs on a device beyond one per task: each daemon logs every
run that takes a device slot, task id and attempt, to its log file, which outlives kills
and wiped data directories; ``executions`` splits them into ``retried`` (a later attempt
of the task: the mesh gave it again after a fault), ``same_attempt`` (one attempt run
twice: a restart replayed it), ``unacknowledged`` (runs of tasks the client never saw
acknowledged: a batch whose answer was lost) and ``done_without_run`` (a result the
client got with no run on record: a hole in the record, never expected),
``http_done_without_run`` (the same for the HTTP clients' answers: each names its task
id, a direct run's, a table task's or a coalesced group member's, and each must have
its run, or its group's, on record) and ``http_answers_per_run`` (answers per run on
record: above 1 where coalescing joined concurrent requests into one group run)) and
``longest_stall_s`` (the longest time without a result while tasks were outstanding).
Every HTTP answer is compared with onnxruntime's output for its row (``http.wrong``),
and an id answered twice (``task_ids_answered_twice``) or an answer without an id
(``answers_without_task_id``) is counted.
With ``--hostile`` there is no nemesis: the workload runs ``--hostile-s`` seconds quiet,
then as long again while every daemon's ports are under a barrage (:func:`barrage`:
random and truncated UDP datagrams, garbage frames, a lying length prefix, a length over
the limit, a frame of the maximum size, thousands of idle TCP connections, clients that
send a byte a second, and garbage, truncated and idle HTTP requests; ``--parts`` picks
some of them, and the control part ``burn`` sends nothing and only spends a tenth of a
core per attacker), ``--rounds`` times alternated. The barrage is paced: each kind has
a rate per attacked daemon (:data:`RATES`, ``--hostile-rate datagrams=400,frames=40,...``);
``--flood`` adds a third phase to every round in which every kind goes as fast as the
attackers can send it. ``hostile`` reports the throughput of the hostile (and flood)
phases against the quiet ones, each daemon's peak RSS and open files against its quiet
level, where the CPU went in each kind of phase (the daemons' and the workload's user
and system seconds, the attackers', and the user, system, softirq and idle time of the
mesh's and the attackers' cores, which shows what other jobs and the kernel took), what
the attackers sent per second, and the change of every daemon counter in each kind of
phase (what was dropped; suspicions and leader changes, the sign of a daemon too slow
to answer its probes).
The attackers stand for other machines: they run on cores of their own (``taskset``),
the daemons and the client on the others, in the quiet phases too (``--mesh-cpus``,
``--attacker-cpus``; by default the usable cores split in two halves, ``--no-pin`` for
none), and every attacking socket comes from 127.0.0.2 or 127.0.0.3
(:data:`ATTACKER_ADDRESS`, :data:`BAD_INPUT_ADDRESS`), not from the addresses of the
workload's callers. ``--nice`` gives the daemons, the client
and the attackers one nice value, on a machine whose other jobs would otherwise move
to the mesh's cores as soon as the attackers' cores get busy.
The checker runs over the whole history as usual.

A failing run prints its seed and its schedule; ``--seed`` replays the same schedule
(the moments and kinds; what the mesh does in between is real and is not replayed).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import trio

import tests.netns.daemons as lab_daemons
from meshgpu.daemon.auth import MeshKey
from meshgpu.daemon.groups import group_of
from tests.netns.daemons import PORT, Daemon, Fleet
from tests.netns.impairment import Impairment
from tests.netns.lab import (
    NamespacesUnavailable,
    NetnsLab,
    check_available,
    in_namespace,
)

MODELS = Path(__file__).resolve().parents[1] / "meshgpu" / "inference" / "models"
MODEL = (MODELS / "digits.onnx").read_bytes()
KINDS = (
    "partition_halves",
    "partition_leader",
    "partition_bridge",
    "netem_loss",
    "netem_delay",
    "netem_duplicate",
    "netem_reorder",
    "pause",
    "kill_restart",
    "wipe_restart",
    "disk_full",
    "kill_entry",
)
NETEM = {
    "netem_loss": Impairment(loss=0.2),
    "netem_delay": Impairment(delay_s=0.08, jitter_s=0.04),
    "netem_duplicate": Impairment(duplicate=0.2),
    "netem_reorder": Impairment(delay_s=0.02, reorder=0.5),
}
"""The packet faults, as ``tc netem`` would say them: loss 20%; delay 80ms 40ms;
duplicate 20%; delay 20ms reorder 50%."""
RUN_LINE = re.compile(r"meshgpu\.daemon\.runs: run (\S+) attempt (\d+)$")
"""A daemon's record of one run on its device (meshgpu/daemon/dataplane.py)."""


def _join_argv_recording_runs(*args: Any, **kwargs: Any) -> list[str]:
    """The lab's daemon command line with the run record (a debug logger) turned on."""
    argv = _plain_join_argv(*args, **kwargs)
    at = argv.index("-c") + 1
    argv[at] = (
        "import logging; logging.getLogger('meshgpu.daemon.runs').setLevel(logging.DEBUG); "
        + argv[at]
    )
    return argv


_plain_join_argv = lab_daemons.join_argv
lab_daemons.join_argv = _join_argv_recording_runs
TMPFS_MB = 64
"""Size of the tmpfs that holds the last daemon's data directory (``disk_full``)."""
WINDOW = 32
"""Tasks the workload keeps unfinished at most."""
BATCH = 4
"""Tasks per ``submit_many``."""


@dataclasses.dataclass
class Fault:
    at_s: float
    kind: str
    hold_s: float
    target: int
    """A daemon index drawn from the seed (the leader and the entry node are found live)."""
    detail: str = ""


def schedule(seed: int, minutes: float, nodes: int) -> list[Fault]:
    """The faults of a run, one at a time: ``kind`` held for ``hold_s``, then healed."""
    rng = random.Random(seed)
    faults = []
    at = 5.0
    end = minutes * 60.0
    while True:
        hold = rng.uniform(3.0, 8.0)
        if at + hold > end:
            return faults
        faults.append(Fault(round(at, 2), rng.choice(KINDS), round(hold, 2), rng.randrange(nodes)))
        at += hold + rng.uniform(2.0, 6.0)


@dataclasses.dataclass
class History:
    """Everything the workload saw, for the checker."""

    acknowledged: dict[str, int] = dataclasses.field(default_factory=dict)
    """Task id -> the row it was submitted with."""
    resolved: dict[str, str] = dataclasses.field(default_factory=dict)
    """Task id -> its final state (done, or failed: reason)."""
    deliveries: Counter[str] = dataclasses.field(default_factory=Counter)
    twice_acknowledged: int = 0
    wrong: int = 0
    refused: int = 0
    submit_errors: int = 0
    suppressed_duplicates: int = 0
    result_times: list[float] = dataclasses.field(default_factory=list)
    entry: str | None = None
    http: Counter[str] = dataclasses.field(default_factory=Counter)
    """The HTTP workload: requests, done, wrong, errors (no answer), status_N."""
    http_task_ids: Counter[str] = dataclasses.field(default_factory=Counter)
    http_times: list[float] = dataclasses.field(default_factory=list)
    """When each HTTP answer (200) arrived."""
    stop_submitting: threading.Event = dataclasses.field(default_factory=threading.Event)
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


async def workload(
    history: History, addresses: list[str], key: MeshKey, pixels: np.ndarray, expected: np.ndarray
) -> None:
    """Submit rows steadily and watch every handle, until told to stop."""
    from meshgpu.client import AsyncClient
    from meshgpu.errors import MeshError

    window = trio.Semaphore(WINDOW)
    rng = random.Random(1)

    async def watch(handle: Any, row: int) -> None:
        try:
            outcome = await handle.wait()
        finally:
            window.release()
        with history.lock:
            history.deliveries[handle.task_id] += 1
            history.result_times.append(time.monotonic())
            if outcome.error is None:
                got = np.asarray(outcome.outputs["probabilities"])[0]
                if not np.allclose(got, expected[row], rtol=1e-5, atol=1e-6):
                    history.wrong += 1
                history.resolved[handle.task_id] = "done"
            else:
                history.resolved[handle.task_id] = f"failed: {outcome.error}"

    async with (
        AsyncClient(addresses, key=key, environ={}, status_interval=1.0) as client,
        trio.open_nursery() as nursery,
    ):
        while not history.stop_submitting.is_set():
            rows = [rng.randrange(len(pixels)) for _ in range(BATCH)]
            for _ in rows:
                await window.acquire()
            try:
                with trio.fail_after(60):
                    answers = await client.submit_many(
                        MODEL, [{"pixels": pixels[row : row + 1]} for row in rows]
                    )
            except (MeshError, trio.TooSlowError):
                history.submit_errors += 1
                for _ in rows:
                    window.release()
                await trio.sleep(0.5)
                continue
            for row, answer in zip(rows, answers, strict=True):
                if isinstance(answer, MeshError):
                    history.refused += 1
                    window.release()
                    continue
                with history.lock:
                    if answer.task_id in history.acknowledged:
                        history.twice_acknowledged += 1
                    history.acknowledged[answer.task_id] = row
                nursery.start_soon(watch, answer, row)
            history.entry = None if client.peer is None else client.peer[0]
            await trio.sleep(0.05)
        while not history.stop.is_set():
            history.entry = None if client.peer is None else client.peer[0]
            with history.lock:
                if len(history.resolved) >= len(history.acknowledged):
                    break
            await trio.sleep(0.2)
        history.suppressed_duplicates = client.duplicates
        nursery.cancel_scope.cancel()


def http_workload(history: History, pixels: np.ndarray, expected: np.ndarray, seed: int) -> None:
    """Infer requests through one node's HTTP port (``POST /v2/models/digits/infer``),
    one at a time, until the workload stops submitting; run inside the node's namespace
    (the port listens on its loopback). Every answer is checked against onnxruntime's;
    a request without an answer (the node killed, paused or cut off) is an error, not a
    loss: HTTP is request and response, the caller sends again."""
    rng = random.Random(seed)
    while not history.stop_submitting.is_set():
        row = rng.randrange(len(pixels))
        body = json.dumps(
            {
                "inputs": [
                    {
                        "name": "pixels",
                        "shape": [1, 64],
                        "datatype": "FP32",
                        "data": [float(v) for v in pixels[row]],
                    }
                ]
            }
        )
        history.http["requests"] += 1
        try:
            connection = http.client.HTTPConnection("127.0.0.1", HTTP_PORT, timeout=60)
            connection.request(
                "POST", "/v2/models/digits/infer", body, {"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            data = response.read()
            connection.close()
        except (OSError, http.client.HTTPException):
            history.http["errors"] += 1
            time.sleep(0.5)
            continue
        if response.status != 200:
            history.http[f"status_{response.status}"] += 1
            time.sleep(0.5)
            continue
        answer = json.loads(data)
        (output,) = [o for o in answer["outputs"] if o["name"] == "probabilities"]
        got = np.asarray(output["data"], np.float32)
        with history.lock:
            history.http["done"] += 1
            history.http_times.append(time.monotonic())
            if not np.allclose(got, expected[row].ravel(), rtol=1e-5, atol=1e-6):
                history.http["wrong"] += 1
            task_id = (answer.get("parameters") or {}).get("task_id")
            if task_id:
                history.http_task_ids[str(task_id)] += 1
            else:
                history.http["answers_without_task_id"] += 1
        time.sleep(0.05)


class Campaign:
    """The lab, its daemons, the nemesis and its bookkeeping."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="meshgpu-chaos-"))
        self.lab = NetnsLab.create(args.nodes + 1)
        self.client_host = self.lab.hosts[-1]
        self.key = MeshKey.generate()
        key_file = self.root / "mesh.key"
        self.key.write(key_file)
        self.fleet = Fleet(self.lab, self.root, self.key, key_file)
        self.full_dir = self.root / f"h{args.nodes - 1}"
        self.full_dir.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs",
                        str(self.full_dir)], check=True)  # fmt: skip
        self.faults: Counter[str] = Counter()
        self.relay_frames: Counter[str] = Counter()
        self.applied: list[str] = []
        self.blackholes: list[tuple[str, str]] = []

    # --- daemons --------------------------------------------------------------------

    def start(self) -> None:
        launched = [self.fleet.launch(host) for host in self.lab.hosts[:-1]]
        self.fleet.daemons = [self.fleet._await_listening(*one) for one in launched]
        everyone = len(self.fleet.daemons)
        self.fleet.until(
            self.fleet.daemons,
            lambda seen: all(
                sum(1 for m in s["members"] if m["state"] == "alive") == everyone
                for s in seen.values()
            ),
            "every daemon to see every other",
            timeout=90.0,
        )

    def daemon(self, index: int) -> Daemon:
        return self.fleet.daemons[index]

    def restart(self, index: int, wipe: bool = False) -> None:
        daemon = self.daemon(index)
        if daemon.alive:
            daemon.kill()
        if wipe:
            for child in daemon.data_dir.iterdir():
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        host = daemon.host
        self.fleet.daemons[index] = self.fleet._await_listening(
            *self.fleet.launch(host, daemon.data_dir)
        )

    def leader(self) -> int:
        for index, daemon in enumerate(self.fleet.daemons):
            with contextlib.suppress(Exception):
                leader = self.fleet.call(daemon, "status").get("leader")
                for other, candidate in enumerate(self.fleet.daemons):
                    if candidate.node_id == leader:
                        return other
            del index
        return 0

    def runs(self) -> list[tuple[str, int, int]]:
        """Every run on a device the daemons recorded: (task id, attempt, daemon index)."""
        found = []
        for index in range(len(self.fleet.daemons)):
            log = self.root / f"h{index}.log"
            with contextlib.suppress(OSError), open(log, errors="replace") as lines:
                for line in lines:
                    match = RUN_LINE.search(line.rstrip("\n"))
                    if match:
                        found.append((match.group(1), int(match.group(2)), index))
        return found

    # --- the nemesis ----------------------------------------------------------------

    def apply(self, fault: Fault, history: History) -> None:
        """Apply ``fault``, hold it, heal it (blocking)."""
        nodes = len(self.fleet.daemons)
        rng = random.Random(f"{self.args.seed}:{fault.at_s}")
        kind = fault.kind
        target = fault.target
        if kind == "partition_halves":
            side = rng.sample(range(nodes), rng.randint(1, nodes // 2))
            fault.detail = f"side {sorted(side)}"
            self.lab.partition([[i for i in range(nodes) if i not in side] + [nodes], side])
            time.sleep(fault.hold_s)
            self.lab.heal()
        elif kind == "partition_leader":
            target = self.leader()
            fault.detail = f"leader h{target}"
            self.lab.partition([[i for i in range(nodes + 1) if i != target], [target]])
            time.sleep(fault.hold_s)
            self.lab.heal()
        elif kind == "partition_bridge":
            others = [i for i in range(nodes) if i != target]
            rng.shuffle(others)
            left, right = others[: len(others) // 2], others[len(others) // 2 :]
            fault.detail = f"bridge h{target}, {sorted(left)} | {sorted(right)}"
            for a in left:
                for b in right:
                    self.blackhole(a, b)
                    self.blackhole(b, a)
            time.sleep(fault.hold_s)
            self.clear_blackholes()
        elif kind.startswith("netem"):
            relay_seed = rng.randrange(2**32)
            relay = self.lab.impair(target, NETEM[kind], "both", seed=relay_seed)
            time.sleep(fault.hold_s)
            counters = relay.counters()
            self.lab.unimpair(target)
            shown = {
                k: v for k, v in counters.items() if v and not k.endswith(("_received", "sent"))
            }
            self.relay_frames.update(shown)
            fault.detail = f"h{target} relay seed {relay_seed}: {shown}"
        elif kind == "pause":
            process = self.daemon(target).process
            fault.detail = f"h{target}"
            process.send_signal(signal.SIGSTOP)
            time.sleep(fault.hold_s)
            process.send_signal(signal.SIGCONT)
        elif kind in ("kill_restart", "wipe_restart", "kill_entry"):
            if kind == "kill_entry":
                entry = history.entry
                ids = [d.node_id for d in self.fleet.daemons]
                target = ids.index(entry) if entry in ids else target
            fault.detail = f"h{target}"
            self.daemon(target).kill()
            time.sleep(fault.hold_s)
            self.restart(target, wipe=kind == "wipe_restart")
        elif kind == "disk_full":
            ballast = self.full_dir / "ballast"
            fault.detail = f"h{nodes - 1}"
            with open(ballast, "wb") as out, contextlib.suppress(OSError):
                while True:
                    out.write(b"\0" * (1 << 20))
                    out.flush()
            time.sleep(fault.hold_s)
            ballast.unlink()
        self.faults[kind] += 1
        self.applied.append(f"{fault.at_s:7.1f}s {kind:17s} {fault.hold_s:4.1f}s {fault.detail}")

    def blackhole(self, source: int, destination: int) -> None:
        namespace = self.daemon(source).host.namespace
        address = self.daemon(destination).host.address
        subprocess.run(["ip", "-n", namespace, "route", "add", "blackhole", f"{address}/32"],
                       check=True)  # fmt: skip
        self.blackholes.append((namespace, address))

    def clear_blackholes(self) -> None:
        for namespace, address in self.blackholes:
            subprocess.run(["ip", "-n", namespace, "route", "del", "blackhole", f"{address}/32"],
                           check=False)  # fmt: skip
        self.blackholes.clear()

    def close(self) -> None:
        for daemon in self.fleet.daemons:
            with contextlib.suppress(Exception):
                daemon.process.send_signal(signal.SIGCONT)
        with contextlib.suppress(Exception):
            self.clear_blackholes()
        self.lab.close()
        subprocess.run(["umount", str(self.full_dir)], check=False)
        shutil.rmtree(self.root, ignore_errors=True)


HTTP_PORT = 8000
"""The daemons' HTTP port (``meshgpu join``'s default, bound to 127.0.0.1: the barrage
reaches it from inside each daemon's namespace)."""
IDLE_API = 2000
"""Idle TCP connections the barrage holds open against each daemon's API port."""
IDLE_HTTP = 300
"""And against its HTTP port."""
ATTACKER_ADDRESS = "127.0.0.2"
"""The source address of every attacking socket. The attackers run in the daemons'
namespaces (the HTTP port listens on 127.0.0.1 there) where the HTTP clients of the
workload and the bench's own status calls come from 127.0.0.1 and the daemon's address:
sharing those addresses, the attackers would fill their per-address connection budgets
and the daemon would refuse the real callers with them, which no attacker on another
machine can do. Any 127/8 address is this host's. The idle connections and the slow
clients come from this address, the bad datagrams, frames and requests from
:data:`BAD_INPUT_ADDRESS`."""
BAD_INPUT_ADDRESS = "127.0.0.3"
"""The source of the bad datagrams, frames and HTTP requests: from the address of the
idle connections, which holds that address's whole connection budget, nearly every bad
frame was refused at accept and never read (what a second attacking host gets past)."""
HTTP_LYING = b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{"
"""A request whose body is far shorter than its Content-Length says."""
HTTP_SLOW = b"GET /v2/health/ready HTTP/1.1\r\n" + b"X-Slow: y\r\n" * 20 + b"\r\n"
DROP_COUNTERS = (
    "frames_rejected",
    "api_refusals_unanswered",
    "http_refusals_unanswered",
    "datagrams_rejected",
    "datagrams_dropped_early",
    "datagrams_dropped_in_kernel",
    "api_client_limit_refused",
    "api_handshake_timeouts",
    "http_client_limit_refused",
    "http_header_timeouts",
    "http_bad_requests",
    "http_silent_closed",
    "api_idle_closed",
    "api_idle_evicted",
    "api_connections_refused",
)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_list(cpus: frozenset[int]) -> str:
    """``cpus`` as taskset and ``--mesh-cpus`` write them (``0,2,3``)."""
    return ",".join(str(cpu) for cpu in sorted(cpus))


def _cpus(text: str) -> frozenset[int]:
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        try:
            cpus.update(range(int(first), int(last or first) + 1))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not a CPU list: {text!r} (e.g. 0 or 0,1 or 2-3)"
            ) from None
    usable = os.sched_getaffinity(0)
    if not cpus or not cpus <= usable:
        raise argparse.ArgumentTypeError(
            f"CPUs {text!r} are not all among those this process may use: {sorted(usable)}"
        )
    return frozenset(cpus)


def split_cpus(
    mesh: frozenset[int] | None, attackers: frozenset[int] | None
) -> tuple[frozenset[int], frozenset[int]]:
    """The cores of the mesh (daemons and client) and of the attackers: the ones given,
    else the usable cores split in two halves (the mesh gets the first), else nothing
    to pin on a single core (two empty sets)."""
    usable = sorted(os.sched_getaffinity(0))
    if mesh is None and attackers is None:
        if len(usable) < 2:
            return frozenset(), frozenset()
        half = len(usable) // 2
        return frozenset(usable[:half]), frozenset(usable[half:])
    mesh = mesh if mesh is not None else frozenset(usable) - (attackers or frozenset())
    attackers = attackers if attackers is not None else frozenset(usable) - mesh
    if not mesh or not attackers or mesh & attackers:
        raise SystemExit(
            f"the mesh's CPUs {sorted(mesh)} and the attackers' {sorted(attackers)} must be "
            "two disjoint, non-empty sets"
        )
    return mesh, attackers


def pin_this_process(cpus: frozenset[int], nice: int = 0) -> None:
    """Every thread of this process, and so every thread and child started later, on
    ``cpus`` (sched_setaffinity applies to one thread; new ones inherit it), with the
    nice value ``nice`` (setpriority too: Linux gives each thread its own)."""
    for task in os.listdir("/proc/self/task"):
        if cpus:
            os.sched_setaffinity(int(task), cpus)
        if nice:
            os.setpriority(os.PRIO_PROCESS, int(task), nice)


def own_autogroup(nice: int) -> None:
    """A session of this process's own, so an autogroup of its own (Linux groups the
    processes of a session for the scheduler: a nice value then only counts against the
    session's own processes, and every other session weighs as much as the whole bench),
    with the nice value ``nice``; the daemons, the client and the attackers are its
    children and share it."""
    with contextlib.suppress(OSError):  # a process group leader cannot: keep its session
        os.setsid()
    with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as autogroup:
        autogroup.write(f"{nice}\n")


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


BARRAGE_PARTS = ("datagrams", "frames", "max_frame", "idle_api", "slow", "http", "idle_http")
CONTROL_PARTS = ("burn",)
"""The parts of :func:`barrage` (``--parts`` picks some, to measure them apart).
``burn``: no input at all, the attacker only spends CPU (a tenth of a core): a control
that tells the attackers' share of a small machine from what the input costs."""
RATES = {
    "datagrams": 400.0,
    "frames": 40.0,
    "http": 20.0,
    "reconnects": 100.0,
    "max_frames": 0.05,
}
"""The barrage's default rates, per attacked daemon and second (``--hostile-rate``):
random and truncated datagrams to the gossip port (2,000/s across 5 daemons); bad frames
to the TCP API, each on a connection of its own, garbage, a length over the limit, a
lying length prefix and a truncated header in turn (200/s across 5); bad HTTP requests,
garbage, a body shorter than its Content-Length and a truncated head in turn (100/s);
idle connections opened again after the daemon closed or refused them (500/s); frames of
the maximum size (64 MiB; one every 20 s). The idle connections held (``--idle-connections``,
:data:`IDLE_HTTP`) and the clients that send a byte a second (3 per port) are counts,
not rates. A flood (``--flood``) sends every kind as fast as the attacker's core allows."""
FLOOD_WORKERS = 16
"""Senders of one kind side by side in a flood (frames, HTTP requests)."""
MAX_IN_FLIGHT = 64
"""Bad frames or HTTP requests of one kind in flight at most at a paced rate (past it,
the due ones are counted ``*_behind`` and skipped: the daemon answers slower than the
rate)."""
ANSWER_WAIT_S = 0.5
"""How long a bad frame's or request's connection waits for the daemon's answer."""
TICK_S = 0.01
"""The pacing step of a rate: what is due is sent every tick."""
FRAMES = (
    ("garbage_frames", lambda rng: b"\x00\x00\x00\x10" + rng.randbytes(16)),
    ("over_limit_lengths", lambda rng: b"\xff\xff\xff\xff"),
    ("lying_lengths", lambda rng: b"\x00\x00\x10\x00short"),
    ("truncated_headers", lambda rng: rng.randbytes(3)),
)
"""The bad frames, in turn: a name (the tally's) and the bytes."""
HTTP_REQUESTS = (
    ("http_garbage", lambda rng: rng.randbytes(rng.randrange(1, 600))),
    ("http_lying", lambda rng: HTTP_LYING),
    ("http_truncated", lambda rng: b"GET /v2/health/re"),
)


def _rates(text: str) -> dict[str, float]:
    rates = dict(RATES)
    for part in text.split(","):
        if not part:
            continue
        name, _, value = part.partition("=")
        if name not in RATES:
            raise argparse.ArgumentTypeError(
                f"unknown rate {name!r}; known: {', '.join(RATES)} (e.g. datagrams=400)"
            )
        try:
            rates[name] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a rate: {part!r} (e.g. frames=40)") from None
        if rates[name] < 0:
            raise argparse.ArgumentTypeError(f"a rate is not negative: {part!r}")
    return rates


async def barrage(
    address: str,
    stop: threading.Event,
    tally: Counter[str],
    seed: int,
    idle_api: int = IDLE_API,
    parts: tuple[str, ...] = BARRAGE_PARTS,
    rates: dict[str, float] | None = None,
) -> None:
    """Hostile input at one daemon until ``stop``: run inside the daemon's namespace (its
    HTTP port listens on 127.0.0.1 there). ``parts``: which of :data:`BARRAGE_PARTS`;
    ``rates``: per second and kind (:data:`RATES`), None for a flood (every kind as
    fast as this process can send it)."""
    rng = random.Random(seed)
    api = (address, PORT)
    source = ATTACKER_ADDRESS
    bad_source = BAD_INPUT_ADDRESS
    http = ("127.0.0.1", HTTP_PORT)
    flood = rates is None

    async def stopped() -> None:
        while not stop.is_set():
            await trio.sleep(0.2)

    async def ticks(rate: float, due: Any) -> None:
        """Call ``due(n)`` every :data:`TICK_S` with the ``n`` actions due at ``rate``."""
        credit = 0.0
        last = trio.current_time()
        while True:
            await trio.sleep(TICK_S)
            now = trio.current_time()
            credit = min(credit + rate * (now - last), max(rate, 1.0))
            last = now
            if credit >= 1:
                due(int(credit))
                credit -= int(credit)

    async def datagrams() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((bad_source, 0))
            udp.setblocking(False)

            def send(n: int) -> None:
                for _ in range(n):
                    size = rng.choice([0, 1, 3, rng.randrange(4, 1400)])
                    try:
                        udp.sendto(rng.randbytes(size), api)
                        tally["datagrams"] += 1
                    except BlockingIOError:
                        tally["datagrams_would_block"] += 1
                    except OSError:
                        pass

            if not flood:
                await ticks(rates["datagrams"], send)
            while True:  # a flood
                send(32)
                await trio.lowlevel.checkpoint()

    reconnect = trio.Semaphore(0)
    """Tokens for idle connections to open again (a paced rate; none in a flood)."""

    async def idle(target: tuple[str, int], name: str) -> None:
        """Hold a connection open and silent; when the daemon closes it, open another."""
        while True:
            try:
                stream = await trio.open_tcp_stream(*target, local_address=source)
            except OSError:
                tally[f"{name}_idle_refused_at_connect"] += 1
            else:
                tally[f"{name}_idle_opened"] += 1
                with contextlib.suppress(trio.BrokenResourceError, OSError):
                    while await stream.receive_some(4096):
                        pass
                await stream.aclose()
                tally[f"{name}_idle_closed_by_daemon"] += 1
            if flood:
                await trio.lowlevel.checkpoint()
            else:
                await reconnect.acquire()

    def release_reconnects(n: int) -> None:
        for _ in range(min(n, max(0, idle_api + IDLE_HTTP - reconnect.value))):
            reconnect.release()

    async def one_shot(target: tuple[str, int], data: bytes, name: str) -> None:
        """Connect, send ``data``, close after the answer (half a second at most; at once
        in a flood)."""
        try:
            stream = await trio.open_tcp_stream(*target, local_address=bad_source)
        except OSError:
            tally[f"{name}_refused_at_connect"] += 1
            return
        with contextlib.suppress(trio.BrokenResourceError, OSError):
            await stream.send_all(data)
            tally[name] += 1
            with trio.move_on_after(0 if flood else ANSWER_WAIT_S):
                await stream.receive_some(4096)
        await stream.aclose()

    async def bad(target: tuple[str, int], kinds: Any, rate_name: str) -> None:
        """Bad frames or requests of ``kinds`` in turn, one connection each."""
        turn = itertools.cycle(kinds)
        in_flight = 0

        async def one() -> None:
            nonlocal in_flight
            name, make = next(turn)
            in_flight += 1
            try:
                await one_shot(target, make(rng), name)
            finally:
                in_flight -= 1

        async with trio.open_nursery() as nursery:
            if flood:
                for _ in range(FLOOD_WORKERS):

                    async def worker() -> None:
                        while True:
                            await one()
                            await trio.lowlevel.checkpoint()

                    nursery.start_soon(worker)
                return

            def due(n: int) -> None:
                for _ in range(n):
                    if in_flight >= MAX_IN_FLIGHT:
                        tally[f"{rate_name}_behind"] += 1
                    else:
                        nursery.start_soon(one)

            await ticks(rates[rate_name], due)

    async def max_frames() -> None:
        limit = 64 * 1024 * 1024
        interval = 0.0 if flood else 1.0 / rates["max_frames"]
        while True:
            began = trio.current_time()
            await one_shot(api, struct.pack(">I", limit) + bytes(limit), "max_size_frames")
            await trio.sleep_until(began + interval)

    async def one_byte_a_second(target: tuple[str, int], data: bytes, name: str) -> None:
        while True:
            try:
                stream = await trio.open_tcp_stream(*target, local_address=source)
                for byte in data:
                    await stream.send_all(bytes([byte]))
                    tally[name] += 1
                    await trio.sleep(1.0)
                await stream.aclose()
            except (OSError, trio.BrokenResourceError):
                tally[f"{name}_cut"] += 1
                await trio.sleep(1.0)

    async def burn() -> None:
        while True:
            until = time.perf_counter() + 0.005
            while time.perf_counter() < until:
                pass
            await trio.sleep(0.045)

    def paced(name: str) -> bool:
        return flood or rates[name] > 0

    async with trio.open_nursery() as nursery:
        if "burn" in parts:
            nursery.start_soon(burn)
        if "datagrams" in parts and paced("datagrams"):
            nursery.start_soon(datagrams)
        if "frames" in parts and paced("frames"):
            nursery.start_soon(bad, api, FRAMES, "frames")
        if "http" in parts and paced("http"):
            nursery.start_soon(bad, http, HTTP_REQUESTS, "http")
        if "max_frame" in parts and paced("max_frames"):
            nursery.start_soon(max_frames)
        for _ in range(3 if "slow" in parts else 0):
            nursery.start_soon(
                one_byte_a_second, api, b"\x00\x00\x01\x00" + bytes(256), "slow_api_bytes"
            )
            nursery.start_soon(one_byte_a_second, http, HTTP_SLOW, "slow_http_bytes")
        if not flood and rates["reconnects"] > 0:
            nursery.start_soon(ticks, rates["reconnects"], release_reconnects)
        # The two ports' idle connections open side by side: started one port after the
        # other, the API's 2,000 (each start yields to every task already started) took
        # the whole phase on a busy core and the HTTP port's 300 were hardly ever opened.
        api_idle = idle_api if "idle_api" in parts else 0
        http_idle = IDLE_HTTP if "idle_http" in parts else 0
        for i in range(max(api_idle, http_idle)):
            if i < http_idle:
                nursery.start_soon(idle, http, "http")
            if i < api_idle:
                nursery.start_soon(idle, api, "api")
            await trio.sleep(0)
        await stopped()
        nursery.cancel_scope.cancel()


CORE_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
"""The first columns of a ``cpuN`` line of /proc/stat, in clock ticks."""


def core_ticks(cpus: frozenset[int]) -> Counter[str]:
    """The /proc/stat columns summed over ``cpus`` (clock ticks since boot)."""
    total: Counter[str] = Counter()
    with open("/proc/stat") as stat:
        for line in stat:
            name, *values = line.split()
            if name.startswith("cpu") and name != "cpu" and int(name[3:]) in cpus:
                total.update(dict(zip(CORE_FIELDS, map(int, values), strict=False)))
    return total


def cpu_split_s(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def context_switches(pid: int) -> tuple[int, int]:
    """Times process ``pid``'s main thread (the daemon's event loop) went to sleep and
    was woken again (voluntary), and was preempted (involuntary), so far."""
    found = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name.endswith("ctxt_switches"):
                found[name] = int(value)
    return found.get("voluntary_ctxt_switches", 0), found.get("nonvoluntary_ctxt_switches", 0)


def hostile_phases(
    campaign: Campaign,
    history: History,
    phase_s: float,
    seed: int,
    idle_api: int,
    parts: tuple[str, ...] = BARRAGE_PARTS,
    rounds: int = 1,
    attacker_cpus: frozenset[int] = frozenset(),
    mesh_cpus: frozenset[int] = frozenset(),
    rates: dict[str, float] | None = None,
    flood: bool = False,
) -> dict[str, Any]:
    """``rounds`` times a quiet phase, then a phase under :func:`barrage` at ``rates``
    (:data:`RATES` if None) at every daemon, then (``flood``) a phase under the barrage
    as fast as the attackers can send; the rates are the totals of each kind over their
    time. ``attacker_cpus``, ``mesh_cpus``: the cores the attackers and the mesh run on
    (none: wherever the scheduler puts them; their time is then read over every core)."""
    rates = dict(RATES if rates is None else rates)
    groups = [g for g in ([p for p in parts if p == "datagrams"],
                          [p for p in parts if p != "datagrams"]) if g]  # fmt: skip
    kinds = ("quiet", "hostile", "flood") if flood else ("quiet", "hostile")

    def sample(peaks: dict[str, dict[str, int]]) -> None:
        for index, daemon in enumerate(campaign.fleet.daemons):
            with contextlib.suppress(OSError):
                pid = daemon.process.pid
                mine = peaks.setdefault(f"h{index}", {"rss_kib": 0, "open_files": 0})
                mine["rss_kib"] = max(mine["rss_kib"], rss_kib(pid))
                mine["open_files"] = max(mine["open_files"], open_files(pid))

    def counters() -> dict[int, dict[str, int]]:
        """Every numeric counter (``part.name``) of every daemon that answered."""
        found: dict[int, dict[str, int]] = {}
        for index, daemon in enumerate(campaign.fleet.daemons):
            for _ in range(3):
                try:
                    status = campaign.fleet.call(daemon, "status")["counters"]
                except Exception:
                    time.sleep(0.5)
                    continue
                found[index] = {
                    f"{part}.{name}": value
                    for part, values in status.items()
                    for name, value in (values.items() if isinstance(values, dict) else ())
                    if isinstance(value, int | float) and not isinstance(value, bool)
                }
                break
            else:
                tally["status_unavailable"] += 1
        return found

    def delta(
        before: dict[int, dict[str, int]], after: dict[int, dict[str, int]]
    ) -> dict[str, int]:
        """The change of each counter, summed over the daemons read both times."""
        moved: Counter[str] = Counter()
        for index in before.keys() & after.keys():
            for name, value in after[index].items():
                moved[name] += value - before[index].get(name, 0)
        return {name: value for name, value in sorted(moved.items()) if value}

    def results_between(start: float, end: float) -> tuple[int, int]:
        """Results of the Python client and HTTP answers that arrived in [start, end)."""
        with history.lock:
            return (
                sum(1 for t in history.result_times if start <= t < end),
                sum(1 for t in history.http_times if start <= t < end),
            )

    def daemons_cpu() -> tuple[float, float, int, int]:
        """The daemons' user and system seconds, wakeups and preemptions so far."""
        user = system = 0.0
        woken = preempted = 0
        for daemon in campaign.fleet.daemons:
            with contextlib.suppress(OSError):
                u, s = cpu_split_s(daemon.process.pid)
                w, p = context_switches(daemon.process.pid)
                user += u
                system += s
                woken += w
                preempted += p
        return user, system, woken, preempted

    every_core = frozenset(os.sched_getaffinity(0))
    mesh_cores = mesh_cpus or every_core
    attacker_cores = attacker_cpus or every_core
    tick = os.sysconf("SC_CLK_TCK")

    def phase(kind: str, peaks: dict[str, dict[str, int]]) -> tuple[tuple[int, int], float]:
        """One phase: ((results delivered, HTTP answers), seconds); ``peaks`` takes the
        RSS and open files."""
        attackers = []
        # per daemon, in its namespace, one process for the datagrams and one for the
        # rest (not this GIL; the datagrams' pace is not held up by the connections')
        for index, daemon in enumerate(campaign.fleet.daemons if kind != "quiet" else ()):
            for number, group in enumerate(groups):
                argv = [sys.executable, __file__, "--barrage", daemon.host.address]
                if attacker_cpus:  # taskset execs in place: the process is the attacker
                    argv = ["taskset", "-c", cpu_list(attacker_cpus), *argv]
                argv += ["--seed", str(seed * 100 + index * 2 + number)]
                argv += ["--idle-connections", str(idle_api)]
                argv += ["--parts", ",".join(group)]
                if kind == "flood":
                    argv += ["--flood"]
                else:
                    argv += ["--hostile-rate", ",".join(f"{k}={v}" for k, v in rates.items())]
                attackers.append(
                    campaign.lab.popen(
                        daemon.host, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE
                    )
                )
        for attacker in attackers:  # imports done, the barrage begins
            assert attacker.stdout is not None
            attacker.stdout.readline()
        before = counters()
        daemons_before = daemons_cpu()
        workload_before = os.times()
        mesh_before = core_ticks(mesh_cores)
        attackers_before = core_ticks(attacker_cores)
        attackers_cpu_before = [cpu_split_s(a.pid) for a in attackers]
        start = time.monotonic()
        while time.monotonic() < start + phase_s:
            sample(peaks)
            time.sleep(1.0)
        end = time.monotonic()
        # the attackers' time first: they run on until told to stop, and reading every
        # daemon's counters below takes seconds when daemons are slow to answer (those
        # seconds counted as theirs read up to 13x their one core's time)
        attackers_cpu_after = []
        for attacker in attackers:
            try:
                attackers_cpu_after.append(cpu_split_s(attacker.pid))
            except OSError:
                attackers_cpu_after.append(None)
        daemons_after = daemons_cpu()
        workload_after = os.times()
        mesh_after = core_ticks(mesh_cores)
        attackers_after = core_ticks(attacker_cores)
        spent = cpu[kind]
        spent["daemons_user"] += daemons_after[0] - daemons_before[0]
        spent["daemons_system"] += daemons_after[1] - daemons_before[1]
        spent["daemons_wakeups"] += daemons_after[2] - daemons_before[2]
        spent["daemons_preempted"] += daemons_after[3] - daemons_before[3]
        # this process: the Python client, the HTTP clients and the bench (threads)
        spent["workload_user"] += workload_after.user - workload_before.user
        spent["workload_system"] += workload_after.system - workload_before.system
        for where, ticks_before, ticks_after in (
            ("mesh_cores", mesh_before, mesh_after),
            ("attacker_cores", attackers_before, attackers_after),
        ):
            moved_ticks = {k: ticks_after[k] - ticks_before[k] for k in CORE_FIELDS}
            spent[f"{where}_user"] += (moved_ticks["user"] + moved_ticks["nice"]) / tick
            spent[f"{where}_system"] += moved_ticks["system"] / tick
            spent[f"{where}_softirq"] += (moved_ticks["softirq"] + moved_ticks["irq"]) / tick
            spent[f"{where}_idle"] += (moved_ticks["idle"] + moved_ticks["iowait"]) / tick
            spent[f"{where}_steal"] += moved_ticks["steal"] / tick
        moved[kind].update(delta(before, counters()))
        for (user, system), now in zip(attackers_cpu_before, attackers_cpu_after, strict=True):
            if now is not None:
                spent["attackers_user"] += now[0] - user
                spent["attackers_system"] += now[1] - system
        for attacker in attackers:  # all stop together (a closed stdin says stop)
            assert attacker.stdin is not None
            attacker.stdin.close()
            attacker.stdin = None
        for attacker in attackers:
            try:
                out, _ = attacker.communicate(timeout=60)
            except subprocess.TimeoutExpired:  # a starved attacker: its tally is lost
                attacker.kill()
                out, _ = attacker.communicate()
                tally["attackers_killed"] += 1
            with contextlib.suppress(ValueError, IndexError):
                sent[kind].update(json.loads(out.decode().strip().splitlines()[-1]))
        return results_between(start, end), end - start

    tally: Counter[str] = Counter()
    cpu: dict[str, Counter[str]] = {kind: Counter() for kind in kinds}
    sent: dict[str, Counter[str]] = {kind: Counter() for kind in kinds}
    time.sleep(min(20.0, phase_s / 3))  # the workload warms up (models cached everywhere)
    peaks: dict[str, dict[str, dict[str, int]]] = {kind: {} for kind in kinds}
    moved: dict[str, Counter[str]] = {kind: Counter() for kind in kinds}
    delivered: Counter[str] = Counter()
    answered: Counter[str] = Counter()
    seconds: Counter[str] = Counter()
    for _ in range(rounds):  # alternated, so that a drift of the machine's load cancels
        for kind in kinds:
            (done, http_done), spent = phase(kind, peaks[kind])
            answered[kind] += http_done
            delivered[kind] += done
            seconds[kind] += spent
    quiet = peaks["quiet"]
    results = {kind: delivered[kind] / seconds[kind] for kind in kinds}
    http_rates = {kind: answered[kind] / seconds[kind] for kind in kinds}

    def ratio(value: float, reference: float) -> float:
        return round(value / reference, 3) if reference else 0.0

    def per_kind(kind: str) -> dict[str, Any]:
        loud = peaks[kind]
        return {
            "results_per_s": round(results[kind], 2),
            "http_answers_per_s": round(http_rates[kind], 2),
            "throughput_ratio": ratio(results[kind], results["quiet"]),
            "http_throughput_ratio": ratio(http_rates[kind], http_rates["quiet"]),
            "rss_ratio": {
                name: round(loud[name]["rss_kib"] / quiet[name]["rss_kib"], 3)
                for name in quiet
                if name in loud and quiet[name]["rss_kib"]
            },
            "open_files": {name: loud.get(name, {}).get("open_files", 0) for name in quiet},
            "cpu_s": {name: round(value, 1) for name, value in sorted(cpu[kind].items())},
            # per daemon and second of the attackers' run (two attackers a daemon)
            "sent_per_s_per_daemon": {
                name: round(count / sent[kind]["run_s"] * len(groups), 1)
                for name, count in sorted(sent[kind].items())
                if name != "run_s" and sent[kind]["run_s"]
            },
            "dropped": {name: moved[kind][f"daemon.{name}"] for name in DROP_COUNTERS}
            | {"auth_rejected": moved[kind]["auth.rejected"]},
        }

    phases = {kind: per_kind(kind) for kind in kinds}
    hostile = phases["hostile"]
    return {
        "phase_s": phase_s,
        "rounds": rounds,
        "idle_connections_per_daemon": idle_api,
        "idle_http_connections_per_daemon": IDLE_HTTP,
        "rates_per_daemon": rates,
        "parts": list(parts),
        "attacker_cpus": sorted(attacker_cpus),
        "quiet_results_per_s": round(results["quiet"], 2),
        "hostile_results_per_s": hostile["results_per_s"],
        "throughput_ratio": hostile["throughput_ratio"],
        "quiet_http_answers_per_s": round(http_rates["quiet"], 2),
        "hostile_http_answers_per_s": hostile["http_answers_per_s"],
        "http_throughput_ratio": hostile["http_throughput_ratio"],
        **(
            {
                "flood_throughput_ratio": phases["flood"]["throughput_ratio"],
                "flood_http_throughput_ratio": phases["flood"]["http_throughput_ratio"],
            }
            if flood
            else {}
        ),
        "rss_ratio": hostile["rss_ratio"],
        "open_files": {
            name: [quiet[name]["open_files"], hostile["open_files"].get(name, 0)] for name in quiet
        },
        "quiet_rss_kib": {name: peak["rss_kib"] for name, peak in quiet.items()},
        "dropped": hostile["dropped"],
        "phases": phases,
        "counters": {kind: dict(sorted(values.items())) for kind, values in moved.items()},
        "sent": {kind: dict(sorted(values.items())) for kind, values in sent.items()}
        | {"bench": dict(sorted(tally.items()))},
        "cpu_s": {
            "quiet_daemons_cpu_s": round(
                cpu["quiet"]["daemons_user"] + cpu["quiet"]["daemons_system"], 1
            ),
            "hostile_daemons_cpu_s": round(
                cpu["hostile"]["daemons_user"] + cpu["hostile"]["daemons_system"], 1
            ),
            "attackers_cpu_s": round(
                cpu["hostile"]["attackers_user"] + cpu["hostile"]["attackers_system"], 1
            ),
        },
    }


COST_UNITS = {
    "datagrams": ("datagrams_received", "datagrams_dropped_early", "datagrams_dropped_in_kernel"),
    "frames": ("api_connections",),
    "max_frame": ("api_connections",),
    "idle_api": ("api_connections",),
    "slow": ("api_connections", "http_connections"),
    "http": ("http_connections",),
    "idle_http": ("http_connections",),
}
"""What one input of a part is, in the attacked daemon's counters: a datagram read, a
connection accepted on the API port or on the HTTP port."""
COST_SETTLE_S = 3.0
"""Seconds an attacker runs before a cost measurement begins (the idle connections'
first burst of opens is over)."""


def cost_run(args: argparse.Namespace) -> dict[str, Any]:
    """``--hostile --cost``: what each part of the barrage costs the daemon it attacks.

    No workload: the mesh of ``--nodes`` daemons gossips, daemon 0 alone is attacked by
    one part at a time (paced at ``--hostile-rate``, then with ``--flood`` as fast as
    the attacker can), each for ``--hostile-s`` after :data:`COST_SETTLE_S`; a phase
    with no attacker first is the baseline. For each part: the daemon's user and
    system CPU seconds above the baseline, the inputs it took (:data:`COST_UNITS`, above
    the baseline), the CPU microseconds per input, the share of a core the part cost it,
    and the attacker's own CPU seconds."""
    mesh_cpus: frozenset[int] = frozenset()
    attacker_cpus: frozenset[int] = frozenset()
    if not args.no_pin:
        mesh_cpus, attacker_cpus = split_cpus(args.mesh_cpus, args.attacker_cpus)
        pin_this_process(mesh_cpus, args.nice)
    if args.nice:
        own_autogroup(args.nice)
    campaign = Campaign(args)
    parts = [part for part in args.parts if part in COST_UNITS]
    try:
        campaign.start()
        target = campaign.fleet.daemons[0]

        def counters() -> dict[str, int]:
            for _ in range(5):
                with contextlib.suppress(Exception):
                    found = campaign.fleet.call(target, "status")["counters"]["daemon"]
                    return {k: v for k, v in found.items() if isinstance(v, int)}
                time.sleep(0.5)
            return {}

        def measure(part: str | None, flood: bool) -> dict[str, Any]:
            attacker = None
            if part is not None:
                argv = [sys.executable, __file__, "--barrage", target.host.address]
                if attacker_cpus:
                    argv = ["taskset", "-c", cpu_list(attacker_cpus), *argv]
                argv += ["--seed", str(args.seed), "--parts", part]
                argv += ["--idle-connections", str(args.idle_connections)]
                if flood:
                    argv += ["--flood"]
                else:
                    argv += [
                        "--hostile-rate",
                        ",".join(f"{k}={v}" for k, v in args.hostile_rate.items()),
                    ]
                attacker = campaign.lab.popen(
                    target.host, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE
                )
                assert attacker.stdout is not None
                attacker.stdout.readline()
                time.sleep(COST_SETTLE_S)
            before = counters()
            user, system = cpu_split_s(target.process.pid)
            attacker_before = cpu_split_s(attacker.pid) if attacker else (0.0, 0.0)
            start = time.monotonic()
            time.sleep(args.hostile_s)
            seconds = time.monotonic() - start
            after_user, after_system = cpu_split_s(target.process.pid)
            attacker_after = cpu_split_s(attacker.pid) if attacker else (0.0, 0.0)
            after = counters()
            if attacker is not None:
                assert attacker.stdin is not None
                attacker.stdin.close()
                attacker.stdin = None
                with contextlib.suppress(subprocess.TimeoutExpired):
                    attacker.communicate(timeout=60)
                if attacker.returncode is None:
                    attacker.kill()
                    attacker.communicate()
            return {
                "seconds": seconds,
                "user": after_user - user,
                "system": after_system - system,
                "attacker": sum(attacker_after) - sum(attacker_before),
                "counters": {k: v - before.get(k, 0) for k, v in after.items()},
            }

        quiet = measure(None, False)
        report: dict[str, Any] = {}
        for flood in (False, True) if args.flood else (False,):
            for part in parts:
                loud = measure(part, flood)
                scale = loud["seconds"] / quiet["seconds"]
                units = sum(
                    loud["counters"].get(name, 0) - quiet["counters"].get(name, 0) * scale
                    for name in COST_UNITS[part]
                )
                user = loud["user"] - quiet["user"] * scale
                system = loud["system"] - quiet["system"] * scale
                report[f"{part}{' flood' if flood else ''}"] = {
                    "inputs_per_s": round(units / loud["seconds"], 1),
                    "daemon_user_s": round(user, 2),
                    "daemon_system_s": round(system, 2),
                    "daemon_core_share": round((user + system) / loud["seconds"], 3),
                    "daemon_us_per_input": round((user + system) / units * 1e6, 1)
                    if units > 0
                    else None,
                    "attacker_cpu_s": round(loud["attacker"], 2),
                    "seconds": round(loud["seconds"], 1),
                    "dropped": {
                        name: loud["counters"].get(f"{name}", 0)
                        for name in DROP_COUNTERS
                        if loud["counters"].get(name)
                    },
                }
    finally:
        campaign.close()
    return {
        "seed": args.seed,
        "nodes": args.nodes,
        "phase_s": args.hostile_s,
        "rates_per_daemon": args.hostile_rate,
        "mesh_cpus": sorted(mesh_cpus),
        "attacker_cpus": sorted(attacker_cpus),
        "quiet_daemon_cpu_s": round(quiet["user"] + quiet["system"], 2),
        "quiet_seconds": round(quiet["seconds"], 1),
        "parts": report,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from meshgpu import inference

    pixels = np.load(MODELS / "digits_test.npz")["pixels"].astype(np.float32)
    expected = inference.load(MODEL, backend="onnxruntime").run({"pixels": pixels})["probabilities"]
    faults = [] if args.hostile else schedule(args.seed, args.minutes, args.nodes)
    hostile: dict[str, Any] | None = None
    mesh_cpus: frozenset[int] = frozenset()
    attacker_cpus: frozenset[int] = frozenset()
    if args.hostile and not args.no_pin:
        mesh_cpus, attacker_cpus = split_cpus(args.mesh_cpus, args.attacker_cpus)
        # before any daemon, client thread or attacker starts
        pin_this_process(mesh_cpus, args.nice)
        if args.nice:
            own_autogroup(args.nice)
    campaign = Campaign(args)
    history = History()
    try:
        campaign.start()
        addresses = [f"{d.host.address}:{PORT}" for d in campaign.fleet.daemons]
        http_threads = []
        for index in range(args.http_nodes):
            namespace = campaign.fleet.daemons[index % args.nodes].host.namespace

            def drive_http(namespace: str = namespace, index: int = index) -> None:
                in_namespace(
                    namespace,
                    lambda: http_workload(history, pixels, expected, args.seed * 1000 + index),
                )

            http_threads.append(threading.Thread(target=drive_http, daemon=True))

        def drive() -> None:
            in_namespace(
                campaign.client_host.namespace,
                lambda: trio.run(workload, history, addresses, campaign.key, pixels, expected),
            )

        thread = threading.Thread(target=drive, daemon=True)
        began = time.monotonic()
        thread.start()
        for http_thread in http_threads:
            http_thread.start()
        for fault in faults:
            delay = began + fault.at_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            campaign.apply(fault, history)
        if args.hostile:
            hostile = hostile_phases(
                campaign,
                history,
                args.hostile_s,
                args.seed,
                args.idle_connections,
                args.parts,
                args.rounds,
                attacker_cpus,
                mesh_cpus,
                args.hostile_rate,
                args.flood,
            )
            hostile["mesh_cpus"] = sorted(mesh_cpus)
            hostile["nice"] = 0 if args.no_pin else args.nice
        rest = 0.0 if args.hostile else began + args.minutes * 60.0 - time.monotonic()
        if rest > 0:
            time.sleep(rest)
        healed = time.monotonic()
        history.stop_submitting.set()
        for http_thread in http_threads:
            http_thread.join(70)
        thread.join(args.drain_s)
        history.stop.set()
        thread.join(30)
        unresolved = [t for t in history.acknowledged if t not in history.resolved]
        known: set[str] = set()
        for daemon in campaign.fleet.daemons:
            with contextlib.suppress(Exception):
                rows = campaign.fleet.call(daemon, "tasks")["tasks"]
                known.update(str(row["task_id"]) for row in rows)
        runs = campaign.runs()
    finally:
        campaign.close()
    times = sorted([began, *history.result_times, healed])
    stall = max((b - a for a, b in itertools.pairwise(times)), default=0.0)
    failed = sum(1 for state in history.resolved.values() if state != "done")
    executions = explain_executions(runs, history)
    return {
        "seed": args.seed,
        "minutes": args.minutes,
        "nodes": args.nodes,
        "acknowledged": len(history.acknowledged),
        "done": len(history.resolved) - failed,
        "failed": failed,
        "lost": sum(1 for t in unresolved if t not in known),
        "unresolved": len(unresolved),
        "duplicate_deliveries": history.twice_acknowledged
        + sum(1 for count in history.deliveries.values() if count > 1),
        "wrong_outputs": history.wrong,
        "duplicate_executions": executions["duplicate"],
        "runs_started": len(runs),
        "executions": executions,
        "http": {
            **dict(sorted(history.http.items())),
            "task_ids_answered_twice": sum(1 for n in history.http_task_ids.values() if n > 1),
        },
        "suppressed_duplicate_outcomes": history.suppressed_duplicates,
        "refused": history.refused,
        "submit_errors": history.submit_errors,
        "faults": dict(sorted(campaign.faults.items())),
        "relay_frames": dict(sorted(campaign.relay_frames.items())),
        "longest_stall_s": round(stall, 2),
        "schedule": campaign.applied,
        **({"hostile": hostile} if hostile is not None else {}),
    }


def explain_executions(runs: list[tuple[str, int, int]], history: History) -> dict[str, int]:
    """Count the runs beyond one per executed id and say why each happened.

    A grouped submission runs as one task (the group id) for all its members, so a
    member's runs are its group's.
    """
    per_id: dict[str, list[int]] = {}
    for task_id, attempt, _ in runs:
        per_id.setdefault(task_id, []).append(attempt)
    acknowledged = set(history.acknowledged)
    acknowledged |= set(history.http_task_ids)
    seen = acknowledged | {g for t in acknowledged if (g := group_of(t)) is not None}
    retried = same_attempt = 0
    for attempts in per_id.values():
        distinct = len(set(attempts))
        retried += distinct - 1
        same_attempt += len(attempts) - distinct
    done_without_run = sum(
        1
        for task_id, state in history.resolved.items()
        if state == "done" and task_id not in per_id and group_of(task_id) not in per_id
    )
    http_done_without_run = sum(
        1
        for task_id in history.http_task_ids
        if task_id not in per_id and group_of(task_id) not in per_id
    )
    http_runs = {t if t in per_id else group_of(t) for t in history.http_task_ids} - {None}
    return {
        "duplicate": retried + same_attempt,
        "retried": retried,
        "same_attempt": same_attempt,
        "unacknowledged": sum(len(a) for t, a in per_id.items() if t not in seen),
        "done_without_run": done_without_run,
        "http_done_without_run": http_done_without_run,
        "http_answers_per_run": round(len(history.http_task_ids) / len(http_runs), 2)
        if http_runs
        else 0.0,
    }


TABLE = (
    "acknowledged",
    "done",
    "failed",
    "lost",
    "unresolved",
    "duplicate_deliveries",
    "wrong_outputs",
    "duplicate_executions",
    "runs_started",
    "suppressed_duplicate_outcomes",
    "refused",
    "submit_errors",
    "longest_stall_s",
)


def barrage_process(
    address: str,
    seed: int,
    idle_api: int,
    parts: tuple[str, ...],
    rates: dict[str, float] | None,
) -> int:
    """``--barrage ADDRESS``: :func:`barrage` until stdin closes, then its tally as JSON."""
    stop = threading.Event()
    tally: Counter[str] = Counter()

    def until_stdin_closes() -> None:
        """Report and exit at once: the kernel closes every socket. Cancelling thousands
        of connection tasks first took an attacker starved of CPU minutes, while the
        workload went on between the phases."""
        sys.stdin.read()
        stop.set()
        tally["run_s"] = round(time.monotonic() - began, 3)  # type: ignore[assignment]
        print(json.dumps(dict(tally)), flush=True)
        os._exit(0)

    threading.Thread(target=until_stdin_closes, daemon=True).start()
    print("ready", flush=True)
    began = time.monotonic()
    trio.run(barrage, address, stop, tally, seed, idle_api, parts, rates)
    return 0


def _parts(text: str) -> tuple[str, ...]:
    parts = tuple(part for part in text.split(",") if part)
    unknown = [part for part in parts if part not in BARRAGE_PARTS + CONTROL_PARTS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown barrage parts {unknown}; known: {', '.join(BARRAGE_PARTS)}"
        )
    return parts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--barrage", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--drain-s", type=float, default=120.0)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument(
        "--hostile",
        action="store_true",
        help="no nemesis: a quiet phase, then a hostile-input barrage at every port",
    )
    parser.add_argument(
        "--http-nodes",
        type=int,
        default=2,
        help="HTTP clients (one per node, on its loopback port) beside the Python client",
    )
    parser.add_argument(
        "--idle-connections",
        type=int,
        default=IDLE_API,
        help="idle TCP connections the barrage holds against each daemon's API port",
    )
    parser.add_argument("--hostile-s", type=float, default=60.0, help="length of each phase")
    parser.add_argument(
        "--rounds", type=int, default=1, help="quiet and hostile phases, alternated, this often"
    )
    parser.add_argument(
        "--mesh-cpus",
        type=_cpus,
        help="with --hostile: the cores of the daemons and the client, e.g. 0 (default: the "
        "first half of the usable cores; the quiet phases run on the same ones)",
    )
    parser.add_argument(
        "--attacker-cpus",
        type=_cpus,
        help="with --hostile: the cores of the attackers, e.g. 1 (default: the other cores)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="with --hostile: the nice value of the daemons, the client and the attackers "
        "alike, and of the autogroup of the session the bench opens for them, e.g. -10 on "
        "a machine that other jobs share (their processes move to the mesh's cores when "
        "the attackers' cores get busy; see docs/reliability.md)",
    )
    parser.add_argument(
        "--hostile-rate",
        type=_rates,
        default=dict(RATES),
        metavar="KIND=PER_S,...",
        help="with --hostile: the barrage's rates per attacked daemon and second, any of "
        + ", ".join(f"{name}={value:g}" for name, value in RATES.items())
        + " (the defaults; 0 turns a kind off)",
    )
    parser.add_argument(
        "--flood",
        action="store_true",
        help="with --hostile: a third phase in every round, the barrage as fast as the "
        "attackers can send (a volumetric flood), beside the quiet and the paced ones",
    )
    parser.add_argument(
        "--cost",
        action="store_true",
        help="with --hostile: no workload; what each part of the barrage costs the one "
        "daemon it attacks, part by part (CPU microseconds per input, share of a core)",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="with --hostile: pin nothing (attackers then take CPU from the daemons)",
    )
    parser.add_argument(
        "--parts",
        type=_parts,
        default=BARRAGE_PARTS,
        help=f"comma-separated parts of the barrage (default all: {','.join(BARRAGE_PARTS)})",
    )
    args = parser.parse_args()
    if args.barrage:
        rates = None if args.flood else args.hostile_rate
        return barrage_process(args.barrage, args.seed, args.idle_connections, args.parts, rates)
    try:
        check_available()
    except NamespacesUnavailable as reason:
        print(f"chaos needs network namespaces: {reason}", file=sys.stderr)
        return 2
    if args.cost:
        cost = cost_run(args)
        print(f"{'part':18s} {'inputs/s':>9s} {'us/input':>9s} {'core share':>10s} "
              f"{'attacker s':>10s}")  # fmt: skip
        for part, row in cost["parts"].items():
            print(f"{part:18s} {row['inputs_per_s']:9} {row['daemon_us_per_input']!s:>9} "
                  f"{row['daemon_core_share']:10} {row['attacker_cpu_s']:10}")  # fmt: skip
        if args.json:
            print(json.dumps(cost))
        return 0
    result = run(args)
    ok = not any(result[k] for k in ("lost", "unresolved", "duplicate_deliveries", "wrong_outputs"))
    ok = ok and not result["http"].get("wrong", 0)
    print(f"{'metric':28s} value")
    for name in TABLE:
        print(f"{name:28s} {result[name]}")
    for kind, count in result["faults"].items():
        print(f"fault {kind:22s} {count}")
    for name, count in result["executions"].items():
        print(f"executions {name:17s} {count}")
    for name, count in result["relay_frames"].items():
        print(f"relay {name:22s} {count}")
    for name, count in result["http"].items():
        print(f"http {name:23s} {count}")
    if "hostile" in result:
        hostile = result["hostile"]
        for name in (
            "quiet_results_per_s",
            "hostile_results_per_s",
            "throughput_ratio",
            "quiet_http_answers_per_s",
            "hostile_http_answers_per_s",
            "http_throughput_ratio",
        ):
            print(f"hostile {name:20s} {hostile[name]}")
        print(f"hostile mesh_cpus {hostile['mesh_cpus']} attacker_cpus "
              f"{hostile['attacker_cpus']} nice {hostile['nice']}")  # fmt: skip
        if "flood_throughput_ratio" in hostile:
            print(f"hostile flood_throughput_ratio   {hostile['flood_throughput_ratio']}")
            print(f"hostile flood_http_throughput_ratio {hostile['flood_http_throughput_ratio']}")
        for kind, phase in hostile["phases"].items():
            print(f"phase {kind}: results/s {phase['results_per_s']}, HTTP answers/s "
                  f"{phase['http_answers_per_s']}")  # fmt: skip
            for name, seconds in phase["cpu_s"].items():
                print(f"  cpu_s {name:26s} {seconds}")
            if kind == "quiet":
                continue
            for name, rate in phase["sent_per_s_per_daemon"].items():
                print(f"  sent/s per daemon {name:25s} {rate}")
            for name, ratio in phase["rss_ratio"].items():
                print(f"  {name} rss x{ratio}, open files {phase['open_files'][name]}")
            for name, count in phase["dropped"].items():
                print(f"  dropped {name:24s} {count}")
    if not ok:
        print(f"FAILED: replay with --seed {args.seed} --minutes {args.minutes} "
              f"--nodes {args.nodes}; schedule:", file=sys.stderr)  # fmt: skip
        for line in result["schedule"]:
            print("  " + line, file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
