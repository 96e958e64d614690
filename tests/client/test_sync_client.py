"""The blocking Client: its trio loop in a thread, errors handed to the caller's thread,
and a clean close after a failed map (fake peers in a server thread)."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import trio

from meshgpu.client import Client, Completed
from meshgpu.errors import ConfigError, TaskFailedError
from tests.client import test_session as fakes


@pytest.fixture
def fake_peer() -> Iterator[tuple[fakes.FakeMesh, fakes.FakePeer]]:
    """One fake peer served by its own trio loop; tasks fail if their input is negative."""
    mesh = fakes.FakeMesh()
    peer = fakes.FakePeer(mesh, "p1")
    fakes.PEERS[:] = [peer]
    ready = threading.Event()
    token: list[trio.lowlevel.TrioToken] = []
    stop = trio.CancelScope()

    async def serve() -> None:
        token.append(trio.lowlevel.current_trio_token())

        async def finish_tasks() -> None:
            done: set[str] = set()
            while True:
                for task_id in list(mesh.inputs):
                    if task_id not in done:
                        done.add(task_id)
                        bad = float(mesh.inputs[task_id].min()) < 0
                        mesh.release(task_id, fail="InputError: negative" if bad else None)
                await trio.sleep(0.01)

        with stop:
            async with trio.open_nursery() as nursery:
                await nursery.start(peer.serve)
                nursery.start_soon(finish_tasks)
                ready.set()

    thread = threading.Thread(target=lambda: trio.run(serve), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield mesh, peer
    finally:
        trio.from_thread.run_sync(stop.cancel, trio_token=token[0])
        thread.join(10)
        assert not thread.is_alive()


def test_sync_submit_result_and_map(fake_peer) -> None:
    _, peer = fake_peer
    with Client(f"127.0.0.1:{peer.port}", environ={}) as client:
        handle = client.submit(fakes.MODEL, {"x": np.arange(2, dtype=np.float32)})
        np.testing.assert_array_equal(handle.result(timeout=10)["y"], [0, 2])
        items = list(client.map(fakes.MODEL, [{"x": np.full(1, i, np.float32)} for i in range(6)]))
        assert sorted(item.index for item in items) == list(range(6))
        assert all(float(i.outputs["y"][0]) == 2 * i.index for i in items)
        assert client.peer is not None and client.peer[0] == "p1"


def test_a_failed_task_in_map_raises_and_the_client_still_closes_cleanly(fake_peer) -> None:
    _, peer = fake_peer
    client = Client(f"127.0.0.1:{peer.port}", environ={})
    inputs = [{"x": np.full(1, value, np.float32)} for value in (1, -1, 2)]
    with pytest.raises(TaskFailedError, match="negative"):
        for _ in client.map(fakes.MODEL, inputs):
            pass
    handle = client.submit(fakes.MODEL, {"x": np.ones(1, np.float32)})  # still usable
    assert float(handle.result(timeout=10)["y"][0]) == 2.0
    client.close()
    assert not client._thread.is_alive()


def test_an_inputs_generator_that_raises_reaches_the_loop_and_spares_the_client(
    fake_peer,
) -> None:
    # The generator is read in the client's nursery: its error used to cancel the client
    # and reach the loop as trio.Cancelled.
    _, peer = fake_peer

    def inputs() -> Iterator[dict[str, np.ndarray]]:
        yield {"x": np.ones(1, np.float32)}
        yield {"x": np.full(1, 2, np.float32)}
        raise ValueError("the third input could not be read")

    with Client(f"127.0.0.1:{peer.port}", environ={}) as client:
        taken = []
        with pytest.raises(ValueError, match="third input"):
            for item in client.map(fakes.MODEL, inputs()):
                taken.append(item.index)
        assert sorted(taken) == [0, 1]  # what was submitted before the error comes first
        handle = client.submit(fakes.MODEL, {"x": np.ones(1, np.float32)})  # still usable
        assert float(handle.result(timeout=10)["y"][0]) == 2.0


def test_a_resolved_handle_answers_without_the_clients_loop(fake_peer, monkeypatch) -> None:
    mesh, peer = fake_peer
    mesh.direct = True  # the answer to the submit is the result
    with Client(f"127.0.0.1:{peer.port}", environ={}) as client:
        handle = client.submit(fakes.MODEL, {"x": np.arange(2, dtype=np.float32)})
        assert handle.done()
        monkeypatch.setattr(client, "_run", lambda *a: pytest.fail("went through the loop"))
        np.testing.assert_array_equal(handle.result(1)["y"], [0, 2])
        assert handle.wait(1).state == "done"
        with pytest.raises(ConfigError, match="timeout is a number of seconds"):
            handle.result(-1)  # refused as when the outcome is not in yet
        monkeypatch.undo()
        table = client.submit(fakes.MODEL, {"x": np.ones(1, np.float32)}, direct=False)
        np.testing.assert_array_equal(table.result(10)["y"], [2])  # the loop's way


def numbered_map(client: Client, count: int) -> Iterator[Completed]:
    """A map of ``count`` one-element tasks (input i is [i]), eight in flight, one per
    task group."""
    inputs = ({"x": np.full(1, i, np.float32)} for i in range(count))
    return client.map(fakes.MODEL, inputs, window=8, group=1)


def test_a_map_read_to_the_end_acknowledges_every_task_and_warns_of_nothing(
    fake_peer, caplog
) -> None:
    """The background map must not give up the tasks of the bursts its consumer is still
    reading: a map that ended normally leaves nothing uncollected and no warning."""
    mesh, peer = fake_peer
    count = 40
    with (
        caplog.at_level(logging.WARNING, logger="meshgpu.client"),
        Client(f"127.0.0.1:{peer.port}", environ={}) as client,
    ):
        items = []
        for item in numbered_map(client, count):
            time.sleep(0.002)  # a consumer slower than the results: bursts queue up
            items.append(item)
        assert client.uncollected() == []
    assert "not collected" not in caplog.text
    assert sorted(item.index for item in items) == list(range(count))
    assert all(float(item.outputs["y"][0]) == 2 * item.index for item in items)
    assert sorted(mesh.collected) == sorted(item.task_id for item in items)


def test_a_map_left_early_names_exactly_the_tasks_it_did_not_hand_over(fake_peer, caplog) -> None:
    mesh, peer = fake_peer
    count = 40
    with (
        caplog.at_level(logging.WARNING, logger="meshgpu.client"),
        Client(f"127.0.0.1:{peer.port}", environ={}) as client,
    ):
        taken = []
        for item in numbered_map(client, count):
            taken.append(item.task_id)
            if len(taken) == 3:
                break
        left = [task_id for task_id, _ in client.uncollected()]
        unanswered = client._async.unanswered
    assert left, "a window of 8 had more tasks out than the 3 taken"
    assert f"map stopped: {len(left)} accepted task(s) not collected" in caplog.text
    assert not set(left) & set(taken)
    assert set(left) | set(taken) <= set(mesh.inputs)
    if unanswered == 0:  # a submission cut off unanswered may have been accepted unnamed
        assert set(left) | set(taken) == set(mesh.inputs)
    assert sorted(mesh.collected) == sorted(taken)


def test_a_map_whose_client_was_closed_under_it_names_what_it_did_not_hand_over(
    fake_peer, caplog
) -> None:
    mesh, peer = fake_peer
    client = Client(f"127.0.0.1:{peer.port}", environ={})
    mapped = numbered_map(client, 40)
    first = next(mapped)
    client.close()
    with caplog.at_level(logging.WARNING, logger="meshgpu.client"):
        mapped.close()
    left = {task_id for task_id, _ in client.uncollected()}
    # the item taken last could not be acknowledged any more: it is named with the rest
    assert first.task_id in left and len(left) > 1
    assert f"map stopped: {len(left)} accepted task(s) not collected" in caplog.text
    assert left <= set(mesh.inputs) and not left & set(mesh.collected)


def test_a_map_window_that_is_not_a_count_is_refused_and_the_client_closes(fake_peer) -> None:
    _, peer = fake_peer
    client = Client(f"127.0.0.1:{peer.port}", environ={})
    with pytest.raises(ConfigError, match="window is"):
        list(client.map(fakes.MODEL, [{"x": np.ones(1, np.float32)}], window=-1))
    client.close()
    # closing the with: the close used to raise the map's ValueError in an exception group


def test_a_map_names_only_the_tasks_it_left_not_those_of_a_map_beside_it(fake_peer, caplog) -> None:
    """Two maps of one client at once (threads, or generators read in turn): the one
    that ended normally named the other's abandoned tasks as its own."""
    _, peer = fake_peer
    with (
        caplog.at_level(logging.WARNING, logger="meshgpu.client"),
        Client(f"127.0.0.1:{peer.port}", environ={}) as client,
    ):
        beside = numbered_map(client, 10)
        items = [next(beside)]
        stopped = numbered_map(client, 40)
        for _ in range(3):
            next(stopped)
        stopped.close()
        left = len(client.uncollected())
        assert left and caplog.text.count("not collected") == 1
        items += list(beside)
    assert caplog.text.count("not collected") == 1, caplog.text
    assert f"map stopped: {left} accepted task(s)" in caplog.text
    assert sorted(item.index for item in items) == list(range(10))


