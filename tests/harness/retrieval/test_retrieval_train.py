import json

import pytest

from harness.retrieval.run import run_retrieval
from harness.store import ResultsStore

# The retrieval_tiny model and task with a shorter run: enough steps to learn well above chance (1/16) on CPU.
TINY = {"task": {"name": "mqar", "layout": "interleaved", "seq_len": 64, "num_pairs": 8, "num_keys": 16,
                 "num_values": 16},
        "model": {"layers": 2, "d_model": 64, "heads": 2, "mlp_ratio": 0, "token_shift": True},
        "train": {"batch_size": 32, "max_steps": 120, "eval_every": 30, "val_sequences": 64, "lrs": [3e-3],
                  "max_seconds": 300.0, "threads": 2, "progress": False},
        "eval": {"seq_lens": [64], "sequences": 128, "bucket_edges": [2, 16, 32]}}


class RecordingLogger:
    def __init__(self):
        self.metrics, self.curves = [], set()

    def log_curve(self, curve, step_key, step, metrics):
        self.curves.add(curve)
        self.metrics.append((step, dict(metrics)))


def test_dense_mqar_learns_and_rows_are_complete(tmp_path):
    store = ResultsStore(tmp_path, "retrieval_tiny", job_id="t")
    logger = RecordingLogger()
    frame = run_retrieval({"mechanism": "dense", "backend": "sdpa"}, TINY, store, logger)
    assert (frame["status"] == "ok").all()
    assert frame["accuracy"].min() > 0.5  # chance is 1/16
    assert frame["count"].sum() == 128 * 8
    assert list(zip(frame["distance_lo"], frame["distance_hi"])) == [(2, 15), (16, 31), (32, 63)]
    row = frame.iloc[0]
    assert row["kind"] == "retrieval" and row["backend"] == "sdpa" and row["theoretical_reach"] == 63
    assert row["reachable_fraction"] == 1.0 and row["chance"] == 1 / 16 and row["env_threads"] == 2
    assert json.loads(row["config"])["retrieval"]["task"]["num_pairs"] == 8
    steps = [step for step, m in logger.metrics]
    assert steps == list(range(1, len(steps) + 1)) and "val/accuracy" in logger.metrics[29][1]
    assert logger.curves == {"retrieval/dense/lr=0.003/seed=0"}
    assert len(store.read()) == len(frame)
    again = run_retrieval({"mechanism": "dense", "backend": "sdpa"}, TINY, store, resume=True)
    assert len(again) == len(frame) and len(store.read()) == len(frame)  # resumed, not retrained


ONE_LAYER = {**TINY, "model": {**TINY["model"], "layers": 1},
             "train": {**TINY["train"], "max_steps": 400, "eval_every": 50, "val_sequences": 128},
             "eval": {"seq_lens": [64], "sequences": 256, "bucket_edges": [2, 10, 32]}}


def test_short_training_reaches_most_of_its_ceiling_and_chance_beyond(tmp_path):
    """A 1-layer window-8 model learns what its pattern reaches within 400 steps (a few CPU seconds): >= 0.85
    of the items within reach (its ceiling there is 1), chance beyond."""
    frame = run_retrieval({"mechanism": "sliding_window", "params": {"window": 8}}, ONE_LAYER,
                          ResultsStore(tmp_path, "r", job_id="t"))
    assert (frame["status"] == "ok").all()
    row = frame.iloc[0]
    assert row["train_stop"] in ("ceiling", "plateau") and row["converged"], row["train_stop"]
    within = frame["within_correct"].sum() / frame["within_count"].sum()
    beyond = frame["beyond_correct"].sum() / frame["beyond_count"].sum()
    assert within >= 0.85, within
    assert abs(beyond - row["chance"]) <= 0.05, beyond
    # The three classes partition every bucket's items.
    parts = frame["within_count"] + frame["split_count"] + frame["answer_only_count"] + frame["beyond_count"]
    assert (parts == frame["count"]).all()
    assert row["val_ceiling"] < 0.5 and row["train_sequences"] == row["train_steps"] * 32
    curve = json.loads(row["learning_curve"])
    assert curve[-1][0] == row["train_steps"] and len(curve) == row["train_steps"] // 50


