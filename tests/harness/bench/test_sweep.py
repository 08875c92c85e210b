"""The speed job end to end in this process (isolation=inline): statuses as rows, resume, ladders, search."""

import json

import pandas as pd
import pytest

from harness.bench.sweep import run_speed
from harness.config import ConfigError, compose
from harness.run import run as run_job

TINY = ["benchmark=quick", "benchmark.heads=2", "benchmark.head_dim=16", "benchmark.warmup=0",
        "benchmark.min_run_time_s=0.002", "benchmark.min_repeats=2", "benchmark.correctness.seq_len=32",
        "benchmark.ceiling.size=64", "benchmark.ceiling.min_run_time_s=0.002", "benchmark.isolation=inline",
        "benchmark.threads=1"]  # one thread: on a loaded 2-core machine OpenMP's barrier waits dominate tiny calls


def run(tmp_path, *overrides):
    cfg = compose([*TINY, f"paths.results_dir={tmp_path}", "name=t", *overrides])
    store = run_job(cfg)
    return store.read_job(), pd.read_parquet(tmp_path / "t" / "results.parquet")


def test_oom_and_nan_points_become_rows_and_the_sweep_goes_on(tmp_path):
    rows, _ = run(tmp_path, "benchmark.seq_lens=[64,128,256]", "benchmark.passes=[forward]",
                  "benchmark.fault_hook=shootout_faults:oom_from_128")
    assert list(rows["status"]) == ["ok", "oom", "skipped"]  # 256 skipped: 128 already ran out of memory
    assert "seq_len=128 already failed with status oom" in rows["reason"].iloc[2]
    rows, stored = run(tmp_path, "benchmark.seq_lens=[64,128,256]", "benchmark.passes=[forward]",
                       "benchmark.fault_hook=shootout_faults:nan_at_128", "attention=dense_math")
    assert list(rows["status"]) == ["ok", "nan", "ok"]
    assert set(stored["job_id"]) and len(stored) == 6


def test_resume_keeps_a_final_failure_and_its_skips_without_recording_them_again(tmp_path):
    overrides = ("benchmark.seq_lens=[64,128,256,512]", "benchmark.passes=[forward]",
                 "benchmark.fault_hook=shootout_faults:oom_from_128")
    first, _ = run(tmp_path, *overrides)
    assert list(first["status"]) == ["ok", "oom", "skipped", "skipped"]
    for _ in range(2):
        again, stored = run(tmp_path, *overrides)
        assert again.empty and len(stored) == 4  # oom is final; its ladder's skips are not recorded twice


