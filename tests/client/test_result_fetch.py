"""A large result's fetch in ranges (outcomes.fetch_result) against an entry whose
answers name attempts."""

from __future__ import annotations

from typing import Any

import numpy as np

from meshgpu.client.outcomes import fetch_result
from meshgpu.daemon.payloads import canonical_tensor_bytes

CHUNK = 64 << 10


class Entry:
    """Answers get_result from one attempt's result blob, naming that attempt."""

    def __init__(self, blob: bytes, attempt: int) -> None:
        self.blob = blob
        self.attempt = attempt
        self.asked: list[Any] = []

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        assert op == "get_result"
        self.asked.append(fields.get("attempt"))
        offset, length = fields["offset"], fields["length"]
        data = self.blob[offset : offset + length]
        return {"data": data, "size": len(self.blob), "attempt": self.attempt}


async def test_a_newer_attempts_result_of_another_size_is_fetched_whole() -> None:
    """``done`` named attempt 1 and its size; by the fetch the entry serves attempt 2's
    result (a newer attempt installed since: a model whose output's shape varies from
    run to run), of another size. The fetch delivers attempt 2's result whole: the size
    announced was attempt 1's, and no answer of attempt 1 came to hold it against."""
    first = canonical_tensor_bytes({"y": np.zeros(200_000, np.float32)})
    second = np.arange(300_000, dtype=np.float32)
    entry = Entry(canonical_tensor_bytes({"y": second}), attempt=2)
    outputs = await fetch_result(entry, "n1:7", len(first), CHUNK, attempt=1)  # type: ignore[arg-type]
    np.testing.assert_array_equal(outputs["y"], second)
    assert entry.asked[0] == 1 and set(entry.asked[1:]) == {2}
