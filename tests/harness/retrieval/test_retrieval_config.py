import pytest

from harness.retrieval.config import (EvalConfig, ModelConfig, ProbeConfig, RetrievalConfig, RetrievalConfigError,
                                      TaskConfig, TrainConfig)


def test_defaults_validate():
    RetrievalConfig().validate()
    ProbeConfig().validate()


@pytest.mark.parametrize("cfg, message", [
    (RetrievalConfig(task=TaskConfig(name="passkey", seq_len=64, key_len=40)), "task.key_len=40 is too long"),
    (RetrievalConfig(task=TaskConfig(layout="interleaved", seq_len=64, num_pairs=12, num_keys=16)),
     "more than fit in task.seq_len=64"),
    (RetrievalConfig(task=TaskConfig(seq_len=64, num_pairs=17, num_keys=32, num_values=32)),
     r"task.num_pairs=17 pairs need 68 positions in the zoology layout .* at most 16 pairs fit"),
    (RetrievalConfig(task=TaskConfig(num_pairs=8, num_keys=16, num_values=4)),
     "task.num_pairs=8 exceeds task.num_values=4: the zoology layout repeats no value"),
    (RetrievalConfig(task=TaskConfig(power_a=0.0)), r"task.power_a=0.0 must be a number > 0"),
    (RetrievalConfig(task=TaskConfig(power_a=-1)), r"task.power_a=-1 must be a number > 0"),
    (RetrievalConfig(task=TaskConfig(layout="interleaved", power_a=-1)), r"task.power_a=-1 must be a number > 0"),
    (RetrievalConfig(task=TaskConfig(num_queries=3)), "the zoology layout queries every pair"),
    (RetrievalConfig(task=TaskConfig(layout="shuffled")), r"task.layout='shuffled' is not known; choose one of"),
    (RetrievalConfig(eval=EvalConfig(noise_pairs=[4])), "eval.noise_pairs=\\[4\\] needs task.name=mqar with task.layout="
                                                       "interleaved"),
    (RetrievalConfig(task=TaskConfig(layout="interleaved", seq_len=64, num_keys=32), eval=EvalConfig(noise_pairs=[4, 12])),
     r"eval.noise_pairs\[1\]=12: task.num_pairs=12 pairs .* more than fit in task.seq_len=64"),
    (RetrievalConfig(task=TaskConfig(layout="interleaved"), eval=EvalConfig(noise_pairs=[4], noise_distance=1)),
     "eval.noise_distance=1 must be an int in \\[2, 2147483647\\]"),
    (RetrievalConfig(train=TrainConfig(lrs=[])), r"train.lrs=\[\] must list at least one learning rate"),
    (RetrievalConfig(train=TrainConfig(lrs=[1e-3, -1.0])), r"train.lrs\[1\]=-1.0 must be a positive number"),
    (RetrievalConfig(train=TrainConfig(lrs=[1e-3, 1e-3])), "repeats a rate"),
    (RetrievalConfig(train=TrainConfig(seeds=0)), "train.seeds=0 must be an int in \\[1, 2147483647\\]"),
    (RetrievalConfig(train=TrainConfig(plateau_patience=0)), "train.plateau_patience=0 must be an int in \\[1, 2147483647\\]"),
    (RetrievalConfig(train=TrainConfig(ceiling_margin=1.0)), r"train.ceiling_margin=1.0 must be in \[0, 1\)"),
    (RetrievalConfig(task=TaskConfig(num_pairs=20, num_keys=16)), "task.num_pairs=20 exceeds task.num_keys=16"),
    (RetrievalConfig(task=TaskConfig(name="passkey"), eval=EvalConfig(depths=[0.5, 1.5])),
     r"eval.depths\[1\]=1.5 is outside \[0, 1\]"),
    (RetrievalConfig(task=TaskConfig(name="passkey", key_len=10), eval=EvalConfig(seq_lens=[128, 16])),
     r"eval.seq_lens\[1\]=16"),
    (RetrievalConfig(task=TaskConfig(name="copy")), "task.name='copy' is not known"),
    (RetrievalConfig(task=TaskConfig(layout="interleaved", min_gap=1)), "task.min_gap=1 must be an int in \\[2, 2147483647\\]"),
    (RetrievalConfig(task=TaskConfig(layout="interleaved", gap_distribution="power")),
     r"task.gap_distribution='power' is not known; choose one of \['uniform', 'log_uniform'\]"),
    (RetrievalConfig(model=ModelConfig(d_model=60, heads=4)), "must be even"),
])
def test_bad_configs_fail_before_training_naming_the_value(cfg, message):
    with pytest.raises(RetrievalConfigError, match=message):
        cfg.validate()


def test_from_mapping_rejects_typos_with_a_hint():
    with pytest.raises(RetrievalConfigError, match="'num_pair' \\(did you mean 'num_pairs'\\?\\)"):
        RetrievalConfig.from_mapping({"task": {"num_pair": 4}})
    with pytest.raises(RetrievalConfigError, match="'lr' \\(did you mean 'lrs'\\?\\)"):
        RetrievalConfig.from_mapping({"train": {"lr": 1e-3}})
    with pytest.raises(RetrievalConfigError, match="unknown retrieval config sections"):
        RetrievalConfig.from_mapping({"trian": {}})


def test_from_mapping_accepts_omegaconf_nodes():
    from omegaconf import OmegaConf

    node = OmegaConf.create({"seed": 3, "train": {"seed": "${seed}", "max_steps": 7}})
    cfg = RetrievalConfig.from_mapping({"train": node.train})
    assert cfg.train.seed == 3 and cfg.train.max_steps == 7


def test_probe_margin_must_outweigh_the_sequence():
    with pytest.raises(RetrievalConfigError, match="probe.margin=5.0 is too small"):
        ProbeConfig(seq_len=4096, margin=5.0).validate()
