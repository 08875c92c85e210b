"""Many jobs, one store: a Hydra multirun through the `parallel` (submitit local) launcher, resume across jobs, reading parts
while another job replaces them, and scripts/merge_results.py for parts that ran elsewhere."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from harness.store import ResultsStore

REPO = Path(__file__).resolve().parents[2]
TINY_SPEED = ["benchmark=quick", "benchmark.seq_lens=[64]", "benchmark.passes=[forward]", "benchmark.heads=2",
              "benchmark.head_dim=16", "benchmark.warmup=0", "benchmark.min_run_time_s=0.002",
              "benchmark.min_repeats=2", "benchmark.correctness.seq_len=32", "benchmark.ceiling.size=64",
              "benchmark.ceiling.min_run_time_s=0.002", "benchmark.threads=1", "benchmark.isolation=inline",
              "report=false"]


def _multirun(tmp_path: Path, sweep_dir: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "harness", "-m", "hydra/launcher=parallel",
               "attention=dense_sdpa,dilated_gather", *TINY_SPEED, f"paths.results_dir={tmp_path}", "name=launched",
               f"hydra.sweep.dir={tmp_path}/{sweep_dir}"]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180)


def test_parallel_multirun_writes_both_jobs_to_one_store_and_resumes(tmp_path):
    first = _multirun(tmp_path, "sweep1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in first.stdout + first.stderr  # really the submitit launcher, not the basic one
    job_folders = [p for p in (tmp_path / "sweep1" / ".submitit").iterdir() if p.name.isdigit()]
    assert len(job_folders) == 2  # one submitit job (a local subprocess) per point
    store = ResultsStore(tmp_path, "launched")
    rows = store.read()
    assert sorted(rows["variant"]) == ["dense_sdpa", "dilated_gather"] and (rows["status"] == "ok").all()
    assert rows["job_id"].nunique() == 2 and len(list((store.dir / "parts").glob("*.parquet"))) == 2
    # The same sweep again: each job reads every part (done_hashes) and finds its point recorded by the other run.
    second = _multirun(tmp_path, "sweep2")
    assert second.returncode == 0, second.stderr[-3000:]
    again = store.read()
    assert len(again) == 2 and set(again["job_id"]) == set(rows["job_id"])


def test_launcher_configs_compose_without_warnings_with_one_gpu_per_slurm_job():
    """Ours extend the plugin's schemas through their defaults lists; a yaml that shadowed a schema's name would
    compose too, with Hydra's deprecation warning (automatic schema matching), which is an error here."""
    import warnings

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from harness.config import CONF_DIR, register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"), warnings.catch_warnings():
        warnings.simplefilter("error")
        for option, target in (("slurm", "SlurmLauncher"), ("parallel", "LocalLauncher")):
            cfg = hydra_compose(config_name="config", overrides=[f"hydra/launcher={option}"],
                                return_hydra_config=True)
            launcher = cfg.hydra.launcher
            assert launcher["_target_"].endswith(target)
            if option == "slurm":
                assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1 and launcher.nodes == 1
    GlobalHydra.instance().clear()


WRITER = """
import sys
from harness.store import ResultsStore
store = ResultsStore(sys.argv[1], "busy", job_id="writer")
print("writing", flush=True)
for i in range(100000):
    store.append({"kind": "speed", "status": "ok", "config_hash": str(i), "reason": "x" * 5000})
"""


def test_reading_the_store_while_another_job_replaces_its_part(tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        store, seen, reads = ResultsStore(tmp_path, "busy"), 0, 0
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            frame = store.read()  # must never fail, and never go backwards
            assert len(frame) >= seen and list(frame["config_hash"]) == [str(i) for i in range(len(frame))]
            seen, reads = len(frame), reads + 1
        assert seen > 0 and reads > 10
    finally:
        writer.kill()
        writer.wait(30)


def _merge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/merge_results.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_merge_results_imports_parts_from_other_machines(tmp_path):
    here, node7 = tmp_path / "here", tmp_path / "node7"
    ResultsStore(here, "sweep", job_id="local-job").append({"kind": "speed", "status": "ok", "config_hash": "a"})
    ResultsStore(node7, "sweep", job_id="slurm-42").append([{"kind": "speed", "status": "ok", "config_hash": "b"},
                                                            {"kind": "speed", "status": "oom", "config_hash": "c"}])
    done = _merge("sweep", "--results", str(here), "--import", str(node7 / "sweep"))
    assert done.returncode == 0, done.stderr
    assert "imported 1 new part files" in done.stdout and "3 rows from 2 jobs" in done.stdout
    merged = pd.read_parquet(here / "sweep" / "results.parquet")
    assert sorted(merged["config_hash"]) == ["a", "b", "c"] and (here / "sweep" / "results.csv").is_file()
    # importing again changes nothing; a different part under the same job id is refused, not overwritten
    assert "imported 0 new part files" in _merge("sweep", "--results", str(here), "--import",
                                                 str(node7 / "sweep")).stdout
    ResultsStore(node7, "sweep", job_id="slurm-42").append({"kind": "speed", "status": "ok", "config_hash": "d"})
    clash = _merge("sweep", "--results", str(here), "--import", str(node7 / "sweep"))
    assert clash.returncode != 0 and "two jobs share the job_id 'slurm-42'" in clash.stderr
    assert len(pd.read_parquet(here / "sweep" / "parts" / "slurm-42.parquet")) == 2


def test_merge_results_names_the_experiments_it_knows(tmp_path):
    ResultsStore(tmp_path, "real", job_id="j").append({"kind": "speed", "status": "ok", "config_hash": "a"})
    done = _merge("typo", "--results", str(tmp_path))
    assert done.returncode != 0 and "no job has written to experiment 'typo'" in done.stderr
    assert "Experiments there: real" in done.stderr


@pytest.fixture(autouse=True)
def _no_global_hydra():
    yield
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
