"""A range request's ``offset`` and ``length`` are checked in one place for every payload
kind (inputs, models, results): integers, offset >= 0, length > 0, capped at a range."""

from __future__ import annotations

from typing import Any

import pytest

from meshgpu.daemon.peer_ops import requested_range
from meshgpu.errors import DecodeError


def test_a_range_is_capped_at_the_chunk_and_none_means_the_whole_payload() -> None:
    assert requested_range({}, 16) == (None, 16)
    assert requested_range({"offset": 4, "length": 8}, 16) == (4, 8)
    assert requested_range({"offset": 0, "length": 1 << 40}, 16) == (0, 16)


@pytest.mark.parametrize(
    "request_",
    [
        {"offset": -1},
        {"offset": 0, "length": 0},
        {"offset": 0, "length": -5},
        {"offset": 1.5},
        {"offset": "0"},
        {"offset": 0, "length": None},
    ],
)
def test_a_malformed_range_is_a_decode_error(request_: dict[str, Any]) -> None:
    with pytest.raises(DecodeError, match="'offset' and 'length' are a range"):
        requested_range(request_, 16)
