"""The acknowledgement waits for the journal's group commit (one daemon in-process): a
submission is answered only once its record is on stable storage, while the daemon
keeps serving other requests meanwhile."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import trio

from meshgpu.core.effects import TaskAccepted
from meshgpu.daemon.auth import Authenticator
from meshgpu.daemon.payloads import encode_tensors
from meshgpu.daemon.rpc import open_rpc
from meshgpu.daemon.runtime import Daemon
from tests.daemon.test_runtime import DIGEST, MODEL, settings

WAIT_S = 30.0


async def test_a_submission_is_acknowledged_only_after_its_record_is_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = Daemon(settings(tmp_path / "solo"))
    entered, release = threading.Event(), threading.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        real_sync = daemon.journal.sync

        def held_sync() -> int:
            entered.set()
            if not release.wait(WAIT_S):
                raise AssertionError("the test never released the sync")
            return real_sync()

        async with open_rpc(daemon.address, Authenticator(None, "client-test")) as rpc:
            await rpc.call("put_model", digest=DIGEST, data=MODEL)
            monkeypatch.setattr(daemon.journal, "sync", held_sync)
            answers: list[dict] = []
            answered = trio.Event()
            pixels = encode_tensors({"pixels": np.zeros((1, 64), dtype=np.float32)})

            async def submit() -> None:
                answers.append(
                    await rpc.call(
                        "submit", model_digest=DIGEST, inputs=pixels, replicas=1, direct=False
                    )
                )
                answered.set()

            nursery.start_soon(submit)
            with trio.fail_after(WAIT_S):
                await trio.to_thread.run_sync(entered.wait, WAIT_S)
                await daemon.effects.gated_ready.wait()  # a lone node gates only the ack
            assert [type(e) for _, e in daemon.effects.gated] == [TaskAccepted]
            # The acknowledgement waits behind the sync; the daemon still serves.
            assert not answered.is_set()
            assert daemon.journal.synced_seq < daemon.effects.gated[0][0]
            assert (await rpc.call("ping"))["node_id"] == "solo"
            assert not answered.is_set()
            release.set()
            with trio.fail_after(WAIT_S):
                await answered.wait()
            assert answers[0]["copies"] == 1
            assert daemon.journal.synced_seq >= 1
        daemon.request_stop()
