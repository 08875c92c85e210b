"""The distributed job (harness/bench/distributed.py): spawned gloo ranks on this CPU, their rows, and their failures.

One module-scoped run measures dense and dilated at three tiny lengths on 2 ranks, with a fault hook that kills
rank 1 at one dilated point and hangs it at the next: the other points must come out ok with bytes == predicted,
the failed ones as rows naming rank 1, and the whole run must end in bounded time. A second run resumes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from attention_impls import make_params
from attention_impls.distributed import predicted_bytes_sent, shard_lengths
from harness.bench.distributed import RankSettings, plan_distributed, run_distributed
from harness.config import ConfigError, compose
from harness.store import ResultsStore

REPO = Path(__file__).resolve().parents[3]
COLLECTIVE_TIMEOUT_S = 4
HEALTH_TIMEOUT_S = 2
DILATED = {"segment_lengths": [8, 32], "dilation_rates": [1, 2]}
KILL_AT, HANG_AT = 48, 64  # dilated seq_lens where rank 1 misbehaves
TINY = ["experiment=distributed", "benchmark.heads=2", "benchmark.head_dim=8", "benchmark.seq_lens=[32,48,64]",
        "benchmark.passes=[forward_backward]", "benchmark.causal=[true]", "benchmark.warmup=0",
        "benchmark.min_run_time_s=0.001", "benchmark.min_repeats=2", "benchmark.threads=1",
        f"distributed.collective_timeout_s={COLLECTIVE_TIMEOUT_S}", f"distributed.health_timeout_s={HEALTH_TIMEOUT_S}",
        "~variants", "+variants.dilated={name: dilated, mechanism: dilated, backend: null, params: "
        "{segment_lengths: [8, 32], dilation_rates: [1, 2]}}",
        "+variants.window={name: window, mechanism: sliding_window, backend: null, params: {window: 4}}",
        "report=false"]


def kill_or_hang(point: dict, rank: int) -> None:
    """distributed.fault_hook for this module: rank 1 dies at one dilated point and hangs at another."""
    if rank != 1 or point["mechanism"] != "dilated":
        return
    if point["seq_len"] == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)
    if point["seq_len"] == HANG_AT:
        time.sleep(600)  # alive, never joins the collective; the runner must stop it


def _run(tmp_path: Path, *overrides: str) -> tuple[pd.DataFrame, float]:
    cfg = compose([*TINY, f"paths.results_dir={tmp_path}", *overrides])
    store = ResultsStore(cfg.paths.results_dir, cfg.name, job_id=f"job{len(list(tmp_path.rglob('*.parquet')))}")
    started = time.monotonic()
    rows = run_distributed(cfg, store)
    return rows, time.monotonic() - started


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("distributed")
    rows, seconds = _run(tmp_path, f"distributed.fault_hook={__name__}:kill_or_hang")
    return tmp_path, rows, seconds


def _point(rows: pd.DataFrame, variant: str, seq_len: int) -> pd.DataFrame:
    return rows[(rows["variant"] == variant) & (rows["seq_len"] == seq_len)].sort_values("rank")


def test_healthy_points_have_a_row_per_rank_with_bytes_as_predicted(faulty_run):
    _, rows, _ = faulty_run
    healthy = [("dense", n) for n in (32, 48, 64)] + [("dilated", 32)]
    for variant, seq_len in healthy:
        point = _point(rows, variant, seq_len)
        where = f"{variant} N={seq_len}"
        assert list(point["rank"]) == [0, 1], where
        assert (point["status"] == "ok").all(), (where, point["reason"].tolist())
        assert point["config_hash"].nunique() == 1 and (point["world_size"] == 2).all()
        spec = make_params("dilated", **DILATED) if variant == "dilated" else make_params("dense")
        for rank, row in zip((0, 1), point.to_dict("records")):
            predicted = predicted_bytes_sent(spec, rank=rank, shard_lengths=shard_lengths(seq_len, 2), batch=1,
                                             num_heads=2, head_dim=8, causal=True, dtype=torch.float32)
            assert (row["bytes_sent_forward"], row["bytes_sent_backward"]) == (predicted.forward,
                                                                               predicted.backward), (where, rank)
            assert row["predicted_bytes_sent_forward"] == predicted.forward and row["bytes_match"]
            assert row["local_seq_len"] == seq_len // 2 and row["shard_start"] == rank * seq_len // 2
            assert row["max_abs_err"] < 2e-4 and row["max_abs_grad_err"] < 1e-3, where
            assert row["latency_count"] >= 2 and 0 < row["latency_median_s"] and row["peak_mem_bytes"] >= 0
            assert row["launcher"] == "spawn" and row["backend"] == "sequence_parallel"
        # causal: rank 0 sends K/V forward to rank 1; rank 1 returns their gradients in backward
        assert point.iloc[0]["bytes_sent_forward"] > 0 and point.iloc[1]["bytes_sent_forward"] == 0
        assert point.iloc[1]["bytes_sent_backward"] > 0


def test_a_killed_rank_fails_its_point_with_rows_naming_it(faulty_run):
    _, rows, _ = faulty_run
    point = _point(rows, "dilated", KILL_AT)
    assert list(point["rank"]) == [0, 1]
    survivor, dead = point.to_dict("records")
    assert dead["status"] == "killed" and "rank 1 died during this point (killed by signal SIGKILL)" in dead["reason"]
    assert survivor["status"] == "error" and "rank(s) 1 did not check in" in survivor["reason"], survivor["reason"]


def test_a_hung_rank_is_stopped_and_named(faulty_run):
    _, rows, seconds = faulty_run
    point = _point(rows, "dilated", HANG_AT)
    survivor, hung = point.to_dict("records")
    assert hung["status"] == "timeout" and hung["reason"].startswith("rank 1: alive but found missing"), hung
    assert survivor["status"] == "error" and "rank(s) 1 did not check in" in survivor["reason"]
    # two group starts, the kill (health check) and the hang (collective timeout + health check): far below the
    # 600 s the hook sleeps, and below the default benchmark.timeout_s
    assert seconds < 120, seconds


def test_unsupported_mechanism_is_a_row(faulty_run):
    _, rows, _ = faulty_run
    window = rows[rows["variant"] == "window"]
    assert len(window) == 3 and (window["status"] == "unsupported").all()
    assert "no sequence-parallel implementation" in window.iloc[0]["reason"]


def test_store_is_readable_and_a_rerun_measures_only_the_failed_points(faulty_run):
    tmp_path, first, _ = faulty_run
    store = ResultsStore(tmp_path, "distributed")
    assert len(store.read()) == len(first)  # every row landed in the store, which reads back whole
    rows, _ = _run(tmp_path)  # no fault hook now
    assert sorted(set(zip(rows["variant"], rows["seq_len"]))) == [("dilated", KILL_AT), ("dilated", HANG_AT)]
    assert (rows["status"] == "ok").all() and rows["bytes_match"].all()


@pytest.mark.parametrize("override, message", [
    ("distributed.world_sizes=[]", "distributed.world_sizes is empty"),
    ("distributed.world_sizes=[64]", "benchmark.seq_lens: 32 is shorter than 64 ranks"),
    ("distributed.dist_backend=nccl", "distributed.dist_backend=nccl needs benchmark.device=cuda"),
    ("distributed.dist_backend=mpi", "distributed.dist_backend='mpi' must be one of: auto, gloo, nccl"),
    ("distributed.calls_per_sample=0", "distributed.calls_per_sample=0 must be >= 1"),
    ("distributed.fault_hook=no_such_module:f", "distributed.fault_hook='no_such_module:f': cannot import"),
    ("benchmark.device=cuda:1", "the distributed job takes cpu, cuda or auto"),
    ("+variants.dilated.params.head_offsets=blocked", "head_offsets='blocked' is not supported by the sequence-"),
])
def test_bad_config_fails_before_anything_runs(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        plan_distributed(compose([*TINY, f"paths.results_dir={tmp_path}", override]))


def test_plan_orders_points_and_settings_come_from_benchmark(tmp_path):
    plan = plan_distributed(compose([*TINY, f"paths.results_dir={tmp_path}", "distributed.world_sizes=[2,4]"]))
    assert plan.launcher == "spawn" and plan.dist_backend == "gloo" and plan.world_sizes == [2, 4]
    assert [(p.world_size, p.variant, p.seq_len) for p in plan.points][:4] == [
        (2, "dense", 32), (2, "dense", 48), (2, "dense", 64), (2, "dilated", 32)]
    assert len(plan.points) == 12 and len(plan.unsupported) == 6
    assert isinstance(plan.settings, RankSettings) and plan.settings.min_repeats == 2


def test_shootout_under_torchrun_joins_the_group(tmp_path):
    """`torchrun -m harness experiment=distributed`: each rank runs the job in torchrun's group, one part each."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "harness", *TINY, "benchmark.seq_lens=[32]", "~variants.window", f"paths.results_dir={tmp_path}",
               f"hydra.run.dir={tmp_path}/outputs"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = ResultsStore(tmp_path, "distributed").read()
    assert len(rows) == 4 and (rows["status"] == "ok").all(), rows[["variant", "rank", "status", "reason"]]
    assert (rows["launcher"] == "torchrun").all() and rows["bytes_match"].all()
    assert sorted(rows["rank"]) == [0, 0, 1, 1] and rows["job_id"].nunique() == 2  # one part per rank


def test_bench_script_outside_torchrun_says_how_to_launch():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    done = subprocess.run([sys.executable, "scripts/bench_distributed.py", "experiment=distributed"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2 and "launch with torchrun" in done.stderr
