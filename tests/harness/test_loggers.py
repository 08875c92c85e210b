import json
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest

from harness.loggers import NullLogger, WandbLogger


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path


def test_null_logger_accepts_every_call():
    logger = NullLogger()
    logger.start({}, "e", "j", "e/j")
    logger.log_curve("c", "step", 0, {"a": 1.0})
    logger.log_summary({"a": 1.0})
    logger.log_rows(pd.DataFrame({"a": [1]}), "j")
    logger.log_images({})
    logger.log_files([], "x")
    logger.use_artifacts(["rows-e-j"])
    logger.finish()


def test_offline_wandb_run_holds_config_and_results_table(offline, capsys):
    results = offline / "results.csv"
    results.write_text("variant,latency\nfixture,1\n")
    logger = WandbLogger(dir=offline, tags=("test",))
    logger.start({"experiment": "fixture", "marker": "config-marker-7f3a"}, "fixture", "speed", "fixture/speed")
    assert logger.run is not None
    logger.log_curve("train", "step", 1, {"loss": 0.5})
    logger.log_rows(pd.DataFrame({"variant": ["dense (sdpa)", "dilated (gather)"], "latency_median_s": [0.1, 0.2],
                                  "params": ["{}", None]}), "speed")
    logger.log_files([results], "results-fixture")
    logger.finish()
    assert logger.run is None
    out = capsys.readouterr().out
    assert "wandb sync" in out
    runs = list((offline / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    run = runs[0]
    assert f"wandb sync {run.parent}/offline-run-*" in out  # every run of the job: speed, ..., report
    # wandb-core writes the transaction log in its own process and may still be flushing it when finish()
    # returns (seen twice in ~10 full runs: only the 7-byte header read back); its exit flushes the rest.
    deadline = time.monotonic() + 30
    while b"config-marker-7f3a" not in next(run.glob("run-*.wandb")).read_bytes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert b"config-marker-7f3a" in next(run.glob("run-*.wandb")).read_bytes()
    table_files = list(run.glob("files/media/table/speed/rows_*.table.json"))
    assert len(table_files) == 1
    table = json.loads(table_files[0].read_text().replace("NaN", "null"))
    assert table["columns"] == ["variant", "latency_median_s", "params"]
    assert [row[0] for row in table["data"]] == ["dense (sdpa)", "dilated (gather)"]


def test_each_job_gets_its_own_run(offline):
    names = []
    for job in ("job-a", "job-b"):
        logger = WandbLogger(dir=offline)
        logger.start({"job": job}, "fixture", job, job)
        names.append((logger.run.name, logger.run.id, logger.run.group))
        logger.finish()
    assert [n[0] for n in names] == ["job-a", "job-b"] and names[0][1] != names[1][1]
    assert {n[2] for n in names} == {"fixture"}
    assert len(list((offline / "wandb").glob("offline-run-*"))) == 2


def test_wandb_errors_warn_and_never_fail_the_run(offline, monkeypatch):
    import wandb

    def unreachable(**kwargs):
        raise ConnectionError("api.wandb.ai unreachable")

    monkeypatch.setattr(wandb, "init", unreachable)
    logger = WandbLogger(dir=offline)
    with pytest.warns(RuntimeWarning, match="unreachable"):
        logger.start({}, "fixture", "job", "fixture/job")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no run: the remaining calls are silent no-ops
        logger.log_curve("c", "step", 1, {"a": 1.0})
        logger.log_rows(pd.DataFrame({"a": [1]}), "job")
        logger.finish()


def test_a_failing_log_call_warns_and_keeps_going(offline):
    logger = WandbLogger(dir=offline)
    logger.start({}, "fixture", "job", "fixture/job")
    with pytest.warns(RuntimeWarning, match="log_images"):
        logger.log_images({"broken": Path(__file__)})  # not an image: wandb raises, the logger warns
    logger.log_curve("c", "step", 1, {"a": 1.0})
    logger.finish()


def test_bad_mode_is_rejected_before_any_work():
    with pytest.raises(ValueError, match="logger.mode='onlin'"):
        WandbLogger(mode="onlin")


def test_under_a_sweep_agent_every_job_logs_into_one_run_finished_after_the_report(offline, monkeypatch):
    monkeypatch.setenv("WANDB_SWEEP_ID", "fixture-sweep")
    logger = WandbLogger(dir=offline)
    logger.start({}, "fixture", "speed", "fixture/speed")
    first = logger.run
    logger.log_curve("speed/a", "seq_len", 64, {"latency_median_s": 1.0})
    logger.finish()
    assert logger.run is first  # still open for the next job
    logger.start({}, "fixture", "report", "fixture/report")
    assert logger.run is first
    logger.finish()
    assert logger.run is None
    assert len(list((offline / "wandb").glob("offline-run-*"))) == 1


def test_an_api_key_without_a_reachable_server_logs_offline_at_once(offline, monkeypatch):
    """A key (even a bogus one) and no network: wandb.init would retry for minutes; the run goes offline now."""
    import time

    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "bogus" + "0" * 35)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    logger = WandbLogger(dir=offline)
    started = time.monotonic()
    with pytest.warns(RuntimeWarning, match="W&B server unreachable .*127.0.0.1:9.*logging offline instead"):
        logger.start({"seed": 0}, "e", "speed", "e/speed")
    assert logger._offline and time.monotonic() - started < 30
    logger.finish()


def test_an_empty_wandb_mode_is_treated_as_unset(offline, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "")
    logger = WandbLogger(dir=offline, mode="offline")
    logger.start({"seed": 0}, "e", "speed", "e/speed")
    assert logger.run is not None
    logger.finish()
