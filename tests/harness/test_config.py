"""Every file in conf/ composes against the structured schema, every preset plans, and bad input is refused."""

import errno
import os

import pytest
import torch
from omegaconf import OmegaConf

from attention_impls.registry import get_backend_class
from harness.__main__ import check, main
from harness.config import CONF_DIR, ConfigError, compose, expand_overrides, group_options

GROUPS = ["attention", "benchmark", "logger", "experiment"]


def test_conf_holds_the_expected_options():
    assert {"dense_sdpa", "dense_math", "dense_xformers", "dense_reference", "sliding_window_chunked",
            "sliding_window_flash", "sliding_window_flex", "sliding_window_masked_sdpa", "sliding_window_xformers",
            "sliding_window_reference", "dilated_gather", "dilated_flex", "dilated_xformers", "dilated_reference",
            "longnet_paper"} <= set(group_options("attention"))
    assert {"none", "wandb"} == set(group_options("logger"))
    assert {"default", "longnet_scaling"} <= set(group_options("experiment"))


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in group_options(g)])
def test_every_config_file_composes(group, option):
    cfg = compose([f"{group}={option}"])
    if group == "attention":
        assert cfg.attention.name == option and cfg.attention.mechanism in option or option.startswith("longnet_")
    if group == "logger":
        assert cfg.logger["_target_"].startswith("harness.loggers.")
    if group == "experiment":
        assert cfg.experiment == option == cfg.name


def _available_here(option: str) -> bool:
    attention = compose([f"attention={option}"]).attention
    if attention.backend is None:  # backend=None: the dispatcher picks one that runs
        return True
    return get_backend_class(attention.mechanism, attention.backend).unavailable_reason() is None


@pytest.mark.parametrize("option", [o for o in group_options("attention") if _available_here(o)])
def test_every_runnable_attention_option_passes_the_checks(option, tmp_path):
    check(compose([f"attention={option}", f"paths.results_dir={tmp_path}", "benchmark.seq_lens=[4096]"]))


@pytest.mark.parametrize("option", group_options("experiment"))
def test_every_experiment_preset_passes_the_checks(option, tmp_path):
    overrides = [f"experiment={option}", f"paths.results_dir={tmp_path}"]
    if not torch.cuda.is_available():  # a GPU preset is checked here as it would be on a GPU, but on the CPU
        cfg = compose(overrides)
        overrides += [f"{key}=cpu" for key in ("train.device", "probe.device", "benchmark.device")
                      if str(OmegaConf.select(cfg, key)).startswith("cuda")]
    check(compose(overrides))


def test_experiment_default_compares_three_mechanisms():
    cfg = compose(["experiment=default"])
    mechanisms = [cfg.attention.mechanism] + [v.mechanism for v in cfg.variants.values()]
    assert mechanisms == ["dense", "sliding_window", "dilated"]
    assert set(cfg.benchmark.passes) == {"forward", "forward_backward"} and max(cfg.benchmark.seq_lens) <= 4096


def test_typos_and_wrong_types_fail_composition():
    with pytest.raises(ConfigError, match="seqlens"):
        compose(["benchmark.seqlens=[1024]"])
    with pytest.raises(ConfigError, match="warmup"):
        compose(["benchmark.warmup=two"])
    assert compose(["+resume=false"]).resume is False and compose(["resume=false"]).resume is False


def test_unknown_option_lists_the_choices():
    with pytest.raises(ConfigError) as error:
        expand_overrides(["attention=dense_spda"], multirun=False)
    assert "did you mean 'dense_sdpa'" in str(error.value) and "dilated_gather" in str(error.value)
    with pytest.raises(ConfigError, match="sliding_window_fle"):
        expand_overrides(["attention=dense_sdpa,sliding_window_fle"], multirun=True)


def test_multirun_overrides_expand_to_one_job_each():
    jobs = expand_overrides(["attention=dense_sdpa,dilated_gather", "benchmark.seq_lens=[64,128]"], multirun=True)
    assert jobs == [["attention=dense_sdpa", "benchmark.seq_lens=[64,128]"],
                    ["attention=dilated_gather", "benchmark.seq_lens=[64,128]"]]
    with pytest.raises(ConfigError, match="--multirun"):
        expand_overrides(["attention=dense_sdpa,dilated_gather"], multirun=False)


