import math

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from harness.report import tables


def test_speed_summary_has_documented_columns_and_speedup_over_fastest_dense(fixture_rows):
    summary = tables.speed_summary(fixture_rows)
    assert tuple(summary.columns) == tables.SPEED_SUMMARY_COLUMNS
    assert len(summary) == (fixture_rows["kind"] == "speed").sum()
    at = summary[(summary["seq_len"] == 2048) & (summary["pass"] == "forward")].set_index("variant")
    dense_best = min(at.loc["dense (sdpa)", "latency_median_ms"], at.loc["dense (math)", "latency_median_ms"])
    chunked = at.loc["sliding_window w=64 (chunked)"]
    assert chunked["speedup_vs_dense"] == pytest.approx(dense_best / chunked["latency_median_ms"])
    raw = fixture_rows[(fixture_rows["kind"] == "speed") & (fixture_rows["seq_len"] == 2048)
                       & (fixture_rows["backend"] == "chunked") & (fixture_rows["pass"] == "forward")].iloc[0]
    assert chunked["latency_median_ms"] == pytest.approx(raw["latency_median_s"] * 1e3)
    assert chunked["peak_mem_mib"] == pytest.approx(raw["peak_mem_bytes"] / 2**20)
    assert chunked["useful_gflops_per_s"] == pytest.approx(raw["flops_per_s"] / 1e9)
    assert not chunked["noisy"] and chunked["noisy"] is not None
    # Failed points keep their row and reason, with no numbers that could be mistaken for measurements.
    oom = summary[summary["status"] == "oom"].iloc[0]
    assert math.isnan(oom["latency_median_ms"]) and "out of memory" in oom["reason"]
    wrong = summary[summary["status"] == "wrong"].iloc[0]
    assert math.isnan(wrong["latency_median_ms"]) and math.isnan(wrong["speedup_vs_dense"])


def test_retried_speed_point_keeps_its_latest_row(fixture_rows):
    speed = fixture_rows[fixture_rows["kind"] == "speed"].copy()
    retry = speed[speed["status"] == "oom"].head(1).copy()
    retry["status"], retry["timestamp"], retry["latency_median_s"] = "ok", "2025-01-02T00:00:00+0000", 0.5
    summary = tables.speed_summary(pd.concat([speed, retry], ignore_index=True))
    point = summary[(summary["variant"] == "dense (math)") & (summary["seq_len"] == retry["seq_len"].iloc[0])
                    & (summary["pass"] == retry["pass"].iloc[0])]
    assert len(point) == 1 and point["status"].iloc[0] == "ok" and point["latency_median_ms"].iloc[0] == 500.0


def test_retrieval_summary_uses_inclusive_buckets_reach_and_reachable_fraction(fixture_rows):
    summary = tables.retrieval_summary(fixture_rows)
    assert tuple(summary.columns) == tables.RETRIEVAL_SUMMARY_COLUMNS
    mqar = summary[(summary["task"] == "mqar") & summary["variant"].str.startswith("sliding")]
    assert list(mqar["bucket"]) == ["2-63", "64-255", "256-1023", "1024-4095"]
    assert list(mqar["reachable_fraction"]) == [1.0, 0.5, 0.0, 0.0]
    assert list(mqar["accuracy"]) == pytest.approx([0.97, 0.515, 0.06, 0.06])
    assert (mqar["theoretical_reach"] == 130.0).all() and (mqar["chance"] == 1 / 16).all()
    assert (mqar["name"] == "sliding_window_64").all()
    # A training run that failed (one row, no seq_len or bucket) keeps one line with its status.
    failed = summary[summary["status"] == "oom"]
    assert len(failed) == 1 and failed["variant"].iloc[0].startswith("dilated") and failed["task"].iloc[0] == "passkey"
    assert math.isnan(failed["accuracy"].iloc[0])
    wide = tables.retrieval_wide(summary, "mqar")
    assert list(wide.columns) == ["variant", "seq_len", "acc@2-63", "acc@64-255", "acc@256-1023", "acc@1024-4095",
                                  "theoretical_reach"]
    assert tables.bucket_label(5, 5) == "5" and tables.bucket_label(2, 9) == "2-9"


