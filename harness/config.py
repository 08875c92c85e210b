"""Structured configs for the `shootout` entry point, and the checks that run before any work starts.

conf/config.yaml composes these dataclasses (registered in Hydra's ConfigStore as `shootout_schema`) with the
config groups under conf/: `attention`, `benchmark`, `logger` and the `experiment` presets. Because every node
is typed, `benchmark.seqlens=[1024]` (a typo) or `benchmark.warmup=two` is a composition error, not a silently
ignored key.

Bad input raises `ConfigError`; the entry point prints its one-line message and exits with code 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from .retrieval.config import EvalConfig, ModelConfig, ProbeConfig, TaskConfig, TrainConfig

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("attention", "benchmark", "logger", "task", "model", "train", "experiment")


class ConfigError(ValueError):
    """Bad user input, reported as one line and exit code 2 before anything runs."""


@dataclass
class AttentionConfig:
    """One attention variant: a mechanism, a backend (None = pick automatically) and its parameters."""

    name: str = MISSING  # label in result rows and plots
    mechanism: str = MISSING  # dense | sliding_window | dilated
    backend: Optional[str] = None
    # Checked by attention_impls.make_params, which names any unknown key and the allowed ones.
    params: Dict[str, Any] = field(default_factory=dict)


@dataclass
class CorrectnessConfig:
    """The gate: before a (variant, dtype, causal, pass) is timed, compare it with the float64 reference."""

    enabled: bool = True
    seq_len: int = 256
    batch: int = 1
    # Max abs error allowed against the float64 reference, per dtype; gradients get their own (they sum N terms).
    out_atol: Dict[str, float] = field(
        default_factory=lambda: {"float64": 1e-10, "float32": 2e-4, "float16": 1e-2, "bfloat16": 3e-2})
    grad_atol: Dict[str, float] = field(
        default_factory=lambda: {"float64": 1e-9, "float32": 1e-3, "float16": 5e-2, "bfloat16": 1.5e-1})


@dataclass
class CeilingConfig:
    """The matrix-multiply ceiling: a square GEMM timed once per (device, dtype) per run, same thread count."""

    size: int = 1024
    min_run_time_s: float = 0.3


@dataclass
class MaxSeqLenConfig:
    """Per variant: double N from `start` until a point fails (memory, time) or `limit`, then bisect."""

    enabled: bool = False
    start: int = 1024
    limit: int = 1 << 20
    latency_budget_s: float = 5.0  # a point whose median latency exceeds this does not fit
    resolution: int = 256  # bisect until fitting and failing N are this close (and N stays a multiple of it)


@dataclass
class BenchmarkConfig:
    """What to measure and the sweep axes; the runner measures their full product for every variant."""

    device: str = "cpu"  # cpu | cuda | auto
    dtypes: List[str] = field(default_factory=lambda: ["float32"])
    batch: int = 1
    heads: int = 8
    head_dim: int = 64
    seq_lens: List[int] = field(default_factory=lambda: [512, 1024, 2048])
    causal: List[bool] = field(default_factory=lambda: [False])
    passes: List[str] = field(default_factory=lambda: ["forward", "forward_backward"])
    warmup: int = 2  # untimed calls after the first (compiling) call
    min_run_time_s: float = 0.2  # timed runs continue until this much time ...
    min_repeats: int = 5  # ... and this many timed blocks are reached
    # The variants of one N are timed in this many interleaved rounds (A B C A B C ...), each with 1/rounds of
    # min_run_time_s and min_repeats; speed-ups are medians of per-round ratios (speedup_round_*).
    rounds: int = 3
    threads: Optional[int] = None  # torch threads in the worker (None: torch's default)
    isolation: str = "process"  # process: a worker process that can fail alone; inline: this process (debug)
    timeout_s: float = 300.0  # wall-clock budget per point, compile included; the worker is killed beyond it
    worker_memory_limit_gb: Optional[float] = None  # CPU: RLIMIT_DATA headroom for the worker (a real OOM)
    fresh_worker_per_point: bool = False  # start a new worker for every point (slower, fully isolated)
    # After an oom/timeout at some N, record larger N of the same variant/dtype/causal/pass as `skipped`.
    skip_larger_after_failure: bool = True
    correctness: CorrectnessConfig = field(default_factory=CorrectnessConfig)
    ceiling: CeilingConfig = field(default_factory=CeilingConfig)
    max_seq_len: MaxSeqLenConfig = field(default_factory=MaxSeqLenConfig)
    # "module:function" run in the worker for each point: (point, attn) -> attn. For fault injection in tests.
    fault_hook: Optional[str] = None


@dataclass
class DistributedConfig:
    """The `distributed` job (harness/bench/distributed.py): sequence-parallel dense and dilated attention.

    Shapes, dtypes, causal, passes, warmup, timing, threads, device and the per-point timeout come from
    `benchmark`; the variants from `attention` + `variants`.
    """

    # Ranks per process group when `shootout` starts them itself, one group per entry (on CUDA, one GPU per rank).
    # Under torchrun (RANK/WORLD_SIZE set) the launcher's group is used and this is ignored.
    world_sizes: List[int] = field(default_factory=lambda: [2])
    dist_backend: str = "auto"  # auto (nccl on cuda, gloo on cpu) | gloo | nccl
    calls_per_sample: int = 1  # attention calls per timed sample
    check_max_seq_len: int = 4096  # compare with the single-process attention up to this seq_len (0: off)
    collective_timeout_s: float = 60.0  # process-group timeout: the longest a rank waits in one collective
    health_timeout_s: float = 10.0  # after a failed collective, how long ranks wait for each other to check in
    # "module:function" run on every rank before each point: (point: dict, rank) -> None. For fault injection.
    fault_hook: Optional[str] = None


@dataclass
class TargetsConfig:
    """The `targets` job (harness/bench/targets.py): the performance targets, each a ratio measured in one run."""

    device: str = "cpu"
    dtype: str = "float32"  # float32, bfloat16 or float16
    threads: int = 2
    smoke: bool = False  # tiny shapes: checks that every target runs, in seconds
    skip_1m: bool = False  # leave out the 1M-token scaling target
    timeout_s: float = 3600.0  # per measurement, run in the worker (the 1M-token scaling run takes minutes)
    fault_hook: Optional[str] = None  # tests: "module:function" called with each measurement's name first
    only: List[str] = field(default_factory=list)  # [] = every target for this device


@dataclass
class PathsConfig:
    """Where a run writes, all under one root (conf/paths/default.yaml; lightning-hydra-template's paths)."""

    root_dir: str = "."
    # <results_dir>/<name>/ holds an experiment's rows, report, tables, plots, W&B runs and Hydra's run folders.
    results_dir: str = "${paths.root_dir}/results"


@dataclass
class ShootoutConfig:
    # What the run does, in order; see harness.run.JOBS (speed, probe, retrieval). One W&B run, one report.
    jobs: List[str] = field(default_factory=lambda: ["speed"])
    # The preset chosen with `experiment=...` (Hydra's choice; `default` when none is): `experiment` is also the
    # preset group, so the CLI cannot set this key: use `name=...` to file an ad hoc run under another folder.
    experiment: str = "${shootout_experiment:}"
    name: str = "${experiment}"  # results go to <paths.results_dir>/<name>/
    paths: PathsConfig = field(default_factory=PathsConfig)
    resume: bool = True  # skip points whose config_hash is already recorded
    seed: int = 0
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    # More variants measured in the same run, after `attention` (name -> variant; experiments fill it).
    variants: Dict[str, AttentionConfig] = field(default_factory=dict)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    # The retrieval jobs' sections (harness/retrieval/config.py): the synthetic task, the tiny decoder, its
    # training and held-out evaluation, and the training-free probe.
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    report: bool = True  # write results/<name>/report.md and report.html at the end of the run
    logger: Dict[str, Any] = field(default_factory=lambda: {"_target_": "harness.loggers.NullLogger"})


def unknown_keys(node: Any, where: str = "") -> list[str]:
    """Keys of a schema-typed section that its dataclass does not define: added with `+`, read by nothing."""
    if not OmegaConf.is_dict(node):
        return []
    typed = OmegaConf.get_type(node)
    known = {f.name for f in dataclasses.fields(typed)} if dataclasses.is_dataclass(typed) else None
    found = []
    for key in node.keys():
        path = f"{where}.{key}" if where else str(key)
        if known is not None and key not in known:
            found.append((path, sorted(known)))
        else:
            found.extend(unknown_keys(node._get_node(key), path))
    return found


def check_known_keys(cfg: DictConfig) -> None:
    """Refuse a key the schema does not know (`+benchmark.seqlens=...`, `+foo=bar`), naming the close one."""
    for path, known in unknown_keys(cfg):
        parent, _, key = path.rpartition(".")
        raise ConfigError(f"{path} is not a config key{_suggest(key, known)}: `+` adds a key, but nothing reads "
                          f"this one; the keys of {parent or 'the top level'} are: {', '.join(known)}")


def backend_nodes() -> dict[str, dict[str, Any]]:
    """One `attention=<mechanism>_<backend>` node per registered backend, built from the registry, so a new
    backend or mechanism needs no config file; named presets (longnet_paper, ...) stay YAML in conf/attention/."""
    from attention_impls.mechanisms import get_mechanism
    from attention_impls.registry import REGISTRY, _load_backends

    _load_backends()
    return {f"{mechanism}_{backend}": {"name": f"{mechanism}_{backend}", "mechanism": mechanism, "backend": backend,
                                       "params": dict(get_mechanism(mechanism).config_params)}
            for mechanism, backends in REGISTRY.items() for backend in backends}


def experiment_choice() -> str:
    """The experiment preset Hydra composed (`experiment=...`), or "default" when none was chosen."""
    from hydra.core.hydra_config import HydraConfig

    choice = HydraConfig.get().runtime.choices.get("experiment") if HydraConfig.initialized() else None
    return choice or "default"


# At import, not in register_configs: a launcher's worker process (joblib, submitit) unpickles the job and
# resolves its config without running the entry point.
if not OmegaConf.has_resolver("shootout_experiment"):
    OmegaConf.register_new_resolver("shootout_experiment", experiment_choice)


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="shootout_schema", node=ShootoutConfig)
    for name, node in backend_nodes().items():
        store.store(group="attention", name=name, node=node)


