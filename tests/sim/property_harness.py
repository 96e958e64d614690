"""The harness of the simulator's property tests (test_properties.py,
test_task_properties.py, test_stealing_properties.py): how examples are drawn, and what a
failing one prints.

The default run (the README's test command, CI) is derandomised: the same schedules on
every run, so a red build is a regression of the commit under test, never a new draw
that happens to find an old weakness. Searching for new cases is a separate, deliberate
run: set ``MESHGPU_PROPERTY_SEARCH=1`` (and raise the example count with
``MESHGPU_PROPERTY_EXAMPLES`` / ``MESHGPU_TASK_PROPERTY_EXAMPLES``); ``--hypothesis-seed=N``
replays a search. A failure prints the scenario's seed and the shrunk schedule as a whole
scenario file either way (design.md section 4): save it as ``repro.toml`` and
``meshgpu simulate repro.toml`` replays it exactly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from meshgpu.sim.report import SimulationReport, run_scenario
from meshgpu.sim.scenario import Scenario, scenario_to_toml

SEARCH = os.environ.get("MESHGPU_PROPERTY_SEARCH", "") not in ("", "0")
"""True: draw new schedules (and keep Hypothesis' example database); False: fixed ones."""


def property_settings(examples: int) -> settings:
    """Hypothesis settings of a simulator property test running ``examples`` scenarios."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=not SEARCH,
        database=settings.default.database if SEARCH else None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def draw_time(draw: st.DrawFn, low: float, high: float) -> float:
    """A fault or burst time between ``low`` and ``high`` seconds, to the centisecond (a
    reproduction file stays readable)."""
    return round(draw(st.floats(low, high, allow_nan=False)), 2)


def run_checked(scenario: Scenario, invariants: Iterable[str] | None = None) -> SimulationReport:
    """Run ``scenario`` and fail unless each of ``invariants`` (None: every invariant the
    run checked) is ``ok``, or if the run raises; the failure (which Hypothesis reports
    for the shrunk example) prints the seed and the scenario as TOML."""
    reproduce = scenario_to_toml(scenario)
    replay = f"save as repro.toml and run `meshgpu simulate repro.toml`:\n{reproduce}"
    try:
        report = run_scenario(scenario)
    except Exception as error:  # a crash of the run is a failure to reproduce too
        raise AssertionError(f"seed {scenario.seed}: the run raised {error!r}\n{replay}") from error
    if invariants is None:
        results = dict(report.invariants)
    else:
        results = {name: report.invariants.get(name, "not checked") for name in invariants}
    violated = {name: text for name, text in results.items() if text != "ok"}
    tasks = report.metrics.get("tasks")
    assert not violated, (
        f"seed {scenario.seed}: {violated}\n"
        + (f"tasks: {tasks}\n" if tasks is not None else "")
        + replay
    )
    return report
