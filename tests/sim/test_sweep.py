"""``meshgpu sweep``: a 2 parameters x 2 seeds sweep on the real core checks the CSV
columns, the summary against the runs, resume after an interruption, and that the same
spec gives the same CSV bytes (whatever the number of workers)."""

from __future__ import annotations

import csv
import io
import signal
import statistics
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from meshgpu.cli import main
from meshgpu.errors import ConfigError
from meshgpu.sim.sweep import load_sweep, run_sweep, runs
from meshgpu.sim.sweep.tables import t_quantile_975

BASE = """
[scenario]
name = "crash-small"
nodes = 5
duration_s = 6
seed = 1

[[fault]]
kind = "crash"
at_s = 3
nodes = "all"
count = 1
"""

SPEC = """
[sweep]
name = "small"
scenario = "base.toml"
seeds = [3, 4]
metrics = ["detection_s.p50", "detection_s.max", "suspicions", "network.sent", "nodes"]

[parameters]
"scenario.nodes" = [4, 5]
"timing.probe_interval" = [0.2, 0.25]

[[figure]]
name = "detection"
x = "scenario.nodes"
y = "detection_s.p50"
series = "timing.probe_interval"
"""


@pytest.fixture
def spec_path(tmp_path: Path) -> Path:
    (tmp_path / "base.toml").write_text(BASE)
    path = tmp_path / "small.toml"
    path.write_text(SPEC)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_runs_csv_has_one_row_per_run_with_parameters_seed_and_metrics(
    spec_path: Path, tmp_path: Path
) -> None:
    result = run_sweep(load_sweep(spec_path), tmp_path / "out", jobs=1)
    assert (result.total, result.ran, result.failed) == (8, 8, 0)
    rows = read_csv(tmp_path / "out" / "runs.csv")
    assert list(rows[0]) == [
        "point",
        "scenario.nodes",
        "timing.probe_interval",
        "seed",
        "ok",
        "error",
        "detection_s.p50",
        "detection_s.max",
        "suspicions",
        "network.sent",
        "nodes",
    ]
    assert [(r["scenario.nodes"], r["timing.probe_interval"], r["seed"]) for r in rows] == [
        (n, p, s) for n in ("4", "5") for p in ("0.2", "0.25") for s in ("3", "4")
    ]
    for row in rows:
        assert row["nodes"] == row["scenario.nodes"]  # the parameter reached the scenario
        assert float(row["detection_s.p50"]) > 0
        assert row["ok"] == "1" and row["error"] == ""
    # the seed reaches the run: two seeds of one point differ in what they measured
    first_point = [r for r in rows if r["point"] == "0"]
    assert first_point[0]["detection_s.max"] != first_point[1]["detection_s.max"]


def test_summary_matches_the_runs(spec_path: Path, tmp_path: Path) -> None:
    run_sweep(load_sweep(spec_path), tmp_path / "out", jobs=1)
    runs = read_csv(tmp_path / "out" / "runs.csv")
    summary = read_csv(tmp_path / "out" / "summary.csv")
    assert len(summary) == 4
    for row in summary:
        samples = [float(r["detection_s.max"]) for r in runs if r["point"] == row["point"]]
        assert row["runs"] == "2" and row["n_detection_s.max"] == "2"
        mean = statistics.fmean(samples)
        assert float(row["detection_s.max.mean"]) == pytest.approx(mean, rel=1e-8)
        assert float(row["detection_s.max.median"]) == pytest.approx(mean, rel=1e-8)
        assert (
            min(samples)
            <= float(row["detection_s.max.p5"])
            <= float(row["detection_s.max.p95"])
            <= max(samples)
        )
        half = t_quantile_975(1) * statistics.stdev(samples) / 2**0.5
        assert float(row["detection_s.max.ci95_low"]) == pytest.approx(mean - half, rel=1e-6)
        assert float(row["detection_s.max.ci95_high"]) == pytest.approx(mean + half, rel=1e-6)


