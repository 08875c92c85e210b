"""An offline W&B run of a two-variant speed + retrieval job, read back: every curve with all its points."""

import json

import pandas as pd
import pytest

from harness.config import compose
from harness.run import run
from harness.wandb_records import read_offline_run

from test_main import SHRINK  # tests/harness is on sys.path (pytest rootdir-less prepend import mode)

pytest.importorskip("wandb")

TWO_VARIANTS = ["experiment=retrieval_tiny", "~variants.dilated_16_32_64", "eval.noise_pairs=[]",
                "attention.backend=sdpa"]  # dense (sdpa) and sliding_window_8
SMALL = ["benchmark=quick", "benchmark.seq_lens=[64,128]", "benchmark.passes=[forward]", "benchmark.causal=[true]",
         *SHRINK, "task.layout=interleaved", "task.seq_len=32", "task.num_pairs=4", "task.num_keys=8",
         "task.num_values=8", "model.d_model=32", "model.heads=2", "train.max_steps=6", "train.eval_every=3",
         "train.val_sequences=8", "train.batch_size=4", "train.lrs=[1e-3,3e-3]", "train.seeds=2",
         "train.progress=false", "eval.sequences=8", "eval.batch_size=8", "eval.seq_lens=[32]", "eval.bucket_edges=[]", "report=false"]


def test_offline_run_keeps_every_curve_and_point(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose([*TWO_VARIANTS, "jobs=[speed,retrieval]", *SMALL, f"paths.results_dir={tmp_path}",
                   "name=tracked", "logger=wandb", "logger.tags=[ci]"])
    store = run(cfg)
    rows = store.read_job()
    runs = {r.run["job_type"]: r for r in map(read_offline_run,
                                               sorted((tmp_path / "tracked" / "wandb").glob("offline-run-*")))}
    assert set(runs) == {"speed", "retrieval", "report"}  # the W&B directory sits inside the experiment folder
    for job, tracked in runs.items():
        assert tracked.run["name"] == f"tracked/{job}" and tracked.run["group"] == "tracked"
        assert set(tracked.run["tags"]) == {"ci", "tracked", job}

    speed = runs["speed"]
    for variant in ("dense", "sliding_window_8"):
        points = speed.series(f"speed/{variant}/forward/causal/float32/latency_median_s")
        assert [n for n, _ in points] == [64, 128] and all(latency > 0 for _, latency in points)
    assert speed.summary["speed/sliding_window w=8 (masked_sdpa)/forward/causal/float32/seq_len"] == 128
    assert speed.summary["speed/sliding_window w=8 (masked_sdpa)/forward/causal/float32/speedup_vs_dense"] > 0
    assert {a["name"] for a in speed.artifacts if a["type"] == "rows"} == {"rows-tracked-speed"}

    retrieval = runs["retrieval"]
    trained = rows[rows["kind"] == "retrieval"].drop_duplicates("config_hash")
    assert len(trained) == 2 * 3  # per variant: two rates at seed 0, then one more seed at the kept rate
    for run_row in trained.itertuples():
        curve = f"retrieval/{run_row.name}/lr={run_row.lr:g}/seed={int(run_row.seed)}"
        losses = retrieval.series(f"{curve}/train/loss")
        assert [step for step, _ in losses] == list(range(1, int(run_row.train_steps) + 1)), curve
        validation = retrieval.series(f"{curve}/val/accuracy")
        assert [step for step, _ in validation] == [entry[0] for entry in json.loads(run_row.learning_curve)], curve
    assert any(key.endswith("/within_reach") for key in retrieval.summary)

    report = runs["report"]
    assert report.config["input_artifacts"] == ["rows-tracked-speed", "rows-tracked-retrieval"]
    assert {a["name"] for a in report.artifacts if a["type"] == "results"} == {"results-tracked"}
    assert pd.read_parquet(tmp_path / "tracked" / "results.parquet").shape[0] == len(store.consolidate())
