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
    ("targets.threads=0", "targets.threads=0 must be an int >= 1"),
])
def test_bad_targets_settings_fail_before_anything_runs(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        check(compose(["experiment=perf_targets", override, f"paths.results_dir={tmp_path}"]))