def group_options(group: str) -> list[str]:
    """The option names of a config group: the yaml files under conf/<group>/, and for `attention` also the
    node registered for every backend."""
    files = {p.stem for p in (CONF_DIR / group).glob("*.yaml")}
    return sorted(files | set(backend_nodes()) if group == "attention" else files)


def _suggest(value: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def normalize_overrides(overrides: list[str]) -> list[str]:
    """`+resume=false` (the issue's spelling) means `resume=false`: resume is always in the schema, and
    Hydra refuses to append a key that exists."""
    return [o[1:] if o.startswith("+resume=") else o for o in overrides]


def expand_overrides(overrides: list[str], multirun: bool, max_jobs: int = 256) -> list[list[str]]:
    """Every job's override list, as Hydra's basic sweeper would make them; unknown group options raise.

    Only used to check all jobs before the first starts; glob() sweeps are left to Hydra.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Glob

    parsed = OverridesParser.create().parse_overrides(overrides)
    axes: list[list[str]] = []
    for override in parsed:
        key = override.key_or_group
        if key.startswith("hydra") or isinstance(override.value(), Glob):
            continue
        if override.is_sweep_override():
            if not multirun:
                raise ConfigError(f"{override.input_line} is a sweep; add --multirun (-m) to run one job per value")
            values = list(override.sweep_string_iterator())
        else:
            values = [override.get_value_element_as_str()] if not override.is_delete() else [None]
        group = key.split("@")[0].lstrip("/")
        if group in GROUPS and override.value_type is not None:
            choices = group_options(group)
            for value in values:
                if value is not None and value != "null" and value not in choices:
                    raise ConfigError(f"{group}={value} is not a config option{_suggest(value, choices)}; "
                                      f"choose one of: {', '.join(choices)}")
        prefix = {"+": "+", "++": "++", "~": "~"}.get(_override_prefix(override.input_line), "")
        axes.append([override.input_line if v is None else f"{prefix}{key}={v}" for v in values])
    jobs = [list(combo) for combo in itertools.islice(itertools.product(*axes), max_jobs)]
    return jobs or [[]]


def _override_prefix(line: str) -> str:
    for prefix in ("++", "+", "~"):
        if line.startswith(prefix):
            return prefix
    return ""


def compose(overrides: list[str]):
    """The job config for `overrides`, composed from conf/ as the entry point would (for checks and tests)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_configs()
    # initialize_config_dir refuses to nest and restores the previous (empty) state on exit.
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=normalize_overrides(overrides),
                                return_hydra_config=True)
        # as under hydra.main: Hydra's own config (its runtime choices name the experiment) is set, not shown
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        # concrete now: a later compose() replaces the HydraConfig this choice was read from
        cfg.experiment = experiment_choice()
        HydraConfig.instance().cfg = None
        return cfg
    except (HydraException, OmegaConfBaseException) as error:
        cause = f": {str(error.__cause__).splitlines()[0]}" if error.__cause__ is not None else ""
        raise ConfigError(" ".join((str(error) + cause).split())) from None
