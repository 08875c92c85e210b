"""One Hydra job from start to end: check, open the store and the logger, run each job, report, finish.

    run(cfg)                     # what `shootout ...` does for each (multirun) job
    check(cfg)                   # every job validates cfg without running anything; raises ConfigError

`cfg.jobs` lists what the run does, in order: `speed` and `distributed` (harness.bench), `probe` and
`retrieval` (harness.retrieval). All of a run's rows land in one store part; each job is one logger run (W&B:
`<experiment>/<job>`), and the report, rewritten from the whole store at the end so it always shows every job of
the experiment so far, is one more (`<experiment>/report`).
"""

from __future__ import annotations

import os
import uuid
from typing import Any, Callable

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .bench import run_distributed, run_speed
from .bench.targets import run_targets_job
from .config import ConfigError, check_known_keys
from .loggers import NullLogger, rows_artifact
from .retrieval.config import RetrievalConfigError
from .store import ResultsStore, default_job_id


def _variants(cfg: DictConfig) -> list[Any]:
    return [cfg.attention, *cfg.variants.values()]


def _check_device(key: str, device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{key}={device} but CUDA is not available here (torch {torch.__version__}); "
                          f"use {key}=cpu")


def _check_retrieval_side(cfg: DictConfig, job: str, validate_sections: Callable[[], None], device_key: str,
                          heads: int, seq_lens: list[int]) -> None:
    """The probe and retrieval jobs' checks, as ConfigError: their sections, the device, every variant, and each
    variant at the shapes the job will run (blocked dilated offsets, say, depend on the head count)."""
    from attention_impls import make_params
    from attention_impls.mechanisms import get_mechanism

    from .retrieval.run import normalize_attention

    try:
        validate_sections()
        _check_device(device_key, OmegaConf.select(cfg, device_key))
        for variant in _variants(cfg):
            attention = normalize_attention(variant)
            params = make_params(attention["mechanism"], **attention["params"])
            for seq_len in dict.fromkeys(int(n) for n in seq_lens):
                get_mechanism(attention["mechanism"]).check_shape(params, seq_len, int(heads))
    except (RetrievalConfigError, ValueError, TypeError) as error:
        raise ConfigError(f"{job}: {error}") from None


def run_probe_job(cfg: DictConfig, store: ResultsStore | None = None, logger: Any = None,
                  check_only: bool = False):
    from .retrieval import run_probe
    from .retrieval.config import ProbeConfig

    _check_retrieval_side(cfg, "probe", lambda: ProbeConfig.from_mapping(cfg.probe).validate(), "probe.device",
                          cfg.probe.heads, [cfg.probe.seq_len])
    if check_only:
        return None
    return run_probe(_variants(cfg), cfg.probe, store, logger)