def test_retrieval_training_has_one_row_per_run(fixture_rows):
    training = tables.retrieval_training(fixture_rows)
    assert tuple(training.columns) == tables.RETRIEVAL_TRAINING_COLUMNS
    assert len(training) == 6  # 3 variants x (mqar, passkey); the dilated passkey run is the oom one
    dense = training[(training["task"] == "mqar") & (training["variant"] == "dense (sdpa)")].iloc[0]
    assert dense["train_stop"] == "ceiling" and dense["val_accuracy"] == 0.99
    oom = training[training["status"] == "oom"].iloc[0]
    assert "out of memory" in oom["reason"] and math.isnan(oom["train_steps"])


def test_passkey_summary_has_a_cell_per_depth_and_context(fixture_rows):
    passkey = tables.passkey_summary(fixture_rows)
    assert tuple(passkey.columns) == tables.PASSKEY_SUMMARY_COLUMNS
    assert len(passkey) == 2 * 3 * 5  # the dilated run failed before evaluating
    far = passkey[(passkey["variant"] == "sliding_window w=64 (chunked)") & (passkey["depth"] == 0.0)
                  & (passkey["context_len"] == 2048)].iloc[0]
    assert far["distance"] == 2047 and far["reachable_fraction"] == 0.0 and far["accuracy"] == 0.1


def test_probe_summary_reads_buckets_directions_mismatches_and_the_newest_run(fixture_rows):
    probe = tables.probe_summary(fixture_rows)
    assert tuple(probe.columns) == tables.PROBE_SUMMARY_COLUMNS
    measured = probe[probe["direction"].notna()]
    # One row per (variant, direction, bucket) of the newest job: the older run's rows are superseded.
    assert len(measured) == 4 * (8 + 7)
    window = measured[(measured["variant"] == "sliding_window w=8 (chunked)") & (measured["direction"] == "past")]
    assert list(window["bucket"]) == ["0", "1", "2-3", "4-7", "8-15", "16-31", "32-63", "64-127"]
    assert list(window["accuracy"]) == list(window["reachable_fraction"])
    assert (window["mismatches"] == 0).all() and (window["status"] == "ok").all()
    assert window["accuracy"].iloc[0] == 1.0 and window["accuracy"].iloc[-1] == 0.0  # not the older run's +0.5
    broken = measured[measured["variant"] == "sliding_window w=8 (masked_sdpa)"]
    assert (broken["status"] == "wrong").all() and (broken["mismatches"] > 0).sum() == 2  # past and future
    off = broken[broken["mismatches"] > 0]
    assert (off["accuracy"] > off["reachable_fraction"]).all()  # a wrong bucket keeps its measured share
    unsupported = probe[probe["status"] == "unsupported"]
    assert len(unsupported) == 1 and unsupported["bucket"].iloc[0] == "" and "cuda" in unsupported["reason"].iloc[0]


def test_distributed_summary_takes_the_slowest_rank_and_the_busiest_sender(fixture_rows):
    summary = tables.distributed_summary(fixture_rows)
    assert tuple(summary.columns) == tables.DISTRIBUTED_SUMMARY_COLUMNS
    assert len(summary) == 8 and (summary["ranks"] == 2).all()
    rows = fixture_rows[(fixture_rows["kind"] == "distributed") & (fixture_rows["mechanism"] == "dilated")
                        & (fixture_rows["seq_len"] == 2048)]
    point = summary[(summary["mechanism"] == "dilated") & (summary["seq_len"] == 2048)].iloc[0]
    assert point["latency_max_ms"] == pytest.approx(rows["latency_median_s"].max() * 1e3)
    assert point["slowest_rank"] == 1
    per_rank = rows["bytes_sent_forward"] + rows["bytes_sent_backward"]
    assert point["bytes_sent_max"] == per_rank.max() and point["bytes_sent_total"] == per_rank.sum()
    assert point["predicted_bytes_sent_max"] == per_rank.max() and bool(point["bytes_match"])
    failed = summary[(summary["mechanism"] == "dense") & (summary["seq_len"] == 8192)].iloc[0]
    assert failed["status"] == "error+oom" and math.isnan(failed["latency_max_ms"])
    assert "out of memory" in failed["reason"]
    # A point missing a rank is not reported as complete.
    partial = fixture_rows[~((fixture_rows["kind"] == "distributed") & (fixture_rows["rank"] == 1)
                             & (fixture_rows["seq_len"] == 1024))]
    missing = tables.distributed_summary(partial)
    missing = missing[missing["seq_len"] == 1024]
    assert missing["status"].str.contains("missing ranks").all() and missing["latency_max_ms"].isna().all()


