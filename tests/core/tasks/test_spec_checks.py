"""A task spec refuses values no task can have, whoever builds it (CLI, client, HTTP)."""

from __future__ import annotations

import math

import pytest

from meshgpu.core.tasks import TaskSpec
from meshgpu.errors import TaskError


@pytest.mark.parametrize("deadline_s", [0.0, -1.0, math.nan])
def test_a_deadline_must_be_a_positive_number_of_seconds(deadline_s: float) -> None:
    # NaN passed "<= 0" and made a task no deadline check ever expires.
    with pytest.raises(TaskError, match="deadline_s must be positive"):
        TaskSpec(model_digest="ab" * 32, input_digest="cd" * 32, deadline_s=deadline_s)
