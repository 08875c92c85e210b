"""The issue's accuracy claims, on the retrieval_tiny configuration as shipped (conf/experiment/retrieval_tiny.yaml):
dense attention >= 95 % on MQAR at every distance; a sliding window high within its reach, near chance beyond."""

from omegaconf import OmegaConf

from harness.config import compose
from harness.retrieval.run import run_retrieval
from harness.store import ResultsStore


def _run(tmp_path, variant):
    cfg = compose(["experiment=retrieval_tiny", "train.progress=false", "eval.seq_lens=[64]"])
    sections = {name: OmegaConf.to_container(cfg[name], resolve=True) for name in ("task", "model", "train", "eval")}
    attention = cfg.attention if variant is None else cfg.variants[variant]
    return run_retrieval(attention, sections, ResultsStore(tmp_path, "claims", job_id=variant or "dense"))


def test_dense_reaches_95_percent_at_every_distance(tmp_path):
    frame = _run(tmp_path, None)
    assert (frame["status"] == "ok").all()
    assert frame["accuracy"].min() >= 0.95, frame[["distance_lo", "distance_hi", "accuracy"]].to_string()


def test_sliding_window_is_high_within_reach_and_near_chance_beyond(tmp_path):
    frame = _run(tmp_path, "sliding_window_8")
    reach = frame["theoretical_reach"].iloc[0]
    chance = frame["chance"].iloc[0]
    within = frame[frame["distance_hi"] <= 9]  # one layer's window (8) plus the token shift: a single lookup
    beyond = frame[frame["distance_lo"] > reach]
    assert len(within) and len(beyond)
    assert within["accuracy"].min() >= 0.6, within[["distance_lo", "distance_hi", "accuracy"]].to_string()
    assert beyond["accuracy"].max() <= chance + 0.05, beyond[["distance_lo", "distance_hi", "accuracy"]].to_string()