def test_a_map_keyword_typo_is_a_type_error_and_the_client_still_closes_cleanly(
    fake_peer,
) -> None:
    _, peer = fake_peer
    client = Client(f"127.0.0.1:{peer.port}", environ={})
    with pytest.raises(TypeError, match="unexpected keyword argument 'priorty'"):
        list(client.map(fakes.MODEL, [{"x": np.ones(1, np.float32)}], priorty="high"))
    handle = client.submit(fakes.MODEL, {"x": np.ones(1, np.float32)})  # still usable
    assert float(handle.result(timeout=10)["y"][0]) == 2.0
    client.close()


def test_a_client_left_open_at_exit_still_acknowledges_its_results(fake_peer) -> None:
    """Without close(), the interpreter stopped the client's daemon thread before the
    acknowledger sent ``collected``: the result stayed in the mesh for ever."""
    mesh, peer = fake_peer
    script = (
        "import numpy as np, meshgpu\n"
        f"MODEL = {fakes.MODEL!r}\n"
        f"client = meshgpu.Client('127.0.0.1:{peer.port}', environ={{}})\n"
        "handle = client.submit(MODEL, {'x': np.ones(1, np.float32)}, direct=False)\n"
        "assert float(handle.result(timeout=10)['y'][0]) == 2.0\n"
        "print(handle.task_id)\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == mesh.collected