def test_learning_rate_sweep_then_seeds_at_the_kept_rate(tmp_path):
    from harness.retrieval.protocol import select_lr

    cfg = {**ONE_LAYER, "train": {**ONE_LAYER["train"], "max_steps": 60, "eval_every": 30, "lrs": [1e-4, 3e-3],
                                  "seeds": 2}}
    store = ResultsStore(tmp_path, "sweep", job_id="t")
    attention = {"mechanism": "dense", "backend": "sdpa"}
    frame = run_retrieval(attention, cfg, store)
    runs = frame.drop_duplicates("config_hash")
    assert len(runs) == 3 and runs["sweep_id"].nunique() == 1  # two rates at seed 0, one more seed at the best
    kept = select_lr(runs[["sweep_id", "lr", "seed", "val_accuracy"]]).iloc[0]
    assert kept == 3e-3  # 60 steps at 1e-4 learn next to nothing
    assert sorted(runs.loc[runs["lr"] == kept, "seed"]) == [0, 1]
    # A third seed later trains only that one run; the others resume from the store.
    more = {**cfg, "train": {**cfg["train"], "seeds": 3}}
    again = run_retrieval(attention, more, store, resume=True)
    assert again["config_hash"].nunique() == 4
    assert store.read()["config_hash"].nunique() == 4


def test_noise_sets_hold_every_query_at_one_distance(tmp_path):
    cfg = {**ONE_LAYER, "train": {**ONE_LAYER["train"], "max_steps": 30, "eval_every": 30},
           "eval": {**ONE_LAYER["eval"], "noise_pairs": [2, 6], "noise_distance": 5}}
    frame = run_retrieval({"mechanism": "dense", "backend": "sdpa"}, cfg, ResultsStore(tmp_path, "n", job_id="t"))
    noise = frame[frame["eval_set"] == "noise"]
    assert list(noise["eval_pairs"]) == [2, 6] and (noise["distance_lo"] == 5).all()
    assert list(noise["count"]) == [256 * 2, 256 * 6]  # every pair is queried
    assert (frame.loc[frame["eval_set"] == "distance", "eval_pairs"] == 8).all()


def test_time_cap_marks_the_run_as_not_converged(tmp_path):
    cfg = {**ONE_LAYER, "train": {**ONE_LAYER["train"], "max_seconds": 1e-6}}
    frame = run_retrieval({"mechanism": "dense", "backend": "sdpa"}, cfg, ResultsStore(tmp_path, "c", job_id="t"))
    row = frame.iloc[0]
    assert row["train_stop"] == "time_cap" and row["train_steps"] == 1 and not row["converged"]


def test_same_seed_same_accuracies(tmp_path):
    short = {**TINY, "train": {**TINY["train"], "max_steps": 12, "eval_every": 6, "batch_size": 8},
             "eval": {"seq_lens": [64], "sequences": 32}}
    attention = {"mechanism": "sliding_window", "params": {"window": 8}}
    runs = [run_retrieval(attention, short, ResultsStore(tmp_path, f"r{i}", job_id="t")) for i in range(2)]
    for column in ("accuracy", "train_final_loss", "eval_loss", "count", "reachable_fraction"):
        assert runs[0][column].tolist() == runs[1][column].tolist(), column
    other = run_retrieval(attention, {**short, "train": {**short["train"], "seed": 1}},
                          ResultsStore(tmp_path, "r2", job_id="t"))
    assert other["eval_loss"].tolist() != runs[0]["eval_loss"].tolist()


def test_unsupported_backend_is_a_row_not_a_crash(tmp_path):
    store = ResultsStore(tmp_path, "retrieval_tiny", job_id="t")
    frame = run_retrieval({"mechanism": "dense", "backend": "xformers"}, TINY, store)
    assert frame["status"].tolist() == ["unsupported"] and "xformers" in frame["reason"][0]


def test_bad_config_fails_before_training(tmp_path):
    bad = {**TINY, "task": {**TINY["task"], "num_pairs": 20}}
    with pytest.raises(ValueError, match="num_pairs=20"):
        run_retrieval({"mechanism": "dense"}, bad, ResultsStore(tmp_path, "x", job_id="t"))
    with pytest.raises(TypeError, match="window"):
        run_retrieval({"mechanism": "sliding_window", "params": {"windw": 3}}, TINY,
                      ResultsStore(tmp_path, "x", job_id="t"))
