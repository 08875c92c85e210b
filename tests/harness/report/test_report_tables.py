import math

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
    # Failed points keep their row and reason, with no numbers that could be mistaken for measurements.
    oom = summary[summary["status"] == "oom"].iloc[0]
    assert math.isnan(oom["latency_median_ms"]) and "out of memory" in oom["reason"]
    wrong = summary[summary["status"] == "wrong"].iloc[0]
    assert math.isnan(wrong["latency_median_ms"]) and math.isnan(wrong["speedup_vs_dense"])


def test_retried_speed_point_keeps_its_latest_row(fixture_rows):
    speed = fixture_rows[fixture_rows["kind"] == "speed"].copy()
    speed["timestamp"] = "2025-01-01T00:00:00"
    retry = speed[speed["status"] == "oom"].head(1).copy()
    retry["status"], retry["timestamp"], retry["latency_median_s"] = "ok", "2025-01-02T00:00:00", 0.5
    summary = tables.speed_summary(pd.concat([speed, retry], ignore_index=True))
    point = summary[(summary["variant"] == "dense (math)") & (summary["seq_len"] == retry["seq_len"].iloc[0])
                    & (summary["pass"] == retry["pass"].iloc[0])]
    assert len(point) == 1 and point["status"].iloc[0] == "ok" and point["latency_median_ms"].iloc[0] == 500.0


def test_retrieval_summary_weights_accuracy_by_count_and_keeps_failed_status(fixture_rows):
    summary = tables.retrieval_summary(fixture_rows)
    assert tuple(summary.columns) == tables.RETRIEVAL_SUMMARY_COLUMNS
    mqar = summary[(summary["task"] == "mqar") & summary["variant"].str.startswith("sliding")]
    assert list(mqar["bucket"]) == ["0-64", "64-256", "256-1024", "1024-4096"]
    assert list(mqar["accuracy"]) == [0.97, 0.97, 0.08, 0.08]
    failed = summary[summary["status"].str.contains("oom")]
    assert len(failed) == 1 and failed["variant"].iloc[0].startswith("dilated")
    rows = fixture_rows[(fixture_rows["kind"] == "retrieval") & (fixture_rows["task"] == "passkey")
                        & (fixture_rows["backend"] == "gather") & (fixture_rows["seq_len"] == 2048)
                        & (fixture_rows["distance_lo"] == 1024) & (fixture_rows["status"] == "ok")]
    expected = (rows["accuracy"] * rows["count"]).sum() / rows["count"].sum()
    assert failed["accuracy"].iloc[0] == pytest.approx(expected)
    wide = tables.retrieval_wide(summary, "mqar")
    assert list(wide.columns) == ["variant", "seq_len", "acc@0-64", "acc@64-256", "acc@256-1024", "acc@1024-4096"]


def test_passkey_probe_and_failure_tables_have_documented_columns(fixture_rows):
    passkey = tables.passkey_summary(fixture_rows)
    assert tuple(passkey.columns) == tables.PASSKEY_SUMMARY_COLUMNS and len(passkey) == 3 * 3 * 5
    probe = tables.probe_summary(fixture_rows)
    assert tuple(probe.columns) == tables.PROBE_SUMMARY_COLUMNS
    dense = probe[probe["variant"] == "dense (sdpa)"]
    assert (dense["recovered"] == 1.0).all() and (dense["heads"] == 4).all()
    fails = tables.failures(fixture_rows)
    assert tuple(fails.columns) == tables.FAILURE_COLUMNS
    assert set(fails["status"]) == {"oom", "timeout", "unsupported", "wrong"}
    assert (fails["reason"] != "").all()


def test_tables_of_an_empty_store_are_empty_with_columns():
    empty = pd.DataFrame(columns=["experiment", "kind", "status", "reason", "config_hash"])
    assert tuple(tables.speed_summary(empty).columns) == tables.SPEED_SUMMARY_COLUMNS
    assert tuple(tables.retrieval_summary(empty).columns) == tables.RETRIEVAL_SUMMARY_COLUMNS
    assert tables.failures(empty).empty


def test_markdown_table_escapes_pipes_and_formats_numbers():
    frame = pd.DataFrame({"name": ["a|b", "c"], "value": [1234.5678, float("nan")], "n": [1, 2]})
    text = tables.to_markdown(frame)
    lines = text.strip().splitlines()
    assert lines[0] == "| name | value | n |" and lines[1] == "|---|---:|---:|"
    assert lines[2] == "| a\\|b | 1235 | 1 |" and lines[3] == "| c |  | 2 |"
    assert tables.to_markdown(pd.DataFrame()) == "_(no rows)_\n"


def test_print_summary_shows_latency_by_n_and_failure_status(fixture_rows):
    console = Console(width=200, record=True)
    tables.print_summary(fixture_rows, console=console)
    text = console.export_text()
    assert "N=4096" in text and "dense (sdpa)" in text and "oom" in text and "timeout" in text
    assert "mqar" in text and "acc@1024-4096" in text
    assert "did not end ok" in text
