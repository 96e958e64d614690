"""A submission's options are checked in the client, before anything is sent: the
entry node's answer to a bad one was a RequestFailedError prefixed by its address, and
some bad values it took as given."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest
import trio

from meshgpu.client import AsyncClient
from meshgpu.client.batches import deadline_seconds, submit_fields
from meshgpu.client.mapping import SUBMIT_OPTIONS
from meshgpu.client.models import ModelBlob
from meshgpu.errors import ConfigError

X = {"x": np.ones((2, 4), np.float32)}


@pytest.mark.parametrize("value", [-1, 0, 0.0, float("nan"), float("inf"), -float("inf")])
def test_a_deadline_that_is_no_positive_finite_count_of_seconds_is_refused(value: Any) -> None:
    with pytest.raises(ConfigError, match="deadline_s is the seconds a task may take"):
        deadline_seconds(value)


@pytest.mark.parametrize("value", [True, "5", None, [1]])
def test_a_deadline_that_is_no_number_is_refused(value: Any) -> None:
    """``True`` was a deadline of 1 s and ``"5"`` one of 5 s, by the daemon's float()."""
    with pytest.raises(ConfigError, match="deadline_s is a number of seconds, not"):
        deadline_seconds(value)


def test_a_good_deadline_is_kept_as_a_float() -> None:
    assert deadline_seconds(5) == 5.0 and type(deadline_seconds(5)) is float
    assert deadline_seconds(np.float32(0.5)) == 0.5
    assert deadline_seconds(1e300) == 1e300  # no deadline in practice, and harmless
    blob = ModelBlob.of(b"m")
    assert submit_fields(blob, "normal", 2, 2, None, 0, False)["deadline_s"] == 2.0
    assert "deadline_s" not in submit_fields(blob, "normal", 2, None, None, 0, False)


@pytest.mark.parametrize("call", ["submit", "submit_many"])
def test_submit_refuses_a_bad_deadline_before_it_needs_a_connection(call: str) -> None:
    client = AsyncClient("127.0.0.1:1")  # never entered: any request would fail otherwise

    async def main() -> None:
        if call == "submit":
            await client.submit(b"model", X, deadline_s=-1.0)
        else:
            await client.submit_many(b"model", [X], deadline_s=float("nan"))

    with pytest.raises(ConfigError, match="deadline_s is the seconds a task may take"):
        trio.run(main)


def test_a_maps_options_are_submit_manys_with_its_defaults() -> None:
    """map() passes on every option that becomes a request field, with the default
    submit_many gives it: one source, so a new option or a changed default reaches
    both."""
    many = inspect.signature(AsyncClient.submit_many).parameters
    fields = [name for name in inspect.signature(submit_fields).parameters if name != "blob"]
    assert list(SUBMIT_OPTIONS) == fields
    assert {name: many[name].default for name in fields} == SUBMIT_OPTIONS
    blob = ModelBlob.of(b"m")
    assert submit_fields(blob, **SUBMIT_OPTIONS) == {
        "model_digest": blob.digest,
        "priority": "normal",
        "replicas": 2,
        "min_memory": 0,
        "fp16": False,
    }