def test_perf_target_summary_keeps_the_newest_run_and_lists_misses_first(fixture_rows):
    targets = tables.perf_target_summary(fixture_rows)
    assert tuple(targets.columns) == tables.PERF_TARGET_COLUMNS
    assert len(targets) == 4
    assert targets["passed"].tolist() == [False, False, True, True]
    assert targets["issue_target"].tolist() == [True, False, True, True]
    gather = targets[targets["target"].str.startswith("dilated gather")].iloc[0]
    assert gather["measured"] == 1.02 and bool(gather["passed"]) and gather["runs"] == 2
    assert gather["target"] == "dilated gather: time / bare sum of branch kernels"  # the newest label
    assert gather["rounds"] == "0.990-1.060, 2 of 3 meet"
    assert targets.loc[targets["target"] != gather["target"], "rounds"].isna().all()  # single measurements


def test_perf_target_rows_stored_before_target_keys_existed_are_keyed_by_their_label(fixture_rows):
    keyed = fixture_rows[fixture_rows["kind"] == "perf_target"]
    assert keyed["target_key"].isna().sum() == 1  # the fixture's one row under a label no longer used
    assert "forward+backward" not in " ".join(tables.perf_target_summary(fixture_rows)["target"])
    old_store = fixture_rows.drop(columns=["target_key"])  # nothing keyed: every label is its own target
    targets = tables.perf_target_summary(old_store)
    assert len(targets) == 6 and targets["target"].str.contains("forward[+]backward").sum() == 1


def test_a_perf_target_error_is_dropped_once_a_later_run_of_its_method_measured(fixture_rows):
    base = fixture_rows[fixture_rows["target_key"] == "auto_pick.dense"].iloc[0].to_dict()
    error = {**base, "status": "error", "target_key": "auto_pick", "target": "auto_pick", "measured": np.nan,
             "passed": False, "reason": "RuntimeError: kernel not built"}

    def summary(error_timestamp):
        frame = pd.concat([fixture_rows, pd.DataFrame([{**error, "timestamp": error_timestamp}])],
                          ignore_index=True)
        return tables.perf_target_summary(frame)

    assert "auto_pick" not in set(summary("2024-12-31T00:00:00+0000")["target"])  # the measurement came later
    later = summary("2025-02-01T00:00:00+0000").set_index("target")
    assert later.at["auto_pick", "passed"] == False  # noqa: E712 (the newest word on that method: a miss)
    assert later.at["backend=None for dense: picked time / fastest time", "passed"]  # the older measurement stays


def test_perf_target_rows_stored_before_issue_target_existed_are_told_apart_by_name(fixture_rows):
    older = fixture_rows.drop(columns=["issue_target"])
    assert tables.perf_target_summary(older).equals(tables.perf_target_summary(fixture_rows))


def test_failures_table_lists_every_failed_kind(fixture_rows):
    fails = tables.failures(fixture_rows)
    assert tuple(fails.columns) == tables.FAILURE_COLUMNS
    assert set(fails["kind"]) == {"speed", "retrieval", "probe", "distributed"}
    assert set(fails["status"]) == {"oom", "timeout", "unsupported", "wrong", "error"}
    assert (fails["reason"] != "").all()
    assert set(fails.loc[fails["kind"] == "distributed", "rank"]) == {0, 1}


def test_tables_of_an_empty_store_are_empty_with_columns():
    empty = pd.DataFrame(columns=["experiment", "kind", "status", "reason", "config_hash"])
    for function, columns in ((tables.speed_summary, tables.SPEED_SUMMARY_COLUMNS),
                              (tables.retrieval_summary, tables.RETRIEVAL_SUMMARY_COLUMNS),
                              (tables.retrieval_training, tables.RETRIEVAL_TRAINING_COLUMNS),
                              (tables.passkey_summary, tables.PASSKEY_SUMMARY_COLUMNS),
                              (tables.probe_summary, tables.PROBE_SUMMARY_COLUMNS),
                              (tables.distributed_summary, tables.DISTRIBUTED_SUMMARY_COLUMNS),
                              (tables.perf_target_summary, tables.PERF_TARGET_COLUMNS)):
        out = function(empty)
        assert out.empty and tuple(out.columns) == columns, function.__name__
    assert tables.failures(empty).empty


