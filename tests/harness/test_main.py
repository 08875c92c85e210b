"""`python -m harness` as users run it: a two-point multirun end to end, and every preset shrunk."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from harness.config import compose, group_options
from harness.run import run

REPO = Path(__file__).resolve().parents[2]
SHRINK = ["benchmark.heads=2", "benchmark.head_dim=16", "benchmark.warmup=0", "benchmark.min_run_time_s=0.002",
          "benchmark.min_repeats=2", "benchmark.correctness.seq_len=32", "benchmark.ceiling.size=64",
          "benchmark.ceiling.min_run_time_s=0.002", "benchmark.threads=1", "benchmark.isolation=inline"]


def test_two_point_multirun_end_to_end(tmp_path):
    # inline measurement keeps this to one interpreter start; the process worker has its own test.
    command = [sys.executable, "-m", "harness", "-m", "attention=dense_sdpa,dilated_gather", "benchmark=quick",
               "benchmark.seq_lens=[64]", "benchmark.passes=[forward]", *SHRINK, f"paths.results_dir={tmp_path}",
               "name=e2e", f"hydra.sweep.dir={tmp_path}/multirun"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = pd.read_parquet(tmp_path / "e2e" / "results.parquet")
    assert sorted(results["variant"]) == ["dense_sdpa", "dilated_gather"]
    assert (results["status"] == "ok").all() and results["job_id"].nunique() == 2
    assert (tmp_path / "e2e" / "results.csv").is_file()
    assert "point 1/1" in done.stderr and "dilated_gather" in done.stderr  # progress bar and summary table


RETRIEVAL_SHRINK = ["train.max_steps=2", "train.eval_every=1", "train.val_sequences=8", "train.batch_size=4",
                    "train.lrs=[1e-3]", "train.seeds=1", "task.seq_len=128", "task.num_pairs=8", "model.d_model=32",
                    "model.heads=2",
                    "train.progress=false", "train.device=cpu", "eval.seq_lens=[]", "eval.sequences=8", "eval.batch_size=8",
                    "probe.seq_len=64", "probe.heads=2", "probe.head_dim=16"]


@pytest.mark.parametrize("option", group_options("experiment"))
def test_every_experiment_preset_runs_shrunk(option, tmp_path):
    # forward_backward only: FlexAttention variants become `unsupported` rows on CPU instead of compiling.
    shrink = ["benchmark.seq_lens=[64]", "benchmark.passes=[forward_backward]", "benchmark.causal=[false]",
              "benchmark.max_seq_len.start=64", "benchmark.max_seq_len.limit=64", *SHRINK, *RETRIEVAL_SHRINK,
              "targets.smoke=true", "targets.only=[auto_pick]", "report=false"]
    cfg = compose([f"experiment={option}", f"paths.results_dir={tmp_path}", *shrink])
    rows = run(cfg).read_job()
    variants = 1 + len(cfg.variants)
    assert set(rows["kind"]) >= {{"targets": "perf_target"}.get(job, job) for job in cfg.jobs}
    assert set(rows["status"]) <= {"ok", "unsupported"}, rows.loc[rows["status"] != "ok", "reason"].tolist()
    if "speed" in cfg.jobs:
        speed = rows[rows["kind"] == "speed"]
        assert len(speed) == variants
        assert (speed.loc[speed["backend"] != "flex", "status"] == "ok").all()
    for kind in ("probe", "retrieval"):
        if kind in cfg.jobs:
            assert rows.loc[rows["kind"] == kind, "name"].nunique() == variants


WRITER = """
import sys, time
from harness.store import ResultsStore
store = ResultsStore(sys.argv[1], "killed", job_id="writer")
i = 0
while True:
    store.append({"kind": "speed", "status": "ok", "config_hash": str(i), "latency_times_s": list(range(200)),
                  "reason": "x" * 20000})
    store.consolidate()
    i += 1
    if i == 3:
        print("writing", flush=True)
"""


def test_a_run_killed_mid_write_leaves_readable_results(tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        time.sleep(0.7)  # many appends and consolidations are in flight by now
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(30)
    folder = tmp_path / "killed"
    for path in [*folder.glob("*.parquet"), *folder.glob("parts/*.parquet")]:
        frame = pd.read_parquet(path)
        assert len(frame) >= 3 and list(frame["config_hash"]) == [str(i) for i in range(len(frame))]
    for path in [*folder.glob("*.csv"), *folder.glob("parts/*.csv")]:
        assert len(pd.read_csv(path)) >= 3


def _leaf_keys(schema, prefix=""):
    """(dotted key, annotation) of every leaf the schema defines, nested sections included."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(schema)
    for field in dataclasses.fields(schema):
        key, kind = f"{prefix}{field.name}", hints[field.name]
        if dataclasses.is_dataclass(kind):
            yield from _leaf_keys(kind, f"{key}.")
        else:
            yield key, kind


