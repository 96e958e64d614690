"""A task group's label, made by the entry node from its members' labels."""

from __future__ import annotations

from meshgpu.core.tasks.spec import LABEL_MAX
from meshgpu.daemon.submissions import group_label


def test_a_group_label_lists_its_members_or_names_the_ends() -> None:
    assert group_label([None, None]) is None
    assert group_label(["run-3", "run-3"]) == "run-3"
    assert group_label(["0001", None, "0003"]) == "0001,0003"
    long = [f"sample-{index:05d}" for index in range(64)]
    label = group_label(long)
    assert label is not None and len(label) <= LABEL_MAX
    assert label.startswith("sample-00000 .. sample-00063") and "(64)" in label
