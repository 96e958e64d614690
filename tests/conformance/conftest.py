"""Print the conformance counts at the end of every run that includes these tests.

For each conformance file (and, for the onnx suites, each suite) the summary gives passed,
skipped and failed counts, and the skip reasons grouped by unsupported operator, so the
pass count is visible in CI logs without reading every line.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Any

import pytest

_outcomes: dict[str, Counter[str]] = defaultdict(Counter)
_skipped_ops: Counter[str] = Counter()
_SUITE_NAMES = {
    "OnnxBackendNodeModelTest": "onnx node",
    "OnnxBackendPyTorchConvertedModelTest": "onnx pytorch-converted",
    "OnnxBackendPyTorchOperatorModelTest": "onnx pytorch-operator",
    "OnnxBackendSimpleModelTest": "onnx simple",
}
_OPERATOR = re.compile(r"(?:operator\(s\): |unsupported: )([A-Za-z]+) \(opset")


def _group(nodeid: str) -> str | None:
    if "tests/conformance/" not in nodeid and not nodeid.startswith("conformance/"):
        return None
    for class_name, label in _SUITE_NAMES.items():
        if f"::{class_name}::" in nodeid:
            return label
    return nodeid.split("::")[0].rsplit("/", 1)[-1]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    group = _group(report.nodeid)
    if group is None:
        return
    if report.when == "call" and report.passed:
        _outcomes[group]["passed"] += 1
    elif report.failed:
        _outcomes[group]["failed"] += 1
    elif report.skipped and hasattr(report, "wasxfail"):
        _outcomes[group]["xfailed"] += 1  # an expected failure, with its reason in the summary
    elif report.skipped:
        _outcomes[group]["skipped"] += 1
        reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else ""
        match = _OPERATOR.search(reason)
        _skipped_ops[match.group(1) if match else reason[:60]] += 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _outcomes:
        return
    write = terminalreporter.write_line
    terminalreporter.section("meshgpu conformance")
    for group in sorted(_outcomes):
        counts = _outcomes[group]
        total = sum(counts.values())
        expected = f", {counts['xfailed']} expected failures" if counts["xfailed"] else ""
        write(
            f"{group}: {counts['passed']} passed, {counts['skipped']} skipped, "
            f"{counts['failed']} failed{expected} (of {total})"
        )
    if _skipped_ops:
        write(
            "skipped for unsupported operators: "
            + ", ".join(f"{op} x{count}" for op, count in _skipped_ops.most_common())
        )
