"""The retrieval tables' protocol: only the kept rate's seeds count, the newest sweep wins, cells carry intervals,
and the headline separates the pattern from the training."""

import math

import pandas as pd
import pytest

from harness.report import tables


def _row(sweep, lr, seed, val, *, within=(90, 100), split=(0, 0), beyond=(6, 100), stop="ceiling",
         stamp="2026-12-01T10:00:00", mechanism="sliding_window"):
    count = within[1] + split[1] + beyond[1]
    correct = within[0] + split[0] + beyond[0]
    return dict(kind="retrieval", status="ok", reason="", task="mqar", name="w", mechanism=mechanism,
                backend="chunked", params='{"window": 8}', seq_len=64, distance_lo=2, distance_hi=63,
                config_hash=f"{sweep}-{lr}-{seed}", sweep_id=sweep, job_id=f"job-{sweep}", timestamp=stamp, lr=lr,
                seed=seed, val_accuracy=val, train_stop=stop, converged=stop in ("ceiling", "plateau"), count=count,
                correct=correct, accuracy=correct / count, within_count=within[1], within_correct=within[0],
                split_count=split[1], split_correct=split[0], answer_only_count=0, answer_only_correct=0,
                beyond_count=beyond[1], beyond_correct=beyond[0], chance=0.0625, reachable_fraction=0.33,
                theoretical_reach=9)


def _frame():
    return pd.DataFrame([
        _row("s1", 1e-3, 0, 0.10, within=(10, 100), stop="max_steps"),  # a rate the sweep drops
        _row("s1", 3e-3, 0, 0.20, within=(90, 100)),
        _row("s1", 3e-3, 1, 0.21, within=(96, 100)),
        _row("s1", 3e-3, 2, 0.19, within=(93, 100), stop="max_steps"),
        _row("old", 3e-3, 0, 0.5, within=(0, 100), stamp="2026-11-01T10:00:00"),  # an older sweep: superseded
    ])


def test_only_the_kept_rate_of_the_newest_sweep_counts():
    rows = tables.retrieval_rows(_frame())
    assert set(rows["sweep_id"]) == {"s1"} and set(rows["lr"]) == {3e-3} and sorted(rows["seed"]) == [0, 1, 2]
    training = tables.retrieval_training(_frame())
    assert len(training) == 5 and training["lr_kept"].sum() == 4  # s1 keeps 3e-3 (3 runs), old keeps its one
    assert training["current"].sum() == 4  # the superseded sweep's run is listed, marked as not current


def test_headline_means_over_seeds_with_a_t_interval_and_a_verdict():
    headline = tables.retrieval_headline(_frame())
    row = headline.iloc[0]
    assert row["seeds"] == 3 and row["converged"] == "2/3"
    assert row["within_reach"] == pytest.approx(0.93)
    sd = pd.Series([0.90, 0.96, 0.93]).std()
    assert row["within_reach"] - row["within_ci_lo"] == pytest.approx(4.302653 * sd / math.sqrt(3), abs=1e-5)
    assert row["within_ci_hi"] == 1.0  # 0.93 + 0.075 is clipped to an accuracy's range
    assert row["beyond_reach"] == pytest.approx(0.06) and row["within_share"] == pytest.approx(0.5)
    assert row["ceiling"] == pytest.approx(0.5 + 0.5 * 0.0625)
    assert row["verdict"].startswith("learnt what its pattern reaches")
    assert "chance beyond reach" in row["verdict"] and "1 of 3 runs had not converged" in row["verdict"]
    cells = tables.retrieval_headline_cells(headline).iloc[0]
    assert cells["within reach [share]"].startswith("0.930 (") and cells["within reach [share]"].endswith("[50%]")
    assert cells["split [share]"] == "-"


def test_under_trained_and_split_read_differently():
    frame = pd.DataFrame([_row("s", 3e-3, seed, 0.2, within=(70, 100), split=(20, 50), beyond=(30, 100),
                               stop="max_steps") for seed in range(3)])
    row = tables.retrieval_headline(frame).iloc[0]
    assert row["verdict"].startswith("under-trained: the pattern reaches these items, the model got 0.70")
    assert "0.40 on the 20% of items its pattern splits" in row["verdict"]
    assert "above chance" in row["verdict"] and "3 of 3 runs had not converged" in row["verdict"]


def test_summary_cells_carry_the_interval():
    summary = tables.retrieval_summary(_frame())
    assert summary["seeds"].iloc[0] == 3
    wide = tables.retrieval_wide(summary, "mqar")
    cell = wide["acc@2-63"].iloc[0]
    assert cell.startswith(f"{summary['accuracy'].iloc[0]:.3f} (") and cell.endswith(")")


def test_noise_rows_stay_out_of_the_distance_tables_and_make_their_own(fixture_rows):
    summary = tables.retrieval_summary(fixture_rows)
    assert not ((summary["distance_lo"] == 6) & (summary["distance_hi"] == 6)).any()
    noise = tables.retrieval_noise(fixture_rows)
    assert tuple(noise.columns) == tables.RETRIEVAL_NOISE_COLUMNS
    window = noise[noise["variant"].str.startswith("sliding")]
    assert list(window["pairs"]) == [2, 4, 8, 16] and (window["distance"] == 6).all()
    assert list(window["accuracy"]) == pytest.approx([0.97 - 0.02 * p for p in (2, 4, 8, 16)])  # one seed
