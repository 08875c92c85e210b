"""The issue's accuracy claims on the retrieval_tiny configuration as shipped (conf/experiment/retrieval_tiny.yaml),
read off the report's headline table the way a user reads them: dense >= 0.95 at every distance; the sliding
window >= 0.90 of its ceiling within its reach and within 0.05 of chance beyond it, as the mean of 3 seeds; the
same seed gives the same accuracies. The learning-rate sweep is left out (one rate, the one the preset's sweep
keeps for the window; dense reaches its ceiling at every rate of it) to keep the suite in its minutes."""

import pandas as pd
import pytest
from omegaconf import OmegaConf

from harness.config import compose
from harness.report import tables
from harness.retrieval.run import run_retrieval
from harness.store import ResultsStore

OVERRIDES = ["experiment=retrieval_tiny", "train.progress=false", "eval.seq_lens=[64]", "eval.sequences=256",
             "train.lrs=[3e-3]"]


def _run(store, variant, *extra):
    cfg = compose([*OVERRIDES, *extra])
    sections = {name: OmegaConf.to_container(cfg[name], resolve=True) for name in ("task", "model", "train", "eval")}
    attention = cfg.attention if variant is None else cfg.variants[variant]
    return run_retrieval(attention, sections, store)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    store = ResultsStore(tmp_path_factory.mktemp("claims"), "claims", job_id="t")
    frames = [_run(store, None), _run(store, "sliding_window_8")]
    return pd.concat(frames, ignore_index=True)


def test_dense_reaches_95_percent_at_every_distance(runs):
    summary = tables.retrieval_summary(runs)
    dense = summary[summary["variant"].str.startswith("dense")]
    assert (dense["status"] == "ok").all() and (dense["seeds"] == 3).all()
    assert dense["accuracy"].min() >= 0.95, dense[["bucket", "accuracy"]].to_string()


def test_sliding_window_learns_its_reach_and_is_at_chance_beyond(runs):
    headline = tables.retrieval_headline(runs)
    window = headline[headline["variant"].str.startswith("sliding_window w=8")].iloc[0]  # label names the backend
    assert window["seeds"] == 3 and window["converged"] == "3/3"
    assert window["within_reach"] >= 0.90, window.to_dict()
    assert abs(window["beyond_reach"] - window["chance"]) <= 0.05, window.to_dict()
    assert window["within_ci_lo"] <= window["within_reach"] <= window["within_ci_hi"]
    assert window["verdict"].startswith("learnt what its pattern reaches")


def test_same_seed_same_accuracies(runs, tmp_path):
    again = _run(ResultsStore(tmp_path, "again", job_id="t"), "sliding_window_8", "train.seeds=1")
    first = runs[(runs["name"] == "sliding_window_8") & (runs["seed"] == 0)]
    for column in ("accuracy", "train_steps", "val_accuracy", "within_correct", "beyond_correct"):
        assert first[column].tolist() == again[column].tolist(), column


@pytest.fixture(scope="module")
def dilated(tmp_path_factory):
    return _run(ResultsStore(tmp_path_factory.mktemp("dilated"), "claims", job_id="t"), "dilated_16_32_64")


def test_dilated_learns_its_unsplit_reach_and_the_split_items_are_the_grid_s_cost(dilated):
    """Dilated within reach: >= 0.90 on the items no head cuts in two; far less on the split ones (a head sees the
    key token but not its value, reach.items_split), which training longer does not fix (3000 steps: 0.877 on
    the whole reach, measured 2026-12-01); chance beyond."""
    window = tables.retrieval_headline(dilated).iloc[0]
    assert window["seeds"] == 3
    assert window["within_reach"] >= 0.90, window.to_dict()
    assert window["split_share"] > 0.05 and window["split_reach"] < window["within_reach"] - 0.2, window.to_dict()
    assert abs(window["beyond_reach"] - window["chance"]) <= 0.05, window.to_dict()