def test_tables_tolerate_missing_optional_columns(fixture_rows):
    lean = fixture_rows.drop(columns=["reachable_fraction", "theoretical_reach", "chance", "name", "mismatches",
                                      "predicted_bytes_sent_backward", "kernel", "noisy", "smoke"])
    assert tables.retrieval_summary(lean)["reachable_fraction"].isna().all()
    assert tables.probe_summary(lean)["mismatches"].isna().all()
    assert not tables.distributed_summary(lean).empty and not tables.perf_target_summary(lean).empty
    assert tables.speed_summary(lean)["noisy"].isna().all()


def test_markdown_table_escapes_pipes_and_formats_numbers():
    frame = pd.DataFrame({"name": ["a|b", "c"], "value": [1234.5678, float("nan")], "n": [1, 2]})
    text = tables.to_markdown(frame)
    lines = text.strip().splitlines()
    assert lines[0] == "| name | value | n |" and lines[1] == "|---|---:|---:|"
    assert lines[2] == "| a\\|b | 1235 | 1 |" and lines[3] == "| c |  | 2 |"
    assert tables.to_markdown(pd.DataFrame()) == "_(no rows)_\n"


def test_constant_columns_fold_into_one_line_and_naming_columns_stay():
    frame = pd.DataFrame({"variant": ["a", "a"], "dtype": ["float32", "float32"], "heads": [4, 4],
                          "seq_len": [1024, 2048], "note": [None, None]})
    shown, line = tables.fold_constant_columns(frame)
    assert list(shown.columns) == ["variant", "seq_len"]  # an empty column is dropped too
    failed = pd.DataFrame({"status": ["oom", "oom"], "reason": ["x", "x"], "noisy": [float("nan")] * 2})
    kept, _ = tables.fold_constant_columns(failed, keep=())
    assert list(kept.columns) == ["reason"] and "no rows" not in tables.to_markdown(kept)
    assert line == "Same in every row: dtype = float32, heads = 4."
    one_row, nothing = tables.fold_constant_columns(frame.head(1))
    assert nothing == "" and list(one_row.columns) == list(frame.columns)
    assert tables.format_speedup(5.805, 4.551, 6.497) == "5.805x [4.551-6.497]"
    assert tables.format_speedup(1.0) == "1x" and tables.format_speedup(float("nan")) == ""


def test_print_summary_shows_latency_by_n_and_failure_status(fixture_rows):
    console = Console(width=240, record=True)
    tables.print_summary(fixture_rows, console=console)
    text = console.export_text()
    assert "N=4096" in text and "dense (sdpa)" in text and "oom" in text and "timeout" in text
    assert "mqar" in text and "acc@1024-4095" in text
    assert "did not end ok" in text


def test_each_job_kind_prints_its_summary_in_full(fixture_rows):
    console = Console(record=True, width=100, force_terminal=False)
    tables.print_job_summary(fixture_rows, console)
    text = console.export_text()
    assert "[share of items]" in text  # brackets are text, not rich markup
    assert "learnt what its pattern reaches" in text and "mismatches" in text
    for variant in ("dense (sdpa)", "sliding_window w=64 (chunked)"):
        assert variant in text
    # every verdict wraps inside its column instead of being cut: all of its words are printed
    printed = set(text.replace("│", " ").replace(";", " ").split())
    for verdict in tables.retrieval_headline(fixture_rows)["verdict"]:
        assert set(verdict.replace(";", " ").split()) <= printed, verdict


def test_max_seq_len_summary_names_what_limited_each_search(fixture_rows):
    searches = tables.max_seq_len_summary(fixture_rows)
    limits = dict(zip(searches["variant"], searches["limited_by"]))
    assert limits == {"dense (math)": "oom", "dense (sdpa)": "latency_budget",
                      "dilated w=[64,128,256] r=[1,2,4]": "limit"}
    assert "ok" not in set(searches["limited_by"])
    assert searches.loc[searches["limited_by"] == "limit", "first_failing_seq_len"].isna().all()


def test_headline_metrics_hold_speedups_searches_and_reach(fixture_rows):
    metrics = tables.headline_metrics(fixture_rows)
    speedups = {k: v for k, v in metrics.items() if k.endswith("/speedup_vs_dense")}
    assert speedups and all(v > 0 for v in speedups.values())
    assert metrics["max_seq_len/dense (sdpa)/forward/full/float32/max_seq_len"] == 7168
    assert any(k.startswith("retrieval/mqar/") and k.endswith("/within_reach") for k in metrics)