def test_a_worker_killed_from_outside_is_retried_on_resume_and_does_not_end_its_ladder(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOOTOUT_FAULT_MARKER", str(tmp_path / "killed-once"))
    overrides = ("benchmark.seq_lens=[64,128,256]", "benchmark.passes=[forward]", "benchmark.isolation=process",
                 "benchmark.fault_hook=shootout_faults:sigkill_once_at_128")
    first, _ = run(tmp_path, *overrides)
    assert list(first["status"]) == ["ok", "killed", "ok"], first[["status", "reason"]]
    assert "SIGKILL" in first["reason"].iloc[1]
    again, stored = run(tmp_path, *overrides)
    assert list(again["seq_len"]) == [128] and list(again["status"]) == ["ok"]
    assert len(stored) == 4
    _, stored = run(tmp_path, *overrides)
    assert len(stored) == 4  # everything is final now


def test_ok_rows_have_every_documented_column(tmp_path):
    rows, stored = run(tmp_path, "benchmark.seq_lens=[64]", "attention=sliding_window_chunked",
                       "attention.params.window=8")
    assert (rows["status"] == "ok").all() and len(rows) == 2
    row = stored.iloc[-1]
    assert row["pass"] == "forward_backward" and row["executed_flops"] >= row["useful_flops"] > 0
    assert row["flops_per_s"] == pytest.approx(row["useful_flops"] / row["latency_median_s"])
    assert row["tokens_per_s"] == pytest.approx(64 / row["latency_median_s"])
    assert row["fraction_of_peak"] == pytest.approx(row["flops_per_s"] / row["matmul_peak_flops_per_s"])
    assert len(json.loads(row["latency_times_s"])) == row["latency_count"]
    assert json.loads(row["params"]) == {"window": 8}
    assert json.loads(row["config"])["attention"]["params"] == {"window": 8}
    assert row["env_torch"] and row["env_threads"] >= 1 and row["mem_method"].startswith("cpu")


def test_resume_skips_recorded_points_and_resume_false_measures_again(tmp_path):
    first, _ = run(tmp_path, "benchmark.seq_lens=[64]", "benchmark.passes=[forward]")
    again, stored = run(tmp_path, "benchmark.seq_lens=[64,96]", "benchmark.passes=[forward]")
    assert list(again["seq_len"]) == [96]  # 64 is already in the store
    assert len(stored) == 2 and stored["job_id"].nunique() == 2
    forced, stored = run(tmp_path, "benchmark.seq_lens=[64]", "benchmark.passes=[forward]", "+resume=false")
    assert forced["job_id"].iloc[0] != first["job_id"].iloc[0] and len(stored) == 3


def test_resume_measures_again_what_other_code_recorded_and_lists_resumed_points(tmp_path, monkeypatch, capsys):
    import harness.store

    run(tmp_path, "benchmark.seq_lens=[64]", "benchmark.passes=[forward]")
    again, _ = run(tmp_path, "benchmark.seq_lens=[64]", "benchmark.passes=[forward]")
    assert again.empty and "resumed" in capsys.readouterr().err  # the summary shows the point it skipped
    monkeypatch.setattr(harness.store, "code_version", lambda: "another implementation")
    changed, stored = run(tmp_path, "benchmark.seq_lens=[64]", "benchmark.passes=[forward]")
    assert list(changed["seq_len"]) == [64] and len(stored) == 2


def test_unsupported_combination_is_a_row_not_a_crash(tmp_path):
    # FlexAttention has no backward on CPU; the row says so and no compile happens.
    rows, _ = run(tmp_path, "benchmark.seq_lens=[64]", "benchmark.passes=[forward_backward]",
                  "attention=sliding_window_flex")
    assert list(rows["status"]) == ["unsupported"] and "backward" in rows["reason"].iloc[0]


def test_wrong_backend_is_recorded_and_not_timed(tmp_path):
    rows, _ = run(tmp_path, "benchmark.seq_lens=[64]", "benchmark.passes=[forward]",
                  "benchmark.fault_hook=shootout_faults:off_by_a_bit")
    assert list(rows["status"]) == ["wrong"] and rows["latency_median_s"].isna().all()


def test_max_seq_len_search_doubles_then_bisects(tmp_path):
    rows, _ = run(tmp_path, "benchmark.passes=[forward]", "benchmark.max_seq_len.enabled=true",
                  "benchmark.max_seq_len.start=64", "benchmark.max_seq_len.resolution=32",
                  "benchmark.fault_hook=shootout_faults:oom_above_320")
    probes = rows[rows["kind"] == "speed"]
    assert list(probes["seq_len"]) == [64, 128, 256, 512, 384, 320, 352]
    result = rows[rows["kind"] == "max_seq_len"].iloc[0]
    assert result["max_seq_len"] == 320 and result["first_failing_seq_len"] == 352
    assert result["limited_by"] == "oom"
    assert result["reason"] == "largest fitting N=320; N=352 ended with status oom"


def test_max_seq_len_over_the_latency_budget_is_limited_by_the_budget(tmp_path):
    rows, _ = run(tmp_path, "benchmark.passes=[forward]", "benchmark.max_seq_len.enabled=true",
                  "benchmark.max_seq_len.start=64", "benchmark.max_seq_len.resolution=32",
                  "benchmark.max_seq_len.latency_budget_s=1e-9")
    result = rows[rows["kind"] == "max_seq_len"].iloc[0]
    # 64 ran and took too long, then the bisection tried 32, which did too
    assert rows.loc[rows["kind"] == "speed", "seq_len"].tolist() == [64, 32]
    assert (rows.loc[rows["kind"] == "speed", "status"] == "ok").all()
    assert result["limited_by"] == "latency_budget" and result["max_seq_len"] == 0
    assert result["reason"].startswith("no N fits; N=32 took")
    assert "over the 1e-09 s latency budget" in result["reason"]


@pytest.mark.parametrize("overrides, message", [
    (["benchmark.min_repeats=-1"], "benchmark.min_repeats=-1 must be >= 1"),
    (["benchmark.warmup=-2"], "benchmark.warmup=-2 must be >= 0"),
    (["attention=dense_xformers"], "backend 'xformers' is unavailable here"),
    (["attention=longnet_paper", "attention.params.dilation_rates=[2,2,4,6,12]"], "in no branch"),
    (["attention=dense_reference", "benchmark.seq_lens=[65536]"], "too large for the float64 reference"),
    (["benchmark.dtypes=[float8]"], "'float8' is not known"),
    (["benchmark.device=cuda"], "CUDA is not available"),
    (["attention=sliding_window_chunked", "+attention.params.windo=3"], "did you mean 'window'"),
])
def test_bad_input_is_a_config_error_before_anything_runs(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=None) as error:
        run_speed(compose([*TINY, f"paths.results_dir={tmp_path}", *overrides]), check_only=True)
    assert message in str(error.value)
    assert not (tmp_path / "default" / "parts").exists()


TWO_VARIANTS = ["attention=dense_sdpa", "+attention@variants.window=sliding_window_chunked",
                "variants.window.name=window", "variants.window.params.window=16", "benchmark.passes=[forward]"]


def test_variants_of_one_n_are_timed_in_interleaved_rounds(tmp_path, monkeypatch):
    from harness.bench.worker import Worker

    calls = []
    original = Worker.run

    def recording(self, name, kwargs, timeout_s):
        point = kwargs.get("point")
        calls.append((name, point.variant if point else None, point.seq_len if point else None))
        return original(self, name, kwargs, timeout_s)

    monkeypatch.setattr(Worker, "run", recording)
    rows, _ = run(tmp_path, *TWO_VARIANTS, "benchmark.seq_lens=[64,128]", "benchmark.rounds=3")
    # per N: the ceiling next to the group, then A B, A B, A B: the first round full, the later ones timing only
    expected = []
    for n in (64, 128):
        expected += [("matmul_ceiling", None, None), ("measure_point", "dense_sdpa", n), ("measure_point", "window", n)]
        expected += [("time_point", "dense_sdpa", n), ("time_point", "window", n)] * 2
    assert calls == expected
    assert (rows["status"] == "ok").all() and (rows["rounds"] == 3).all()
    for row in rows.itertuples():
        medians = json.loads(row.round_medians_s)
        assert len(medians) == 3 and row.latency_count == len(json.loads(row.latency_times_s)
                                                               if isinstance(row.latency_times_s, str)
                                                               else row.latency_times_s)
    window = rows[rows["variant"] == "window"]
    assert (window["speedup_reference"] == "dense_sdpa").all()
    assert (window["speedup_round_min"] <= window["speedup_round_median"]).all()
    assert (window["speedup_round_median"] <= window["speedup_round_max"]).all()


def test_a_busy_machine_ranks_the_variants_as_a_quiet_one(tmp_path):
    """At N=2048 a window of 16 does ~1/60 of dense attention's work. A process spinning on one of the two cores
    beside the run slows both variants of each round, so the per-round ratios still rank them alike."""
    import subprocess
    import sys

    shape = [*TWO_VARIANTS, "benchmark.seq_lens=[2048]", "benchmark.min_run_time_s=0.05", "benchmark.rounds=3"]
    quiet, _ = run(tmp_path / "quiet", *shape)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        loaded, _ = run(tmp_path / "busy", *shape)
    finally:
        busy.kill()
        busy.wait()
    for rows in (quiet, loaded):
        window = rows[rows["variant"] == "window"].iloc[0]
        assert window["speedup_round_min"] > 1.0, window["round_medians_s"]  # faster than dense in every round
    ranking = [list(rows.sort_values("latency_median_s")["variant"]) for rows in (quiet, loaded)]
    assert ranking[0] == ranking[1] == ["window", "dense_sdpa"]


def test_a_decode_pass_times_one_query_against_the_cache(tmp_path):
    """benchmark.passes=[decode]: one query at N - 1 against N keys, gated against the reference at that
    position; a token per sequence per step; useful FLOPs count the pairs of that one query (the dilated
    query's visible keys with multiplicity), decoded through gather."""
    rows, _ = run(tmp_path, "benchmark.seq_lens=[256]", "benchmark.passes=[decode]", "benchmark.causal=[true]",
                  "benchmark.batch=2", "attention=dilated_gather", "attention.backend=null",
                  "attention.params.segment_lengths=[32,64]", "attention.params.dilation_rates=[1,2]")
    row = rows.iloc[0]
    assert row["status"] == "ok" and row["pass"] == "decode" and row["backend"] == "gather", row["reason"]
    assert row["max_abs_err"] < 1e-4
    # the query at 255: segment 32 at rate 1 (32 keys, every head); segment 64 at rate 2 (32 keys, heads with
    # the query's residue 1, i.e. head 1 of 2): 2 heads x 32 + 32 pairs, per sequence
    assert row["useful_flops"] == 4 * 16 * 2 * (2 * 32 + 32)
    assert row["tokens_per_s"] == pytest.approx(2 / row["latency_median_s"])
    with pytest.raises(ConfigError, match="'decode' is not a sequence-parallel job"):
        run(tmp_path, "experiment=distributed", "benchmark.passes=[decode]")
