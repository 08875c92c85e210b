"""The speed job: check the config, expand the sweep, measure each point in a worker, store tidy rows.

    run_speed(cfg)                    # what `shootout job=speed ...` runs
    run_speed(cfg, check_only=True)   # validation only: raises ConfigError before anything runs

Points are planned variant -> dtype -> causal -> pass -> seq_len ascending (a "ladder" per variant and setting)
and run as comparison groups: every variant at one (dtype, causal, pass, N), the groups in ascending N, so an
out-of-memory or timeout at some N can end that ladder (`benchmark.skip_larger_after_failure`) with `skipped` rows
instead of more failures, and the variants of one N are timed in interleaved rounds (SpeedRun.measure_group).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

import attention_impls
from attention_impls.registry import get_backend_class

from .. import environment
from ..config import ConfigError
from ..schema import FINAL_STATUSES
from ..store import ResultsStore, config_hash
from .flops import point_flops
from .measure import DTYPES, Point, latency_columns
from .plan import (Variant, check_benchmark, check_device, check_hook, check_positive, check_seconds, check_seq_lens,
                   check_shapes, grid, point_columns, read_variants)
from .worker import Worker

FAILED = ("oom", "timeout")  # statuses that end a seq_len ladder
REFERENCE_MAX_SEQ_LEN = 8192  # the float64 references materialise (batch, heads, N, N) scores


@dataclass
class SpeedPlan:
    variants: list[Variant]
    device: str
    points: list[Point]  # the grid (empty when the max_seq_len search runs instead)
    search: bool


def plan_speed(cfg: DictConfig) -> SpeedPlan:
    """Validate everything a speed run needs and expand its points; raises ConfigError on bad input."""
    bench = cfg.benchmark
    device = check_device(bench.device)
    check_benchmark(bench, correctness=bench.correctness.enabled)
    limit_gb = bench.worker_memory_limit_gb
    if limit_gb is not None and not (math.isfinite(limit_gb) and 0 < limit_gb <= 2**20):
        raise ConfigError(f"benchmark.worker_memory_limit_gb={limit_gb} must be a number of GiB in (0, 1048576] "
                          f"(or null: no limit)")
    if bench.isolation not in ("process", "inline"):
        raise ConfigError(f"benchmark.isolation={bench.isolation!r} must be one of: process, inline")
    search = bench.max_seq_len.enabled
    if search:
        limits = bench.max_seq_len
        for name in ("start", "resolution"):
            check_positive(f"benchmark.max_seq_len.{name}", limits[name])
        if limits.limit < limits.start:
            raise ConfigError(f"benchmark.max_seq_len.limit={limits.limit} must be >= start={limits.start}")
        check_seconds("benchmark.max_seq_len.latency_budget_s", limits.latency_budget_s)
        seq_lens = [limits.start]
    else:
        seq_lens = check_seq_lens(list(bench.seq_lens))
    if bench.correctness.enabled:
        check_positive("benchmark.correctness.seq_len", bench.correctness.seq_len)
        check_positive("benchmark.correctness.batch", bench.correctness.batch)
    check_positive("benchmark.ceiling.size", bench.ceiling.size)
    check_seconds("benchmark.ceiling.min_run_time_s", bench.ceiling.min_run_time_s)
    if bench.fault_hook:
        check_hook("benchmark.fault_hook", bench.fault_hook)

    variants = read_variants(cfg)
    for variant in variants:
        _check_backend_here(variant, device)
        if variant.backend == "reference" and max(seq_lens) > REFERENCE_MAX_SEQ_LEN:
            raise ConfigError(f"{variant.name}: seq_len={max(seq_lens)} is too large for the float64 reference, "
                              f"which materialises N x N scores (at most {REFERENCE_MAX_SEQ_LEN})")
        check_shapes(variant, seq_lens, bench.heads)

    gate = OmegaConf.to_container(bench.correctness, resolve=True) if bench.correctness.enabled else {}
    points = [Point(variant=variant.name, mechanism=variant.mechanism, backend=variant.backend,
                    params=variant.params, batch=bench.batch, seq_len=seq_len, heads=bench.heads,
                    head_dim=bench.head_dim, dtype=dtype, causal=causal, pass_name=pass_name, device=device,
                    seed=cfg.seed, warmup=bench.warmup, min_run_time_s=bench.min_run_time_s,
                    min_repeats=bench.min_repeats, threads=bench.threads, gate=gate, fault_hook=bench.fault_hook)
              for variant, dtype, causal, pass_name, seq_len in grid(variants, bench, seq_lens)]
    return SpeedPlan(variants=variants, device=device, points=points, search=search)


def _check_backend_here(variant: Variant, device: str) -> None:
    """A backend that cannot run on this device at all is bad input."""
    if variant.backend is None:
        return
    cls = get_backend_class(variant.mechanism, variant.backend)
    device_type = torch.device(device).type
    reasons = [r for r in [cls.unavailable_reason()] if r]
    if device_type not in cls.devices:
        reasons.append(f"device={device_type} (supported: {', '.join(sorted(cls.devices))})")
    if reasons:
        runnable = [i.name for i in attention_impls.backends(variant.mechanism) if i.available]
        raise ConfigError(f"{variant.name}: {variant.mechanism} backend {variant.backend!r} is unavailable here: "
                          f"{'; '.join(reasons)}. Available: {', '.join(runnable)}")


# ---- running -------------------------------------------------------------------------------------------------

class SpeedRun:
    """Runs points and turns each outcome into one row; owns the worker, the ceiling cache and the store."""

    def __init__(self, cfg: DictConfig, plan: SpeedPlan, store: ResultsStore, logger: Any) -> None:
        self.cfg, self.plan, self.store, self.logger = cfg, plan, store, logger
        bench = cfg.benchmark
        self.worker = Worker(bench.isolation, bench.worker_memory_limit_gb)
        self.config_json = json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True, default=str)
        self.env = environment.fingerprint(plan.device)
        self.recorded: dict[str, dict[str, Any]] = {}
        self.recorded_skips: dict[str, dict[str, Any]] = {}  # the latest skipped row of each point
        if cfg.resume:
            frame = store.read_resumable()
            if not frame.empty:
                done = frame[frame["status"].isin(FINAL_STATUSES)]
                self.recorded = {row["config_hash"]: row for row in done.to_dict("records")}
                latest = frame.drop_duplicates("config_hash", keep="last")
                self.recorded_skips = {row["config_hash"]: row for row in latest.to_dict("records")
                                       if row["status"] == "skipped"}
        self.rows: list[dict[str, Any]] = []  # recorded by this job
        self.table_rows: list[dict[str, Any]] = []  # every point of this job, resumed ones too, in order
        self.skipped_resume = 0

    def ceiling(self, dtype: str) -> dict[str, Any]:
        """The matmul ceiling measured now: next to the points it is compared with, never minutes apart."""
        bench = self.cfg.benchmark
        result = self.worker.run("matmul_ceiling", dict(
            device=self.plan.device, dtype=dtype, size=bench.ceiling.size,
            min_run_time_s=bench.ceiling.min_run_time_s, threads=bench.threads), timeout_s=bench.timeout_s)
        if "status" in result:
            result = {"matmul_peak_flops_per_s": math.nan,
                      "matmul_method": f"not measured: {result['status']}: {result['reason']}"}
        return result

    def measure(self, point: Point) -> dict[str, Any]:
        return self.measure_group([point])[0]

    def measure_group(self, points: list[Point]) -> list[dict[str, Any]]:
        """The rows of points that differ only in their variant (one N, dtype, causal mode and pass).

        Resumed and unsupported points are rows at once. The rest are timed in `benchmark.rounds` interleaved
        rounds, A B C A B C ...: the first round is the full measure_point (gate, first call, memory, timing), the
        later ones time_point; each round gets 1/rounds of min_run_time_s. A row's latency statistics come from
        the samples of all its rounds, and its speed-up over dense is the median of the per-round ratios to the
        group's dense point (with their range), so a machine that slows down between rounds slows both sides of
        each ratio alike.
        """
        bench = self.cfg.benchmark
        rounds = bench.rounds
        per_round = dict(min_run_time_s=bench.min_run_time_s / rounds,
                         min_repeats=max(1, math.ceil(bench.min_repeats / rounds)))
        outcome: dict[int, tuple[str, str | None, dict[str, Any]]] = {}  # index -> (hash, backend, columns)
        live: list[int] = []
        for i, point in enumerate(points):
            point_hash = config_hash(point.identity())
            if point_hash in self.recorded:
                self.skipped_resume += 1
                self.table_rows.append(dict(self.recorded[point_hash], resumed=True))
                continue
            try:
                backend = attention_impls.build(point.mechanism, point.backend, **point.params).resolve(
                    torch.device(point.device), DTYPES[point.dtype], point.causal, point.backward, point.head_dim,
                    point.seq_len, batch_heads=point.batch * point.heads,
                    query_len=1 if point.pass_name == "decode" else point.seq_len)
                outcome[i] = (point_hash, backend, {})
                live.append(i)
            except RuntimeError as error:
                outcome[i] = (point_hash, point.backend, {"status": "unsupported",
                                                          "reason": " ".join(str(error).split())})
        round_medians: dict[int, list[float]] = {i: [] for i in live}
        if live:
            ceiling = self.ceiling(points[live[0]].dtype)
        for round_index in range(rounds):
            for i in [i for i in live if outcome[i][2].get("status", "ok") == "ok"]:
                timed = replace(points[i], **per_round)
                function = "measure_point" if round_index == 0 else "time_point"
                columns = self.worker.run(function, {"point": timed}, timeout_s=bench.timeout_s)
                if bench.fresh_worker_per_point:
                    self.worker.close()
                merged = outcome[i][2]
                if round_index == 0:
                    merged.update(columns)
                elif columns.get("status") != "ok":
                    merged.update(status=columns["status"], reason=f"round {round_index + 1} of {rounds}: "
                                                                   f"{columns['reason']}")
                else:
                    merged["latency_times_s"] = list(merged["latency_times_s"]) + list(columns["latency_times_s"])
                if merged.get("status") == "ok":
                    round_medians[i].append(columns["latency_median_s"])
        for i in live:
            columns = outcome[i][2]
            columns.update(ceiling)
            if columns.get("status") == "ok":
                columns.update(latency_columns(columns["latency_times_s"], columns["calls_per_sample"]))
                columns.update(rounds=rounds, round_medians_s=json.dumps(round_medians[i]))
        self._round_speedups(points, live, outcome, round_medians)
        rows = []
        for i, point in enumerate(points):
            if i in outcome:
                point_hash, backend, columns = outcome[i]
                rows.append(self._record(point, point_hash, backend, columns))
            else:
                rows.append(self.recorded[config_hash(point.identity())])
        return rows

    @staticmethod
    def _round_speedups(points: list[Point], live: list[int], outcome: dict, round_medians: dict) -> None:
        """speedup_round_*: per round, the fastest dense point's median over this point's; their median and range."""
        ok = [i for i in live if outcome[i][2].get("status") == "ok" and round_medians[i]]
        dense = [i for i in ok if points[i].mechanism == "dense"]
        if not dense:
            return
        reference = min(dense, key=lambda i: sorted(round_medians[i])[len(round_medians[i]) // 2])
        for i in ok:
            if i == reference:
                continue
            ratios = sorted(d / v for d, v in zip(round_medians[reference], round_medians[i]))
            outcome[i][2].update(speedup_round_median=float(np.median(ratios)), speedup_round_min=ratios[0],
                                 speedup_round_max=ratios[-1], speedup_reference=points[reference].variant)

    def skip(self, point: Point, reason: str) -> dict[str, Any]:
        point_hash = config_hash(point.identity())
        recorded = self.recorded_skips.get(point_hash)
        if recorded is not None and recorded["reason"] == reason:  # resume: the same skip is not recorded twice
            self.skipped_resume += 1
            self.table_rows.append(dict(recorded, resumed=True))
            return recorded
        return self._record(point, point_hash, point.backend, {"status": "skipped", "reason": reason})

    def _record(self, point: Point, point_hash: str, backend: str | None, columns: dict[str, Any]) -> dict:
        backend = columns.pop("backend", None) or backend
        row: dict[str, Any] = {**point_columns("speed", point), "backend": backend}
        row.update({column: None for column in MEASURED_COLUMNS})
        row.update(columns)
        if backend is not None and backend in attention_impls.registry.REGISTRY[point.mechanism]:
            row.update(point_flops(point.mechanism, backend, point.params, point.batch, point.seq_len,
                                   point.heads, point.head_dim, point.causal, point.backward, point.device,
                                   decode=point.pass_name == "decode"))
        median = row.get("latency_median_s")
        if row["status"] == "ok" and median:
            # a decoding step makes one token per sequence
            tokens = point.batch * (1 if point.pass_name == "decode" else point.seq_len)
            row["tokens_per_s"] = tokens / median
            row["flops_per_s"] = row["useful_flops"] / median
            row["executed_flops_per_s"] = row["executed_flops"] / median  # NaN where not modelled
            peak = row.get("matmul_peak_flops_per_s")
            row["fraction_of_peak"] = row["flops_per_s"] / peak if peak and not math.isnan(peak) else math.nan
        row.update(config=self.config_json, config_hash=point_hash, **self.env)
        row.update(experiment=self.store.experiment, job_id=self.store.job_id)
        self.store.append(row)
        self.rows.append(row)
        self.table_rows.append(row)
        if row["status"] == "ok":
            # One curve per variant and setting, against seq_len (batch, heads and head_dim are one per job).
            curve = f"speed/{point.variant}/{point.pass_name}/{'causal' if point.causal else 'full'}/{point.dtype}"
            self.logger.log_curve(curve, "seq_len", point.seq_len,
                                  {key: row[key] for key in LOGGED_METRICS if row.get(key) is not None})
        return row


# Columns every speed row has (None/NaN where a point ended early), besides the point's own and env_*.
MEASURED_COLUMNS = (
    "status", "reason", "latency_median_s", "latency_iqr_s", "latency_min_s", "latency_mean_s", "latency_count",
    "calls_per_sample", "latency_times_s", "noisy", "timing_method", "tokens_per_s", "peak_mem_bytes",
    "mem_method", "useful_flops", "executed_flops", "flops_per_s", "executed_flops_per_s",
    "matmul_peak_flops_per_s", "matmul_method", "fraction_of_peak", "compile_s", "first_call_s", "max_abs_err",
    "max_abs_grad_err", "gate_seq_len", "threads", "rounds", "round_medians_s", "speedup_round_median",
    "speedup_round_min", "speedup_round_max", "speedup_reference",
)
LOGGED_METRICS = ("latency_median_s", "latency_iqr_s", "tokens_per_s", "peak_mem_bytes", "flops_per_s",
                  "fraction_of_peak")


def _ladder_key(point: Point) -> tuple:
    return (point.variant, point.dtype, point.causal, point.pass_name)


def _describe(point: Point) -> str:
    causal = " causal" if point.causal else ""
    return f"{point.variant} {point.pass_name} {point.dtype}{causal} N={point.seq_len}"


def _fits(row: dict[str, Any], latency_budget_s: float) -> bool:
    return row["status"] == "ok" and row["latency_median_s"] <= latency_budget_s


def comparison_groups(points: list[Point]) -> list[list[Point]]:
    """The points of each (dtype, causal, pass, N), in plan order of their setting, then ascending N."""
    groups: dict[tuple, list[Point]] = {}
    settings: dict[tuple, int] = {}
    for point in points:
        setting = (point.dtype, point.causal, point.pass_name)
        settings.setdefault(setting, len(settings))
        groups.setdefault((*setting, point.seq_len), []).append(point)
    return [groups[key] for key in sorted(groups, key=lambda key: (settings[key[:3]], key[3]))]


def run_grid(run: SpeedRun, progress) -> None:
    failed_at: dict[tuple, dict[str, Any]] = {}
    task = progress.add_task("", total=len(run.plan.points))
    for group in comparison_groups(run.plan.points):
        first = group[0]
        progress.update(task, description=f"{len(group)} variant(s) {first.pass_name} {first.dtype}"
                                          f"{' causal' if first.causal else ''} N={first.seq_len}")
        to_measure = []
        for point in group:
            key = _ladder_key(point)
            if run.cfg.benchmark.skip_larger_after_failure and key in failed_at:
                failed = failed_at[key]
                run.skip(point, f"skipped: seq_len={failed['seq_len']} already failed with status "
                                f"{failed['status']} (benchmark.skip_larger_after_failure)")
                progress.advance(task)
            else:
                to_measure.append(point)
        for point, row in zip(to_measure, run.measure_group(to_measure)):
            if row["status"] in FAILED:
                failed_at[_ladder_key(point)] = row
            progress.advance(task)


def run_search(run: SpeedRun, progress) -> None:
    """Per ladder: double N until a point does not fit or the limit is reached, then bisect the gap."""
    limits = run.cfg.benchmark.max_seq_len
    ladders: dict[tuple, Point] = {}
    for point in run.plan.points:
        ladders.setdefault(_ladder_key(point), point)
    task = progress.add_task("", total=None)
    for key, base in ladders.items():
        probes: list[tuple[int, str]] = []
        latencies: dict[int, float | None] = {}

        def fits(seq_len: int) -> bool:
            point = replace(base, seq_len=seq_len)
            progress.update(task, description=f"max_seq_len search: {_describe(point)}")
            row = run.measure(point)
            progress.advance(task)
            # An ok point over the latency budget does not fit either: the budget, not a failure, limited it.
            over_budget = row["status"] == "ok" and not _fits(row, limits.latency_budget_s)
            probes.append((seq_len, "latency_budget" if over_budget else row["status"]))
            latencies[seq_len] = row.get("latency_median_s")
            return _fits(row, limits.latency_budget_s)

        best, worst, seq_len = 0, None, limits.start
        while seq_len <= limits.limit:
            if not fits(seq_len):
                worst = seq_len
                break
            best, seq_len = seq_len, seq_len * 2
        while worst is not None and worst - best > limits.resolution:
            middle = (best + worst) // 2 // limits.resolution * limits.resolution
            if middle <= best:
                break
            if fits(middle):
                best = middle
            else:
                worst = middle
        limited_by = "limit" if worst is None else dict(probes)[worst]
        if worst is None:
            reason = f"every N up to benchmark.max_seq_len.limit={limits.limit} fits"
        else:
            fitted = f"largest fitting N={best}" if best else "no N fits"
            reason = (f"{fitted}; N={worst} took {latencies[worst]:.3g} s, over the {limits.latency_budget_s:g} s "
                      f"latency budget" if limited_by == "latency_budget" else
                      f"{fitted}; N={worst} ended with status {limited_by}")
        identity = {"kind": "max_seq_len", **replace(base, seq_len=0).identity(),
                    "search": OmegaConf.to_container(limits, resolve=True)}
        row = {
            **{key: value for key, value in point_columns("max_seq_len", base).items() if key != "seq_len"},
            "status": "ok", "max_seq_len": best,
            "first_failing_seq_len": worst, "limited_by": limited_by, "probes": [list(p) for p in probes],
            "reason": reason,
            "config": run.config_json, "config_hash": config_hash(identity), **run.env,
            "experiment": run.store.experiment, "job_id": run.store.job_id,
        }
        run.store.append(row)
        run.rows.append(row)


def run_speed(cfg: DictConfig, store: ResultsStore | None = None, logger: Any = None,
              check_only: bool = False) -> pd.DataFrame | None:
    """Measure every point of the config into `store`; returns this job's rows (None with check_only).

    harness.run owns the store and the logger (one per Hydra job) and calls this between start and finish.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.progress import TimeRemainingColumn

    plan = plan_speed(cfg)
    if check_only:
        return None
    console = Console(stderr=True)
    if not console.is_terminal:
        console.width = max(console.width, 200)  # logs and CI: do not squeeze the summary into 80 columns
    run = None
    started = time.perf_counter()
    try:
        run = SpeedRun(cfg, plan, store, logger)
        columns = [TextColumn("[bold]point"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.description}"),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
        with Progress(*columns, console=console, transient=False) as progress:
            (run_search if plan.search else run_grid)(run, progress)
        job_rows = pd.DataFrame(run.rows)
        console.print(summary_table(pd.DataFrame(run.table_rows), len(job_rows), run.skipped_resume, store,
                                    time.perf_counter() - started))
        return job_rows
    finally:
        if run is not None:
            run.worker.close(kill=sys.exc_info()[0] is not None)  # stopped (SIGTERM, Ctrl-C): do not wait for it


def summary_table(rows: pd.DataFrame, recorded: int, skipped_resume: int, store: ResultsStore, elapsed_s: float):
    """A rich table of this job's points, resumed ones included: the numbers a reader checks first."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{store.experiment}: {recorded} rows in {elapsed_s:.1f} s "
                        f"({skipped_resume} already recorded, resumed) -> {store.dir}")
    for header in ("variant", "backend", "pass", "dtype", "causal", "N", "status", "median ms", "IQR %",
                   "tokens/s", "GFLOP/s", "% peak", "peak MiB", "note"):
        table.add_column(header, justify="left" if header in ("variant", "backend", "pass", "status", "note")
                         else "right")
    speed = rows[rows["kind"] == "speed"] if not rows.empty else rows

    def number(value, scale=1.0, digits=1) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return f"{value * scale:,.{digits}f}"

    for row in speed.to_dict("records"):
        median = row.get("latency_median_s")
        iqr = row.get("latency_iqr_s")
        table.add_row(
            row["variant"], str(row["backend"]), row["pass"], row["dtype"], str(row["causal"]), str(row["seq_len"]),
            row["status"], number(median, 1e3, 3),
            number(iqr / median if median and iqr is not None and not math.isnan(iqr) else None, 100.0, 1),
            number(row.get("tokens_per_s"), 1.0, 0), number(row.get("flops_per_s"), 1e-9, 1),
            number(row.get("fraction_of_peak"), 100.0, 1), number(row.get("peak_mem_bytes"), 2.0**-20, 1),
            ("resumed " if row.get("resumed") is True else "") + ("noisy " if row.get("noisy") else "")
            + ("above the GEMM ceiling " if (row.get("fraction_of_peak") or 0) > 1 else "")
            + escape(row["reason"] if isinstance(row.get("reason"), str) else ""))  # in full: rich wraps the column, it never cuts a reason
    if not rows.empty and "max_seq_len" in set(rows["kind"]):
        for row in rows[rows["kind"] == "max_seq_len"].to_dict("records"):
            table.add_row(row["variant"], "", row["pass"], row["dtype"], str(row["causal"]),
                          f"max {row['max_seq_len']}", f"limited by {row['limited_by']}", "", "", "", "", "", "",
                          escape(row["reason"]))
    return table