@pytest.mark.parametrize("argv, message", [
    (["attention=nope"], "attention=nope is not a config option; choose one of: dense_math"),
    (["benchmark.min_repeats=-3"], "benchmark.min_repeats=-3 must be >= 1"),
    (["attention=dense_xformers"], "unavailable here"),
    (["benchmark.seqlens=[1]"], "seqlens"),
    (["name=../elsewhere"], "name='../elsewhere' must be a plain folder name"),
    (["jobs=[speed,retreival]"], "['retreival'] not known; choose from: speed, probe, retrieval"),
    (["logger=wandb", "logger.mode=bogus"], "logger: logger.mode='bogus' is not a W&B mode"),
    (["logger=wandb", "logger.tags=abc"], "logger.tags='abc' must be a list of strings"),
    (["benchmark.rounds=0"], "benchmark.rounds=0 must be >= 1"),
    (["benchmark.timeout_s=inf"], "benchmark.timeout_s=inf must be a finite number of seconds in (0, 604800]"),
    (["benchmark.timeout_s=1e12"], "benchmark.timeout_s=1000000000000.0 must be a finite number of seconds"),
    (["benchmark.heads=99999999999999999999"], "benchmark.heads=99999999999999999999 must be >= 1 and <= 2147483647"),
    (["benchmark.batch=100000", "benchmark.heads=1000000", "benchmark.head_dim=100000000"], "no tensor holds more"),
    (["+benchmark.seqlens=[99999]"], "benchmark.seqlens is not a config key (did you mean 'seq_lens'?)"),
    (["+foo=bar"], "foo is not a config key: `+` adds a key, but nothing reads this one"),
    (["benchmark.causal=[true,true]"], "benchmark.causal=[True, True] repeats True; list each value once"),
    (["benchmark.seq_lens=[64,128,64]"], "benchmark.seq_lens=[64, 128, 64] repeats 64"),
    (["benchmark.worker_memory_limit_gb=inf"], "benchmark.worker_memory_limit_gb=inf must be a number of GiB"),
    (["jobs=[probe]", "probe.heads=99999999999999999999"], "probe.heads=99999999999999999999 must be an int in"),
    (["jobs=[retrieval]", "model.rotary_base=inf"], "model.rotary_base=inf must be a finite number > 1"),
    (["-m", "benchmark.timeout_s=30,inf"], "benchmark.timeout_s=inf must be"),  # checked before the good job runs
])
def test_bad_command_lines_exit_2_with_one_line(argv, message, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["shootout", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("shootout: error: ") and message in err and "Traceback" not in err


def test_unwritable_results_dir_exits_2(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("results cannot go under a file")  # unwritable even for root, unlike chmod
    monkeypatch.setattr("sys.argv", ["shootout", f"paths.results_dir={blocker / 'results'}"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2 and "is not writable" in capsys.readouterr().err


def test_conf_dir_is_the_repository_conf():
    assert (CONF_DIR / "config.yaml").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_gpu_preset_without_cuda_exits_2_naming_the_key(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["shootout", "experiment=retrieval"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert "train.device=cuda but CUDA is not available" in capsys.readouterr().err


def test_the_experiment_name_is_fixed_when_composed():
    first = compose(["experiment=probe"])
    compose(["experiment=longformer"])
    assert first.name == first.experiment == "probe"
    assert compose([]).experiment == "default"


def test_blocked_offsets_are_checked_at_the_probes_shape_before_it_runs(tmp_path):
    from harness.run import check

    cfg = compose(["experiment=probe", f"paths.results_dir={tmp_path}", "probe.heads=3",
                   "+variants.dilated_32_64_128.params.head_offsets=blocked",
                   "variants.dilated_32_64_128.params.dilation_rates=[2,2,2]"])
    with pytest.raises(ConfigError, match="probe: .*in no branch"):
        check(cfg)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_disk_that_fills_or_turns_read_only_mid_run_ends_in_one_line(code, tmp_path, monkeypatch, capsys):
    """The third write fails as a full disk (or a read-only remount) would: one line naming the file, exit 1, and
    the rows written before it stay readable."""
    import pandas as pd

    writes = {"count": 0}
    real = pd.DataFrame.to_parquet

    def failing(frame, path, *args, **kwargs):
        writes["count"] += 1
        if writes["count"] >= 2:
            raise OSError(code, os.strerror(code))
        return real(frame, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", failing)
    monkeypatch.setattr("harness.run.OPENED", [])
    monkeypatch.setattr("sys.argv", ["shootout", "benchmark=quick", "benchmark.seq_lens=[32,64]",
                                     "benchmark.passes=[forward]", "benchmark.isolation=inline", "benchmark.heads=2",
                                     "benchmark.head_dim=16", "benchmark.min_run_time_s=0.002",
                                     "benchmark.correctness.seq_len=32", f"paths.results_dir={tmp_path}", "name=disk"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    part = next((tmp_path / "disk" / "parts").glob("*.parquet"))
    assert last == f"shootout: error: cannot write {part}: {os.strerror(code)}; 1 rows saved in {part}", last
    assert list(pd.read_parquet(part)["seq_len"]) == [32]
    assert not list(part.parent.glob(".*.tmp"))