def test_same_spec_gives_the_same_csv_bytes_with_any_number_of_workers(
    spec_path: Path, tmp_path: Path
) -> None:
    spec = load_sweep(spec_path)
    run_sweep(spec, tmp_path / "one", jobs=1)
    run_sweep(spec, tmp_path / "two", jobs=2)
    for name in ("runs.csv", "summary.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_an_interrupted_sweep_resumes_where_it_stopped(spec_path: Path, tmp_path: Path) -> None:
    spec = load_sweep(spec_path)
    out = tmp_path / "out"

    def interrupt_after_three(done: int, total: int, record: Any) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, out, jobs=1, progress=interrupt_after_three)
    assert len(list((out / "runs").glob("*.json"))) == 3
    assert not (out / "runs.csv").exists()
    with pytest.raises(ConfigError, match="--resume"):
        run_sweep(spec, out, jobs=1)
    resumed = run_sweep(spec, out, jobs=1, resume=True)
    assert (resumed.ran, resumed.reused) == (5, 3)
    run_sweep(spec, tmp_path / "fresh", jobs=1)
    for name in ("runs.csv", "summary.csv"):
        assert (out / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()


def test_a_changed_sweep_reuses_the_runs_it_shares(spec_path: Path, tmp_path: Path) -> None:
    run_sweep(load_sweep(spec_path), tmp_path / "out", jobs=1)
    spec_path.write_text(SPEC.replace("seeds = [3, 4]", "seeds = [3, 5]"))
    changed = load_sweep(spec_path)
    with pytest.raises(ConfigError, match="--resume"):
        run_sweep(changed, tmp_path / "out", jobs=1)
    result = run_sweep(changed, tmp_path / "out", jobs=1, resume=True)
    assert (result.reused, result.ran) == (4, 4)  # seed 3 of each point kept, seed 5 run
    assert {row["seed"] for row in read_csv(tmp_path / "out" / "runs.csv")} == {"3", "5"}
    run_sweep(changed, tmp_path / "fresh", jobs=1)
    for name in ("runs.csv", "summary.csv"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('"scenario.nodes" = [4, 5]', '"scenario.nodez" = [4]'), "unknown key 'nodez'"),
        (('"scenario.nodes" = [4, 5]', '"fault.2.at_s" = [1]'), "numbered from 1"),
        (('"scenario.nodes" = [4, 5]', '"fault.1.at_s" = [9]'), "after the end of the run"),
        (('series = "timing.probe_interval"', 'series = "timing.x"'), "not a varied"),
        (("seeds = [3, 4]", "seeds = [3, 3]"), "seed twice"),
        (
            ('"timing.probe_interval" = [0.2, 0.25]', '"timing.probe_interval" = {from = 1}'),
            "'from' and 'to'",
        ),
    ],
)
def test_bad_specs_are_errors_before_any_run(
    spec_path: Path, change: tuple[str, str], message: str
) -> None:
    spec_path.write_text(SPEC.replace(*change))
    with pytest.raises(ConfigError, match=message):
        load_sweep(spec_path)


def test_ranges_and_variants_expand_to_points(tmp_path: Path) -> None:
    (tmp_path / "base.toml").write_text(BASE)
    path = tmp_path / "grid.toml"
    path.write_text(
        '[sweep]\nscenario = "base.toml"\nseeds = 1\n'
        '[parameters]\n"scenario.nodes" = {from = 4, to = 16, count = 3, scale = "log"}\n'
        '"network.loss" = {from = 0.0, to = 0.1, step = 0.05}\n'
        '[variants.plain]\n"timing.lifeguard" = false\n'
        '[variants.lifeguard]\n"timing.lifeguard" = true\n'
    )
    spec = load_sweep(path)
    assert spec.parameters == ("variant", "scenario.nodes", "network.loss")
    assert len(spec.points) == 2 * 3 * 3
    assert sorted({dict(p.values)["scenario.nodes"] for p in spec.points}) == [4, 8, 16]
    assert sorted({dict(p.values)["network.loss"] for p in spec.points}) == [0.0, 0.05, 0.1]
    plain = next(p for p in spec.points if dict(p.values)["variant"] == "plain")
    assert spec.scenario(plain, 1).timing["lifeguard"] is False


