import json

import pytest

from harness.retrieval.run import run_retrieval
from harness.store import ResultsStore

# The retrieval_tiny model and task with a shorter run: enough steps to learn well above chance (1/16) on CPU.
TINY = {"task": {"name": "mqar", "seq_len": 64, "num_pairs": 8, "num_keys": 16, "num_values": 16},
        "model": {"layers": 2, "d_model": 64, "heads": 2, "mlp_ratio": 0, "token_shift": True},
        "train": {"batch_size": 32, "max_steps": 120, "eval_every": 30, "target_accuracy": 0.9, "val_sequences": 64,
                  "max_seconds": 300.0, "threads": 2, "progress": False},
        "eval": {"seq_lens": [64], "sequences": 128, "bucket_edges": [2, 16, 32]}}


class RecordingLogger:
    def __init__(self):
        self.metrics, self.rows = [], []

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))

    def log_rows(self, rows, name="results"):
        self.rows.append(name)


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
    assert logger.rows == ["retrieval"]
    assert len(store.read()) == len(frame)
    again = run_retrieval({"mechanism": "dense", "backend": "sdpa"}, TINY, store, resume=True)
    assert len(again) == len(frame) and len(store.read()) == len(frame)  # resumed, not retrained


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
