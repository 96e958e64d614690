"""Direct runs (daemon/direct.py): an idle node runs a tiny task at once and answers the
submit with its result; anything else goes through the replicated table."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from meshgpu.daemon import direct as direct_module
from meshgpu.daemon.auth import Authenticator
from meshgpu.daemon.direct import is_direct_id
from meshgpu.daemon.payloads import decode_tensors, encode_tensors
from meshgpu.daemon.rpc import RpcConnection, open_rpc
from meshgpu.daemon.runtime import Daemon
from meshgpu.errors import DeviceError, RequestFailedError
from tests.daemon.test_runtime import DIGEST, MODEL, MODELS, run_one, settings

PIXELS = np.load(MODELS / "digits_test.npz")["pixels"][:4]


@pytest.fixture
async def solo(tmp_path: Path) -> AsyncIterator[tuple[Daemon, RpcConnection]]:
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(Daemon(settings(tmp_path / "solo")).run)
        async with open_rpc(daemon.address, Authenticator(None, "client-test")) as rpc:
            await rpc.call("put_model", digest=DIGEST, data=MODEL)
            yield daemon, rpc
        daemon.request_stop()


def count_this_machines_run_as_fast(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    """Raise ``DIRECT_RUN_S`` above the run of the model this machine measured (what the
    admission rule reads, ``expected_run_s``). "Fast enough to run directly" is relative
    to the machine: a warm-up run preempted on a loaded 2-core box was measured at 16 ms
    at load 20 (1.2 ms quiet), and one over the 20 ms default sent the next submit to the
    table where these tests expect a direct run."""
    measured = daemon.executor.expected_run_s(DIGEST, {"pixels": PIXELS[:1]})
    assert measured is not None  # the warm-up run was recorded: the rule has what it needs
    fast = max(direct_module.DIRECT_RUN_S, 10 * measured)
    monkeypatch.setattr(direct_module, "DIRECT_RUN_S", fast)


@pytest.fixture
async def warm(
    solo: tuple[Daemon, RpcConnection], monkeypatch: pytest.MonkeyPatch
) -> tuple[Daemon, RpcConnection]:
    """``solo`` after one run of the model through the table (a cold model's way), with
    this machine's run of it counted as fast (``count_this_machines_run_as_fast``)."""
    daemon, rpc = solo
    first = await run_one(rpc, {"pixels": PIXELS[:1]})  # never run here: the table
    assert first["state"] == "done", first
    count_this_machines_run_as_fast(daemon, monkeypatch)
    return daemon, rpc


async def submit(rpc: RpcConnection, pixels: np.ndarray, **fields: object) -> dict:
    return await rpc.call(
        "submit", model_digest=DIGEST, inputs=encode_tensors({"pixels": pixels}), **fields
    )


def expected(pixels: np.ndarray) -> np.ndarray:
    from meshgpu import inference

    return inference.load(MODEL, backend="onnxruntime").run({"pixels": pixels})["probabilities"]


async def test_a_cold_model_goes_through_the_table_then_runs_directly(warm) -> None:
    _, rpc = warm  # the model ran once, through the table
    before = (await rpc.call("status"))["tasks"]
    answer = await submit(rpc, PIXELS[1:2])
    assert answer["direct"] is True and answer["state"] == "done"
    assert answer["copies"] == 0 and answer["worker"] == "solo"
    got = decode_tensors(answer["outputs"])["probabilities"]
    np.testing.assert_allclose(got, expected(PIXELS[1:2]), rtol=1e-6)
    # Nothing of it entered the table: nothing to hold, collect or list.
    status = await rpc.call("status")
    assert status["tasks"] == before
    assert status["counters"]["daemon"]["direct_runs"] == 1
    assert is_direct_id(answer["task_id"])


async def test_direct_false_always_uses_the_table(warm) -> None:
    _, rpc = warm
    answer = await submit(rpc, PIXELS[1:2], direct=False)
    assert "direct" not in answer and answer["copies"] == 1


async def test_a_wrong_shape_in_a_direct_run_is_a_failed_answer_and_the_node_serves(warm) -> None:
    _, rpc = warm
    answer = await submit(rpc, np.zeros((1, 63), dtype=np.float32))
    assert answer["direct"] is True and answer["state"] == "failed"
    assert "pixels" in answer["reason"] and answer["outputs"] is None
    assert (await submit(rpc, PIXELS[:1]))["state"] == "done"  # still serving


async def test_a_transient_failure_falls_back_to_the_table(warm, monkeypatch) -> None:
    daemon, rpc = warm
    real_run = daemon.executor.run
    failures = []

    async def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        if not failures:
            failures.append(1)
            raise DeviceError("device lost")
        return await real_run(*args, **kwargs)

    monkeypatch.setattr(daemon.executor, "run", flaky)
    answer = await submit(rpc, PIXELS[2:3])
    assert "direct" not in answer and answer["copies"] == 1  # acknowledged by the table
    outcomes = [o async for o in rpc.stream("results", task_ids=[answer["task_id"]])]
    assert outcomes[0]["state"] == "done"
    got = decode_tensors(outcomes[0]["outputs"])["probabilities"]
    np.testing.assert_allclose(got, expected(PIXELS[2:3]), rtol=1e-6)
    status = await rpc.call("status")
    assert status["counters"]["daemon"]["direct_fallbacks"] == 1


async def test_a_slow_model_a_busy_node_or_an_unmet_requirement_use_the_table(
    warm, monkeypatch
) -> None:
    daemon, rpc = warm
    table = []
    fast = direct_module.DIRECT_RUN_S
    monkeypatch.setattr(direct_module, "DIRECT_RUN_S", 0.0)  # every run is "slow" now
    table.append(await submit(rpc, PIXELS[1:2]))
    monkeypatch.setattr(direct_module, "DIRECT_RUN_S", fast)
    daemon.executor.active += 1  # as if a table task held the slot
    try:
        table.append(await submit(rpc, PIXELS[1:2]))
    finally:
        daemon.executor.active -= 1
    table.append(await submit(rpc, PIXELS[1:2], device_type="gpu"))  # a CPU node
    assert all("direct" not in answer and answer["copies"] == 1 for answer in table)
    ids = [answer["task_id"] for answer in table[:2]]
    outcomes = [o async for o in rpc.stream("results", task_ids=ids)]
    assert {o["state"] for o in outcomes[:-1]} == {"done"}
    await rpc.call("collected", task_ids=ids)
    # The gpu task stays queued (no gpu here), so the node is not idle: still the table,
    # though its slot is free and the model fast.
    assert daemon.executor.active == 0
    assert "direct" not in await submit(rpc, PIXELS[1:2])


async def test_a_direct_submit_checks_every_field_as_the_table_does(warm) -> None:
    _, rpc = warm
    for bad in ({"priority": "bogus"}, {"replicas": "x"}, {"deadline_s": "abc"}):
        with pytest.raises(RequestFailedError):
            await submit(rpc, PIXELS[1:2], **bad)
    assert (await submit(rpc, PIXELS[1:2])).get("direct") is True  # still serving


async def test_a_large_input_of_a_fast_model_goes_through_the_table(warm) -> None:
    daemon, rpc = warm
    assert (await submit(rpc, PIXELS[1:2])).get("direct") is True
    inline_before = daemon.executor.inline_runs
    big = np.tile(PIXELS[:1], (50_000, 1))  # 12.8 MB: expected 50,000 x the 1-row run
    answer = await submit(rpc, big)
    assert "direct" not in answer and answer["copies"] == 1
    outcomes = [o async for o in rpc.stream("results", task_ids=[answer["task_id"]])]
    assert outcomes[0]["state"] == "done"
    assert daemon.executor.inline_runs == inline_before  # in a worker thread, not the loop


def test_cli_no_wait_submits_through_the_table_so_the_id_can_be_collected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from meshgpu.cli import main

    sample = tmp_path / "one.npy"
    np.save(sample, PIXELS[:1])

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            daemon: Daemon = await nursery.start(Daemon(settings(tmp_path / "solo")).run)
            peer = f"127.0.0.1:{daemon.address[1]}"
            async with open_rpc(daemon.address, Authenticator(None, "client-test")) as rpc:
                await rpc.call("put_model", digest=DIGEST, data=MODEL)
                await run_one(rpc, {"pixels": PIXELS[:1]})
                count_this_machines_run_as_fast(daemon, monkeypatch)
                assert (await submit(rpc, PIXELS[:1])).get("direct") is True
                args = ["submit", "digits", "-i", f"pixels={sample}", "--peer", peer]
                result = await trio.to_thread.run_sync(
                    lambda: CliRunner().invoke(main, [*args, "--no-wait", "--json"])
                )
                assert result.exit_code == 0, result.output
                (row,) = json.loads(result.stdout.strip().splitlines()[-1])["tasks"]
                assert not is_direct_id(row["task_id"]) and row["state"] == "submitted"
                outcomes = [o async for o in rpc.stream("results", task_ids=[row["task_id"]])]
                assert outcomes[0]["state"] == "done"
            daemon.request_stop()

    trio.run(scenario)


async def test_inputs_stay_held_until_the_core_answers_even_if_the_request_is_gone(
    solo, monkeypatch
) -> None:
    """The client gives up before the core answers (here the core is kept from seeing
    the submission until then): the entry's hold on the inputs must outlive the request
    until the core answers, then turn into the accepted task's reference."""
    import hashlib

    from meshgpu.core.events import SubmitTask
    from meshgpu.daemon.payloads import canonical_tensor_bytes

    daemon, _ = solo
    digest = hashlib.sha256(canonical_tensor_bytes({"pixels": PIXELS[3:4]})).hexdigest()
    held: list[SubmitTask] = []
    submissions = daemon.handlers.submissions
    feed = submissions._feed
    monkeypatch.setattr(
        submissions, "_feed", lambda e: held.append(e) if isinstance(e, SubmitTask) else feed(e)
    )
    request_ended = trio.Event()
    acknowledged = submissions._acknowledged

    async def watched(*args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return await acknowledged(*args, **kwargs)
        finally:
            request_ended.set()

    monkeypatch.setattr(daemon.handlers.submissions, "_acknowledged", watched)
    async with open_rpc(daemon.address, Authenticator(None, "client-test")) as own:
        with trio.move_on_after(0.3) as gave_up:
            await submit(own, PIXELS[3:4], direct=False)
    assert gave_up.cancelled_caught and len(held) == 1
    with trio.fail_after(20):
        await request_ended.wait()  # the daemon saw the hang-up and ended the request
    assert daemon.dataplane.submitting[digest] == 1  # the request is gone, the hold stays
    monkeypatch.undo()
    (pending,) = daemon.handlers.submissions._pending.values()
    daemon.feed(held[0])  # the core answers now
    with trio.fail_after(20):
        await pending.done.wait()
    assert digest not in daemon.dataplane.submitting
    assert daemon.dataplane.input_refs[digest]  # now the accepted task's reference


async def test_concurrent_direct_runs_cut_off_by_a_crash_are_resent_and_each_answered_once(
    tmp_path: Path, monkeypatch
) -> None:
    """Four callers' direct runs under way on node a (held there) when a crashes: none of
    them was ever answered, so each client resends its submission to b, and each caller
    gets exactly one outcome, its own row's, from b (docs/daemon.md, "Direct runs").
    (DIRECT_RUN_S is raised so that admitting four depends on the count of runs in
    flight, not on how fast this machine ran the warm-up.)"""
    import dataclasses

    from meshgpu.client import AsyncClient

    monkeypatch.setattr(direct_module, "DIRECT_RUN_S", 10.0)
    first = Daemon(dataclasses.replace(settings(tmp_path / "a"), name="a"))
    crash = trio.CancelScope()

    async def run_first(task_status=trio.TASK_STATUS_IGNORED):  # type: ignore[no-untyped-def]
        with crash:
            await first.run(task_status=task_status)

    arrived: list[int] = []
    all_in = trio.Event()
    outcomes: dict[int, Any] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(run_first)
        peers = (f"127.0.0.1:{first.address[1]}",)
        second = Daemon(dataclasses.replace(settings(tmp_path / "b"), name="b", peers=peers))
        await nursery.start(second.run)
        async with open_rpc(first.address, Authenticator(None, "warm")) as rpc:
            await rpc.call("put_model", digest=DIGEST, data=MODEL)
        model_path = first.models.path(DIGEST)
        await first.executor.run(DIGEST, model_path, {"pixels": PIXELS[:1]})  # warm
        real_run = first.executor.run

        async def held_run(*args, **kwargs):  # type: ignore[no-untyped-def]
            arrived.append(1)
            if len(arrived) == len(PIXELS):
                all_in.set()
            await trio.sleep_forever()  # a's runs never end: it dies first
            return await real_run(*args, **kwargs)

        monkeypatch.setattr(first.executor, "run", held_run)
        address = ("127.0.0.1", first.address[1])
        async with AsyncClient(address, environ={}, status_interval=0.05) as client:
            with trio.fail_after(60):
                while len((await client.status())["members"]) < 2:
                    await trio.sleep(0.05)

            async def caller(index: int) -> None:
                handle = await client.submit(
                    MODELS / "digits.onnx", {"pixels": PIXELS[index : index + 1]}
                )
                outcomes[index] = await handle.wait(120)

            with trio.fail_after(180):
                async with trio.open_nursery() as callers:
                    for index in range(len(PIXELS)):
                        callers.start_soon(caller, index)
                    await all_in.wait()
                    # Every caller's run is a direct run on a, each admitted while the
                    # others were under way.
                    assert first.handlers.submissions.direct.in_flight == len(PIXELS)
                    assert not outcomes
                    crash.cancel()  # a dies with every direct run unanswered
        want = expected(PIXELS)
        assert sorted(outcomes) == list(range(len(PIXELS)))
        for index, outcome in outcomes.items():
            assert outcome.error is None and outcome.worker == "b", outcome
            got = outcome.outputs["probabilities"]
            np.testing.assert_allclose(got[0], want[index], rtol=1e-5)
        assert first.handlers.submissions.direct.runs == 0  # a answered none of them
        second.request_stop()


async def test_a_direct_run_under_way_counts_in_the_load_the_node_gossips(
    warm, monkeypatch
) -> None:
    """Least-loaded balancing reads active tasks and free slots from the gossiped load:
    a node busy with direct runs must not look idle to it."""
    daemon, rpc = warm
    real_run = daemon.executor.run
    started, release = trio.Event(), trio.Event()

    async def held(*args, **kwargs):  # type: ignore[no-untyped-def]
        started.set()
        await release.wait()
        return await real_run(*args, **kwargs)

    monkeypatch.setattr(daemon.executor, "run", held)
    meter = daemon.load_meter
    assert meter is not None
    idle = meter.measure()
    answers = []
    async with trio.open_nursery() as nursery:

        async def one() -> None:
            answers.append(await submit(rpc, PIXELS[1:2]))

        nursery.start_soon(one)
        with trio.fail_after(30):
            await started.wait()
        busy = meter.measure()
        release.set()
    assert answers[0]["direct"] is True and answers[0]["state"] == "done"
    assert (idle.active_tasks, busy.active_tasks) == (0, 1)
    assert busy.free_slots == idle.free_slots - 1
    assert meter.measure().active_tasks == 0