# paths.* and name write folders, the hooks import modules, experiment is Hydra's choice: given, not drawn.
_NOT_DRAWN = ("paths.", "name", "experiment", "jobs", "logger", "variants", "attention.params")
_DRAWN_KEYS = None


def _drawn_keys():
    global _DRAWN_KEYS
    if _DRAWN_KEYS is None:
        from harness.config import ShootoutConfig

        _DRAWN_KEYS = sorted(key for key, _ in _leaf_keys(ShootoutConfig)
                             if not key.startswith(_NOT_DRAWN) and not key.endswith("fault_hook"))
    return _DRAWN_KEYS


def _overrides():
    from hypothesis import strategies as st

    nasty = st.sampled_from(["0", "-1", "1", "2", "3", "64", "inf", "-inf", "nan", "1e300", "1e-300", "1e12",
                             "99999999999999999999", "2147483648", "0.5", "true", "false", "null", "abc", "''",
                             "[]", "[1,1]", "[64,128]", "[true,true]", "[float32]", "[forward,forward]", "cuda",
                             "auto", "cpu", "inline", "process"])
    setting = st.tuples(st.sampled_from(_drawn_keys()), nasty).map(lambda kv: f"{kv[0]}={kv[1]}")
    added = st.sampled_from(["+foo=1", "+benchmark.seqlens=[9]", "+train.lr=1", "++seed=3"])
    jobs = st.sampled_from(["[speed]", "[probe]", "[retrieval]", "[distributed]", "[targets]",
                            "[speed,probe,retrieval]"]).map(lambda jobs: f"jobs={jobs}")
    preset = st.sampled_from(["", "experiment=default", "experiment=decode", "benchmark=quick"])
    return st.tuples(preset, jobs, st.lists(st.one_of(setting, added), min_size=1, max_size=4))


def test_the_precheck_ends_every_random_command_line_in_a_config_error_or_a_runnable_config(tmp_path):
    """Random overrides (wrong types, inf, nan, huge, repeats, unknown `+` keys) in every job: the check either
    passes or raises ConfigError (one line, exit 2 on the command line), never another exception."""
    from hypothesis import HealthCheck, given, settings

    from harness.config import ConfigError
    from harness.run import check

    @settings(max_examples=60, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(_overrides())
    def precheck(drawn):
        preset, jobs, settings_ = drawn
        overrides = [o for o in (preset, jobs, *settings_) if o] + [f"paths.results_dir={tmp_path}"]
        try:
            check(compose(overrides))
        except ConfigError as error:
            assert "\n" not in str(error).strip(), overrides
    precheck()


@pytest.mark.parametrize("sent", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_a_stopped_run_keeps_its_rows_says_so_and_leaves_no_process_behind(sent, tmp_path):
    """The run is stopped while its worker hangs in a point: SIGTERM and Ctrl-C end it with one line naming
    what was saved and exit code 128 + the signal; even kill -9 of the run takes its worker and the resource
    tracker with it (the kernel's parent-death signal)."""
    import psutil

    command = [sys.executable, "-m", "harness", "benchmark=quick", "benchmark.seq_lens=[64,128]",
               "benchmark.passes=[forward]", *[o for o in SHRINK if "isolation" not in o], "report=false",
               "benchmark.fault_hook=shootout_faults:hang_at_128", f"paths.results_dir={tmp_path}", "name=stopped"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests" / "harness" / "bench")}
    runner = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    parts = tmp_path / "stopped" / "parts"
    try:
        deadline = time.monotonic() + 120
        while not list(parts.glob("*.parquet")) and time.monotonic() < deadline:  # N=64 recorded: 128 hangs now
            time.sleep(0.2)
        time.sleep(1.0)
        children = psutil.Process(runner.pid).children(recursive=True)
        assert children, "the worker should be running"
        os.kill(runner.pid, sent)
        _, err = runner.communicate(timeout=60)
    finally:
        runner.kill()
    if sent != signal.SIGKILL:
        assert runner.returncode == 128 + sent, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"shootout: stopped by {sent.name}: 1 rows saved in {parts}"), last
        assert "Traceback" not in err
    psutil.wait_procs(children, timeout=10)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    rows = pd.read_parquet(next(parts.glob("*.parquet")))
    assert list(rows["seq_len"]) == [64] and list(rows["status"]) == ["ok"]