def run_retrieval_job(cfg: DictConfig, store: ResultsStore | None = None, logger: Any = None,
                      check_only: bool = False):
    import pandas as pd

    from .retrieval import run_retrieval
    from .retrieval.config import RetrievalConfig

    sections = {name: cfg[name] for name in ("task", "model", "train", "eval")}
    _check_retrieval_side(cfg, "retrieval", lambda: RetrievalConfig.from_mapping(sections).validate(),
                          "train.device", cfg.model.heads, [cfg.task.seq_len, *cfg.eval.seq_lens])
    if check_only:
        return None
    frames = [run_retrieval(variant, sections, store, logger, resume=cfg.resume) for variant in _variants(cfg)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# job name -> run(cfg, store, logger, check_only=False); check_only validates (raising ConfigError) only.
JOBS: dict[str, Callable[..., object]] = {
    "speed": run_speed,
    "probe": run_probe_job,
    "retrieval": run_retrieval_job,
    "distributed": run_distributed,
    "targets": run_targets_job,
}


def check(cfg: DictConfig) -> list[Callable[..., object]]:
    """The job functions of cfg.jobs, after each has validated cfg."""
    check_known_keys(cfg)
    if len(cfg.jobs) == 0:
        raise ConfigError(f"jobs is empty; choose some of: {', '.join(JOBS)}")
    unknown = [name for name in cfg.jobs if name not in JOBS]
    if unknown:
        raise ConfigError(f"jobs={list(cfg.jobs)}: {unknown} not known; choose from: {', '.join(JOBS)}")
    if not cfg.name or cfg.name in (".", "..") or "/" in cfg.name or "\\" in cfg.name:
        raise ConfigError(f"name={cfg.name!r} must be a plain folder name (results go to paths.results_dir/name/); "
                          f"to write elsewhere set paths.results_dir or paths.root_dir")
    jobs = [JOBS[name] for name in cfg.jobs]
    for job in jobs:
        job(cfg, check_only=True)
    try:
        ResultsStore(cfg.paths.results_dir, cfg.name).check_writable()
    except PermissionError as error:
        raise ConfigError(f"paths.results_dir={cfg.paths.results_dir}: {error}") from None
    _check_logger(cfg)
    return jobs


def _check_logger(cfg: DictConfig) -> None:
    """Build the logger once now (its constructor does no I/O) so a bad logger.* value is an error up front."""
    try:
        instantiate(cfg.logger)
    except Exception as error:  # noqa: BLE001 - Hydra wraps the constructor's error; report the constructor's own
        cause = error.__cause__ or error
        raise ConfigError(f"logger: {' '.join(str(cause).split())}") from None


def _hydra_job() -> tuple[str, int | None]:
    """(the job's override string, its number in a multirun or None)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        job = HydraConfig.get().job
        return job.override_dirname, (job.get("num") if "num" in job else None)
    return "", None


OPENED: list[ResultsStore] = []  # the stores of this process's jobs: what a stopped run says it saved


def saved_rows() -> str:
    """What the jobs of this process have written, for the line a stopped run ends with."""
    written = [store for store in OPENED if store.rows_written]
    if not written:
        return "no rows were written yet"
    return "; ".join(f"{store.rows_written} rows saved in {store.part_path}" for store in written)


def run(cfg: DictConfig, jobs: list[Callable[..., object]] | None = None) -> ResultsStore:
    """Run cfg.jobs into one store part, each job tracked as its own logger run; then report from the whole store."""
    import pandas as pd
    from rich.console import Console

    from .report.tables import headline_metrics, print_job_summary

    jobs = jobs if jobs is not None else check(cfg)
    overrides, job_num = _hydra_job()
    job_id = f"{default_job_id()}-{'' if job_num is None else f'j{job_num}-'}{uuid.uuid4().hex[:6]}"
    store = ResultsStore(cfg.paths.results_dir, cfg.name, job_id=job_id)
    OPENED.append(store)
    # Under torchrun every rank runs this; rank 0 alone tracks the run and writes the merged results and report.
    lead = int(os.environ.get("RANK", "0")) == 0
    logger = instantiate(cfg.logger) if lead else NullLogger()
    console = Console(stderr=True)
    config = {**OmegaConf.to_container(cfg, resolve=True), "hydra_overrides": overrides, "job_id": job_id}
    suffix = "" if job_num is None else f"#{job_num}"
    logged: list[str] = []  # jobs that wrote rows here, so logged a rows artifact for the report run to use
    for name, job in zip(cfg.jobs, jobs):
        logger.start(config, cfg.name, name, f"{cfg.name}/{name}{suffix}")
        try:
            rows = job(cfg, store=store, logger=logger)
            if isinstance(rows, pd.DataFrame) and not rows.empty:
                if lead:
                    print_job_summary(rows, console)
                logger.log_rows(rows, name)
                logger.log_summary(headline_metrics(rows))
                logged.append(name)
        finally:
            logger.finish()
    if not lead:
        return store
    frame = store.consolidate()
    logger.start(config, cfg.name, "report", f"{cfg.name}/report{suffix}")
    try:
        logger.use_artifacts([rows_artifact(cfg.name, name) for name in logged])
        logger.log_summary(headline_metrics(frame))
        logger.log_files([store.dir / "results.parquet", store.dir / "results.csv"], name=f"results-{cfg.name}",
                         kind="results")
        if cfg.report and not frame.empty:
            from .report import write_report

            report = write_report(store.dir, cfg.name)
            logger.log_images({p.stem: p for p in sorted((store.dir / "plots").glob("*.png"))})
            logger.log_files([report, report.with_suffix(".html"), store.dir / "tables", store.dir / "plots"],
                             name=f"report-{cfg.name}", kind="report")
            console.print(f"[bold]Report:[/bold] {report}  (and {report.with_suffix('.html').name})")
    finally:
        logger.finish()
    return store
