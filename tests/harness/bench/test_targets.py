"""The performance targets as a job of the runner (jobs: [targets]): the same code as scripts/perf_targets.py,
settings from the config, rows in the run's store and report."""

from __future__ import annotations

import pytest

import attention_impls as ai
from harness.config import ConfigError, compose
from harness.run import check, run


def test_the_targets_job_stores_its_rows_and_reports_them(tmp_path, capsys):
    cfg = compose(["experiment=perf_targets", "targets.smoke=true", "targets.only=[auto_pick]",
                   f"paths.results_dir={tmp_path}"])
    assert cfg.name == "perf_targets"
    store = run(cfg, check(cfg))
    rows = store.read()
    assert set(rows["kind"]) == {"perf_target"} and len(rows) == len(ai.MECHANISMS)
    assert rows["target_key"].str.startswith("auto_pick.").all() and (rows["status"] == "ok").all()
    assert "issue targets met" in capsys.readouterr().out
    report = (tmp_path / "perf_targets" / "report.md").read_text()
    assert "## Performance targets" in report


@pytest.mark.parametrize("override, message", [
    ("targets.only=[nope]", "targets.only=['nope']: ['nope'] not known; choose from: dilated_gather"),
    ("targets.dtype=int8", "targets.dtype='int8' must be one of: float32, bfloat16, float16"),
    ("targets.device=tpu", "targets.device='tpu' must be cpu or cuda"),
    ("targets.threads=0", "targets.threads=0 must be >= 1 and <= 4096"),
])
def test_bad_targets_settings_fail_before_anything_runs(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        check(compose(["experiment=perf_targets", override, f"paths.results_dir={tmp_path}"]))


def test_a_measurement_that_hangs_is_a_timeout_row_and_the_next_one_runs(tmp_path):
    """Targets run in the runner's worker: a hung measurement is killed at targets.timeout_s and recorded, and
    the measurements after it still run in a fresh worker."""
    cfg = compose(["experiment=perf_targets", "targets.smoke=true", "targets.only=[dilated_scaling,auto_pick]",
                   "targets.timeout_s=5", "targets.fault_hook=shootout_faults:hang_in_paper_scaling",
                   f"paths.results_dir={tmp_path}"])
    rows = run(cfg, check(cfg)).read()
    hung = rows[rows["target_key"] == "dilated_scaling.per_token"]
    assert hung["status"].tolist() == ["timeout"] and "exceeded the time budget of 5 s" in hung["reason"].iloc[0]
    picks = rows[rows["target_key"].str.startswith("auto_pick.")]
    assert len(picks) == len(ai.MECHANISMS) and (picks["status"] == "ok").all()


def test_every_target_names_a_measurement_and_a_comparison():
    """The targets are data: each names one measurement and two of its quantities (the smoke run in
    tests/scripts/test_perf_targets.py checks every stored row's quantities hold both)."""
    from harness.bench import targets

    names = [m.name for m in targets.MEASUREMENTS]
    assert len(set(names)) == len(names) and {t.measurement for t in targets.TARGETS} == set(names)
    assert all(t.comparison in ("<=", ">=") and t.numerator != t.denominator for t in targets.TARGETS)
    assert len({t.key for t in targets.TARGETS}) == len(targets.TARGETS)
