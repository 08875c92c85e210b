"""scripts/wandb_sweep.yaml: every command the W&B agent would build is a valid `shootout` command line."""

import itertools
from pathlib import Path

import yaml

from harness.config import compose
from harness.run import check

SWEEP = Path(__file__).resolve().parents[2] / "scripts" / "wandb_sweep.yaml"


def agent_commands() -> list[list[str]]:
    """The grid's points as the agent's ${args_no_hyphens} writes them (key=value), after the fixed words."""
    sweep = yaml.safe_load(SWEEP.read_text())
    assert sweep["method"] == "grid" and sweep["command"][0] == "${env}" and sweep["command"][-1] == "${args_no_hyphens}"
    fixed = sweep["command"][1:-1]
    names = list(sweep["parameters"])
    choices = [spec["values"] if "values" in spec else [spec["value"]] for spec in sweep["parameters"].values()]
    return [fixed + [f"{k}={v}" for k, v in zip(names, point)] for point in itertools.product(*choices)]


def test_every_sweep_point_composes_and_passes_the_checks(tmp_path):
    commands = agent_commands()
    assert len(commands) == 3
    for command in commands:
        assert command[0] == "shootout" and "logger=wandb" in command
        cfg = compose([*command[1:], f"paths.results_dir={tmp_path}"])
        check(cfg)
        assert cfg.logger._target_ == "harness.loggers.WandbLogger" and cfg.name == "sweep_attention"
