"""The GPU and zoology retrieval presets, run end to end at small sizes on CPU: they compose, validate at their
full sizes, and the pipeline (zoology generator, stacked-layer reach, rows, report tables) runs them."""

import pytest
from omegaconf import OmegaConf

from harness.config import compose
from harness.report import tables
from harness.retrieval.config import RetrievalConfig
from harness.retrieval.run import run_retrieval
from harness.store import ResultsStore

SMALL = ["train.device=cpu", "train.lrs=[1e-3]", "train.seeds=1", "train.max_steps=3", "train.eval_every=3",
         "train.val_sequences=4", "train.progress=false", "eval.sequences=4", "eval.batch_size=4"]


def _sections(cfg):
    return {name: OmegaConf.to_container(cfg[name], resolve=True) for name in ("task", "model", "train", "eval")}


@pytest.mark.parametrize("experiment", ["retrieval", "retrieval_zoology", "retrieval_tiny"])
def test_full_size_preset_validates(experiment):
    cfg = compose([f"experiment={experiment}", "train.device=cpu"])
    RetrievalConfig.from_mapping(_sections(cfg)).validate()
    assert cfg.task.layout == ("interleaved" if experiment == "retrieval_tiny" else "zoology")


def test_gpu_preset_runs_at_small_sizes_on_cpu(tmp_path):
    cfg = compose(["experiment=retrieval", *SMALL, "task.seq_len=256", "task.num_pairs=16", "task.num_keys=64",
                   "task.num_values=64", "eval.seq_lens=[256,512]", "model.d_model=32", "model.heads=4",
                   "model.layers=2"])
    store = ResultsStore(tmp_path, "gpu_small", job_id="t")
    for variant in [cfg.attention, *cfg.variants.values()]:
        frame = run_retrieval(variant, _sections(cfg), store)
        assert (frame["status"] == "ok").all(), frame[["status", "reason"]]
        assert set(frame["seq_len"]) == {256, 512} and frame["task_layout"].iloc[0] == "zoology"
        assert (frame["split_count"] == 0).all()  # stacked layers: the split class is not defined
    headline = tables.retrieval_headline(store.read())
    assert len(headline) == 3 * 2 and set(headline["converged"]) == {"0/1"}  # 3 steps converge nothing
    assert headline["verdict"].str.contains("had not converged").all()