def test_cli_writes_tables_and_says_when_figures_are_skipped(
    spec_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import meshgpu.sim.sweep as sweep_package

    monkeypatch.setattr(sweep_package, "figures_available", lambda: False)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["sweep", str(spec_path), "--out", str(out), "--jobs", "1"])
    assert result.exit_code == 0, result.output
    assert "figures skipped (1): matplotlib is not installed" in result.output
    assert (out / "runs.csv").exists() and (out / "summary.csv").exists()
    assert not (out / "detection.png").exists()
    again = CliRunner().invoke(main, ["sweep", str(spec_path), "--out", str(out)])
    assert again.exit_code == 2
    assert "--resume" in again.output


def test_cli_draws_figures_with_matplotlib(spec_path: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["sweep", str(spec_path), "--out", str(out), "--jobs", "1"])
    assert result.exit_code == 0, result.output
    assert (out / "detection.png").stat().st_size > 1000
    assert (out / "detection.svg").read_text().lstrip().startswith("<?xml")


def test_a_metric_no_report_holds_is_named_with_the_nearest_fields(
    spec_path: Path, tmp_path: Path
) -> None:
    misspelt = SPEC.replace('"detection_s.max"', '"detection_s.meen"').replace("[[figure]]", "[x]")
    misspelt = misspelt.split("[x]")[0].replace('"timing.probe_interval" = [0.2, 0.25]', "")
    spec_path.write_text(misspelt)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["sweep", str(spec_path), "--out", str(out), "--jobs", "1"])
    # It ran to status 0 with an empty column.
    assert result.exit_code == 2, result.output
    assert "metric 'detection_s.meen' is in no run's report" in result.output
    assert "did you mean detection_s.max" in result.output
    assert "'detection_s.p50'" not in result.output  # reported (undefined or not): fine
    assert len(read_csv(out / "runs.csv")) == 4  # the runs are kept
    spec_path.write_text(misspelt.replace("meen", "max"))
    again = CliRunner().invoke(
        main, ["sweep", str(spec_path), "--out", str(out), "--jobs", "1", "--resume"]
    )
    assert again.exit_code == 0, again.output
    assert "0 run(s)" in again.output and "4 kept from before" in again.output


def test_a_sweep_of_seeds_alone_names_each_run_by_its_seed(tmp_path: Path) -> None:
    (tmp_path / "base.toml").write_text(BASE)
    spec = tmp_path / "seeds.toml"
    spec.write_text('[sweep]\nscenario = "base.toml"\nseeds = [3]\n[parameters]\n')
    result = CliRunner().invoke(
        main, ["sweep", str(spec), "--out", str(tmp_path / "out"), "--jobs", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "1/1 (seed 3: ok;" in result.output  # was "(, seed 3: ok;"


def test_workers_are_started_ignoring_ctrl_c_from_their_first_instruction(
    spec_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workers' initializer ignores SIGINT only once Python has started and imported
    meshgpu (seconds on a loaded machine): a Ctrl-C then printed each worker's 'Fatal
    Python error: init_import_site' and its traceback. Started while the parent ignores
    it, they inherit SIG_IGN through exec; the parent's handler is back afterwards."""
    seen: list[Any] = []

    class Pool:
        def __init__(self, jobs: int, initializer: Any) -> None:
            seen.append(signal.getsignal(signal.SIGINT))

        def __enter__(self) -> Pool:
            return self

        def __exit__(self, *exc_info: Any) -> None:
            pass

        def imap_unordered(self, function: Any, tasks: Any) -> Any:
            return iter(())

    monkeypatch.setattr(runs, "get_context", lambda method: SimpleNamespace(Pool=Pool))
    before = signal.getsignal(signal.SIGINT)
    runs._run_in_workers(load_sweep(spec_path), [], 2, lambda record: None)
    assert seen == [signal.SIG_IGN]
    assert signal.getsignal(signal.SIGINT) is before
