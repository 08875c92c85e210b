"""Summary tables from the stored rows: what a reader compares, one row per variant and sequence length.

Every function takes the store's tidy frame (all kinds mixed, any missing optional column tolerated) and
returns a new frame with documented columns; `to_markdown` and `print_summary` only format.
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable

import numpy as np
import pandas as pd

from ..store import STATUSES
from .palette import add_variant_column, variant_order

# Columns of speed_summary(), in order (README "Report tables").
SPEED_SUMMARY_COLUMNS = (
    "variant", "mechanism", "backend", "params", "pass", "dtype", "causal", "device", "batch", "heads",
    "head_dim", "seq_len", "status", "latency_median_ms", "latency_iqr_ms", "latency_q1_ms", "latency_q3_ms", "noisy",
    "tokens_per_s", "peak_mem_mib", "useful_gflops_per_s", "fraction_of_peak", "above_ceiling", "speedup_vs_dense",
    "speedup_round_min", "speedup_round_max", "rounds", "reason",
)
# What makes two speed points comparable apart from the variant and N: speed-up over dense is taken within it.
SPEED_SETTING_COLUMNS = ("pass", "dtype", "causal", "device", "batch", "heads", "head_dim")

# Distance buckets are inclusive on both ends, [distance_lo, distance_hi], as harness.retrieval writes them.
# Accuracy cells are the mean over the seeds of the learning rate the sweep kept, with a 95 % t interval.
RETRIEVAL_SUMMARY_COLUMNS = (
    "task", "variant", "name", "mechanism", "backend", "params", "seq_len", "distance_lo", "distance_hi", "bucket",
    "accuracy", "accuracy_ci_lo", "accuracy_ci_hi", "binomial_ci_lo", "binomial_ci_hi", "seeds", "reachable_fraction",
    "chance", "count",
    "theoretical_reach", "status",
)
# One row per variant and evaluated N: what separates the pattern from the training (retrieval_headline).
RETRIEVAL_HEADLINE_COLUMNS = (
    "task", "variant", "seq_len", "lr", "seeds", "converged", "within_share", "within_reach", "within_ci_lo",
    "within_ci_hi", "split_share", "split_reach", "split_ci_lo", "split_ci_hi", "beyond_share", "beyond_reach",
    "beyond_ci_lo", "beyond_ci_hi", "chance", "accuracy", "accuracy_ci_lo", "accuracy_ci_hi", "ceiling",
    "of_ceiling", "verdict",
)
RETRIEVAL_TRAINING_COLUMNS = (
    "task", "variant", "name", "train_seq_len", "layers", "d_model", "heads", "lr", "lr_kept", "seed",
    "train_steps", "train_sequences", "train_stop", "converged", "train_seconds", "train_steps_per_s",
    "train_final_loss", "val_accuracy", "val_ceiling", "chance", "current", "status", "reason",
)
# Within reach, a variant "learnt what its pattern reaches" at this share of its ceiling (1.0 there); beyond
# reach, "at chance" within this much of chance.
LEARNT_SHARE = 0.90
CHANCE_TOLERANCE = 0.05
PASSKEY_SUMMARY_COLUMNS = ("variant", "context_len", "depth", "distance", "accuracy", "reachable_fraction", "count",
                           "status")
PROBE_SUMMARY_COLUMNS = (
    "variant", "name", "mechanism", "backend", "params", "seq_len", "heads", "causal", "direction", "distance_lo",
    "distance_hi", "bucket", "count", "accuracy", "reachable_fraction", "mismatches", "theoretical_reach", "status",
    "reason",
)
# One row per distributed point (all ranks together): a step takes as long as its slowest rank.
DISTRIBUTED_SETTING_COLUMNS = ("world_size", "pass", "dtype", "causal", "device", "batch", "heads", "head_dim")
DISTRIBUTED_SUMMARY_COLUMNS = (
    "variant", "mechanism", "params", *DISTRIBUTED_SETTING_COLUMNS, "dist_backend", "kernel", "seq_len", "ranks",
    "status", "latency_max_ms", "latency_min_ms", "slowest_rank", "tokens_per_s", "bytes_sent_max",
    "predicted_bytes_sent_max", "bytes_sent_total", "predicted_bytes_sent_total", "bytes_match", "peak_mem_max_mib",
    "max_abs_err", "reason",
)
PERF_TARGET_COLUMNS = ("target", "measured", "comparison", "limit", "passed", "rounds", "issue_target", "detail",
                       "device", "dtype", "smoke", "runs", "timestamp")
_PERF_ROUND_COLUMNS = ("round_min", "round_max", "rounds_passed", "round_count")
FAILURE_COLUMNS = ("kind", "variant", "task", "pass", "seq_len", "rank", "status", "reason")

MIB = float(1 << 20)


def _column(frame: pd.DataFrame, name: str, default: Any = np.nan) -> pd.Series:
    return frame[name] if name in frame else pd.Series([default] * len(frame), index=frame.index, dtype=object
                                                       if default is None else None)


def _latest_rows(rows: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Drop rows superseded by a rerun of the same point, keeping the newest.

    speed: one row per config_hash. distributed: one row per (config_hash, rank); the ranks of one point share
    its hash. probe, retrieval and the rest: one call writes all rows of a config_hash (one per bucket, depth or
    N) in one job, so the rows of the newest job that wrote that hash are the answer.
    """
    if "config_hash" not in rows:
        return rows
    if "timestamp" in rows:
        rows = rows.sort_values("timestamp", kind="stable")
    if kind == "speed":
        return rows.drop_duplicates("config_hash", keep="last")
    if kind == "distributed" and "rank" in rows:
        return rows.drop_duplicates(["config_hash", "rank"], keep="last")
    if "job_id" not in rows or rows["job_id"].isna().all():
        return rows
    newest_job = rows.groupby("config_hash", dropna=False)["job_id"].transform("last")
    return rows[rows["job_id"] == newest_job]


def rows_of_kind(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Rows of one kind with a `variant` column; a rerun point keeps only its newest rows (`_latest_rows`).

    `variant` is the report's label (palette.variant_label). The speed sweep's own `variant` column (the config
    name, e.g. "dilated_16_32_64") moves to `name`, which is what probe and retrieval rows call it.
    """
    if frame.empty or "kind" not in frame:
        return pd.DataFrame()
    rows = frame[frame["kind"] == kind]
    if rows.empty:
        return pd.DataFrame()
    rows = _latest_rows(rows, kind)
    if "variant" in rows:
        rows = rows.assign(name=rows["name"].fillna(rows["variant"]) if "name" in rows else rows["variant"])
    return add_variant_column(rows).reset_index(drop=True)


def _sort_by_variant(out: pd.DataFrame, rows: pd.DataFrame, first: list[str], then: list[str]) -> pd.DataFrame:
    """Sort by `first`, then variant in palette order (dense, sliding window, dilated), then `then`."""
    rank = {label: i for i, label in enumerate(variant_order(rows))}
    keyed = out.assign(_rank=out["variant"].map(rank))
    columns = [c for c in (*first, "_rank", *then) if c in keyed and keyed[c].notna().any()]
    return keyed.sort_values(columns, kind="stable", na_position="first").drop(columns="_rank").reset_index(drop=True)


def _numeric(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce")


def _quartiles(samples: Any) -> tuple[float, float]:
    """(Q1, Q3) in seconds of a row's raw latency samples (a JSON list or a list); NaN where none were kept."""
    if isinstance(samples, str):
        try:
            samples = json.loads(samples)
        except ValueError:
            return math.nan, math.nan
    if samples is None or isinstance(samples, float) or len(samples) == 0:
        return math.nan, math.nan
    q1, q3 = np.percentile(np.asarray(samples, dtype=float), [25, 75])
    return float(q1), float(q3)


def speed_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per speed point: latency, throughput, memory, FLOP/s, share of the matmul ceiling, speed-up.

    speedup_vs_dense (> 1: faster than dense): where the runner timed the variants of one N in interleaved
    rounds, the median over rounds of (fastest dense point's latency in that round / this one's), with the
    rounds' range in speedup_round_min/max; for rows without rounds, the fastest dense median at the same setting
    and N over this median (NaN where no dense point exists to compare with).
    """
    rows = rows_of_kind(frame, "speed")
    if rows.empty:
        return pd.DataFrame(columns=list(SPEED_SUMMARY_COLUMNS))
    out = pd.DataFrame(index=rows.index)
    for name in ("variant", "mechanism", "backend", "params", *SPEED_SETTING_COLUMNS, "seq_len", "status"):
        out[name] = _column(rows, name, None)
    ok = rows["status"] == "ok"
    latency = _numeric(_column(rows, "latency_median_s")).where(ok)
    out["latency_median_ms"] = latency * 1e3
    out["latency_iqr_ms"] = _numeric(_column(rows, "latency_iqr_s")).where(ok) * 1e3
    quartiles = [_quartiles(samples) for samples in _column(rows, "latency_times_s", None)]
    out["latency_q1_ms"] = pd.Series([q[0] * 1e3 for q in quartiles], index=rows.index).where(ok)
    out["latency_q3_ms"] = pd.Series([q[1] * 1e3 for q in quartiles], index=rows.index).where(ok)
    # The runner's flag (IQR > 10 % of the median, torch.utils.benchmark's rule); None where it was not recorded.
    out["noisy"] = _column(rows, "noisy", None).where(ok, None)
    out["tokens_per_s"] = _numeric(_column(rows, "tokens_per_s")).where(ok)
    out["peak_mem_mib"] = _numeric(_column(rows, "peak_mem_bytes")).where(ok) / MIB
    out["useful_gflops_per_s"] = _numeric(_column(rows, "flops_per_s")).where(ok) / 1e9
    out["fraction_of_peak"] = _numeric(_column(rows, "fraction_of_peak")).where(ok)
    # Above 1 the ceiling was measured at a quieter moment than the point (or is not this kernel's bound): flagged,
    # never silently shown as more than the machine's matmul rate.
    out["above_ceiling"] = out["fraction_of_peak"] > 1.0
    out["reason"] = _column(rows, "reason", "").fillna("")

    keys = [c for c in (*SPEED_SETTING_COLUMNS, "seq_len") if out[c].notna().any()]
    dense = out[(out["mechanism"] == "dense") & out["latency_median_ms"].notna()]
    if keys and not dense.empty:
        best = dense.groupby(keys, dropna=False)["latency_median_ms"].min().rename("_dense_ms").reset_index()
        merged = out[keys].reset_index().merge(best, on=keys, how="left").set_index("index")
        out["speedup_vs_dense"] = merged["_dense_ms"] / out["latency_median_ms"]
    else:
        out["speedup_vs_dense"] = np.nan
    rounds = _numeric(_column(rows, "speedup_round_median")).where(ok)
    out["speedup_vs_dense"] = rounds.fillna(out["speedup_vs_dense"])
    out["speedup_round_min"] = _numeric(_column(rows, "speedup_round_min")).where(ok)
    out["speedup_round_max"] = _numeric(_column(rows, "speedup_round_max")).where(ok)
    out["rounds"] = _numeric(_column(rows, "rounds")).where(ok)
    return _sort_by_variant(out, rows, ["pass"], ["seq_len"])[list(SPEED_SUMMARY_COLUMNS)]


def _weighted_mean(group: pd.DataFrame, column: str) -> tuple[float, float]:
    """Count-weighted mean of `column` over the group's ok rows, and the total count behind it."""
    ok = group[group["status"] == "ok"]
    values = _numeric(_column(ok, column))
    weights = _numeric(ok["count"]).fillna(1.0) if "count" in ok else pd.Series(1.0, index=ok.index)
    valid = values.notna()
    if not valid.any():
        return math.nan, 0.0
    total = float(weights[valid].sum())
    mean = float((values[valid] * weights[valid]).sum() / total) if total > 0 else float(values[valid].mean())
    return mean, total


def _weighted_accuracy(group: pd.DataFrame) -> tuple[float, float]:
    return _weighted_mean(group, "accuracy")


def _status_of(statuses: Iterable[str]) -> str:
    """'ok' when every row is ok, else the distinct statuses, e.g. 'ok+oom'."""
    distinct = sorted(set(statuses), key=lambda s: (s != "ok", s))
    return "+".join(distinct)


def _first(series: pd.Series) -> Any:
    """The first non-missing value (a column constant within a group), NaN when there is none."""
    values = series.dropna()
    return values.iloc[0] if len(values) else math.nan


def _reasons(series: pd.Series) -> str:
    return "; ".join(dict.fromkeys(str(r) for r in series.fillna("") if r))


def bucket_label(lo: Any, hi: Any) -> str:
    """An inclusive distance bucket as text: '2-9' for [2, 9], '5' for [5, 5]."""
    def text(value: Any) -> str:
        value = float(value)
        return "inf" if math.isinf(value) else f"{value:.0f}"

    if pd.isna(lo) and pd.isna(hi):
        return "all"
    if pd.isna(hi):
        return f">={text(lo)}"
    if pd.isna(lo):
        return f"<={text(hi)}"
    return text(lo) if float(lo) == float(hi) else f"{text(lo)}-{text(hi)}"


def _ensure(rows: pd.DataFrame, names: Iterable[str]) -> pd.DataFrame:
    """`rows` with every column in `names` (missing optional ones as NaN)."""
    missing = [name for name in dict.fromkeys(names) if name not in rows]
    return rows.assign(**{name: np.nan for name in missing}) if missing else rows


def with_sweep(rows: pd.DataFrame) -> pd.DataFrame:
    """Retrieval rows with the columns the sweep logic reads; a row from before sweeps is a sweep of its own."""
    rows = _ensure(rows, ("sweep_id", "lr", "seed", "val_accuracy", "timestamp", "task"))
    return rows.assign(sweep_id=rows["sweep_id"].fillna(rows["config_hash"]) if "config_hash" in rows
                       else rows["sweep_id"])


def in_newest_sweep(rows: pd.DataFrame) -> pd.Series:
    """Per row: it belongs to the newest sweep (latest timestamp) of its task and variant."""
    stamps = rows["timestamp"].fillna("").astype(str)  # frames straight from run_retrieval carry none
    newest = stamps.groupby([rows["task"].fillna(""), rows["variant"]]).transform("max")
    newest_sweep = rows[stamps == newest].groupby(["task", "variant"], dropna=False)["sweep_id"].last()
    return pd.Series([newest_sweep.get((t, v)) == sweep for t, v, sweep in zip(rows["task"], rows["variant"],
                                                                                 rows["sweep_id"])],
                     index=rows.index)


def retrieval_rows(frame: pd.DataFrame, eval_set: str = "distance") -> pd.DataFrame:
    """The retrieval rows a reader compares: per variant and task its newest sweep, and of that sweep only the
    runs at the learning rate it kept (protocol.select_lr: best validation accuracy at the first seed), with a
    `lr_kept` column; of those, the evaluation set `eval_set` ("distance": the accuracy-by-distance sets, also
    every row stored before sets had names; "noise": the fixed-distance sets of eval.noise_pairs). Rows written
    before sweeps existed count as a sweep of one run each."""
    from ..retrieval.protocol import select_lr

    rows = rows_of_kind(frame, "retrieval")
    if rows.empty:
        return rows
    rows = with_sweep(rows)
    rows = rows[in_newest_sweep(rows)]
    runs = rows.drop_duplicates("config_hash" if "config_hash" in rows else "sweep_id")
    with_lr = runs[_numeric(runs["lr"]).notna()]
    kept = select_lr(with_lr[["sweep_id", "lr", "seed", "val_accuracy"]]) if len(with_lr) else pd.Series(dtype=float)
    lr_kept = rows["sweep_id"].map(kept)
    selected = lr_kept.isna() | (_numeric(rows["lr"]) == lr_kept)
    sets = _column(rows, "eval_set", None).fillna("distance")
    # A run that failed before evaluating (one row, no set) belongs to the distance view.
    return rows.assign(lr_kept=lr_kept)[selected & (sets == eval_set)].reset_index(drop=True)


RETRIEVAL_NOISE_COLUMNS = ("task", "variant", "seq_len", "distance", "pairs", "accuracy", "accuracy_ci_lo",
                           "accuracy_ci_hi", "seeds", "within_share", "chance")


def retrieval_noise(frame: pd.DataFrame) -> pd.DataFrame:
    """Accuracy at one fixed key-query distance as the number of pairs (distractors) in the sequence grows: the
    seed's second cost of a wider field, which takes in more of them. Mean over the kept seeds with its 95 %
    interval; within_share is the share of the queries the pattern reaches at that distance."""
    from ..retrieval.protocol import mean_interval

    rows = retrieval_rows(frame, "noise")
    if rows.empty:
        return pd.DataFrame(columns=list(RETRIEVAL_NOISE_COLUMNS))
    records = []
    for (task, variant, seq_len, pairs), group in rows.groupby(["task", "variant", "seq_len", "eval_pairs"],
                                                               sort=False):
        mean, low, high = mean_interval(_per_run_accuracy(group))
        ok = group[group["status"] == "ok"]
        total = float(_numeric(ok["count"]).sum())
        records.append(dict(task=task, variant=variant, seq_len=seq_len, distance=_first(group["distance_lo"]),
                            pairs=int(pairs), accuracy=mean, accuracy_ci_lo=low, accuracy_ci_hi=high,
                            seeds=len(_per_run_accuracy(group)),
                            within_share=float(_numeric(ok["within_count"]).sum()) / total if total else math.nan,
                            chance=_numeric(group["chance"]).max()))
    out = pd.DataFrame.from_records(records)
    return _sort_by_variant(out, rows, ["task"], ["pairs"])[list(RETRIEVAL_NOISE_COLUMNS)]


def _per_run(group: pd.DataFrame, correct: str, count: str) -> list[float]:
    """correct / count per training run (config_hash) of the group's ok rows; runs with no such items left out."""
    ok = group[group["status"] == "ok"]
    if ok.empty or correct not in ok or count not in ok:
        return []
    by_run = ok.groupby("config_hash" if "config_hash" in ok else "seed", dropna=False)[[correct, count]].sum()
    by_run = by_run[_numeric(by_run[count]) > 0]
    return list(_numeric(by_run[correct]) / _numeric(by_run[count]))


def _per_run_accuracy(group: pd.DataFrame) -> list[float]:
    """The count-weighted accuracy of each training run (config_hash) over the group's ok rows."""
    ok = group[group["status"] == "ok"]
    if ok.empty:
        return []
    run = ok["config_hash"] if "config_hash" in ok else pd.Series(0, index=ok.index)
    return [_weighted_accuracy(rows)[0] for _, rows in ok.groupby(run, dropna=False, sort=False)
            if _weighted_accuracy(rows)[1] > 0]


def retrieval_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per task, variant, N and distance bucket: the mean over the kept runs (seeds) of each run's
    accuracy in the bucket, its 95 % t interval (none for one seed) and the 95 % Wilson interval of the bucket's
    items pooled over the runs (binomial_ci_*: how many items the bucket stands on), next to what the pattern allows:
    reachable_fraction (share of the bucket's items whose sources the stacked pattern can reach), theoretical_reach
    (the longest distance any token travels) and chance."""
    from ..retrieval.protocol import binomial_interval, mean_interval

    rows = retrieval_rows(frame)
    if rows.empty:
        return pd.DataFrame(columns=list(RETRIEVAL_SUMMARY_COLUMNS))
    rows = _ensure(rows, ("task", "name", "mechanism", "backend", "params", "seq_len", "distance_lo", "distance_hi",
                          "accuracy", "correct", "reachable_fraction", "chance", "count", "theoretical_reach"))
    keys = ["task", "variant", "mechanism", "backend", "params", "seq_len", "distance_lo", "distance_hi"]
    records = []
    for key, group in rows.groupby(keys, dropna=False, sort=False):
        runs = _per_run_accuracy(group)
        mean, low, high = mean_interval(runs)
        pooled_accuracy, pooled_count = _weighted_accuracy(group)
        binomial = binomial_interval(pooled_accuracy * pooled_count, pooled_count)
        record = dict(zip(keys, key))
        record.update(name=_first(group["name"]), bucket=bucket_label(record["distance_lo"], record["distance_hi"]),
                      accuracy=mean, accuracy_ci_lo=low, accuracy_ci_hi=high, binomial_ci_lo=binomial[0],
                      binomial_ci_hi=binomial[1], seeds=len(runs),
                      reachable_fraction=_weighted_mean(group, "reachable_fraction")[0],
                      chance=_numeric(group["chance"]).max(), count=_weighted_accuracy(group)[1],
                      theoretical_reach=_numeric(group["theoretical_reach"]).max(),
                      status=_status_of(group["status"]))
        records.append(record)
    out = pd.DataFrame.from_records(records)
    return _sort_by_variant(out, rows, ["task"], ["seq_len", "distance_lo"])[list(RETRIEVAL_SUMMARY_COLUMNS)]


def retrieval_headline(frame: pd.DataFrame) -> pd.DataFrame:
    """Per task, variant and evaluated N: the numbers that separate the pattern from the training.

    within_reach: accuracy on the items whose key and answer the pattern lets the query see and no head cuts in two
    (ceiling 1); split_reach: on items within reach where some head sees the key token without its answer, the
    sparse grid's loss of detail (reach.items_split; one-layer models only); beyond_reach: on the items whose
    answer it cannot see (ceiling: chance). Each is the mean over the kept seeds with its 95 % interval, next to
    the share of items it stands on. accuracy / ceiling: all items against the pattern's ceiling (answer-visible
    share plus chance on the rest). converged: runs that reached their ceiling or plateaued, of all runs.
    verdict: "learnt what its pattern reaches" when within_reach >= 0.90; otherwise the pattern reaches those
    items and the model did not learn them."""
    from ..retrieval.protocol import ceiling, mean_interval

    rows = retrieval_rows(frame)
    if rows.empty or "within_count" not in rows:
        return pd.DataFrame(columns=list(RETRIEVAL_HEADLINE_COLUMNS))
    rows = _ensure(rows, ("converged", "answer_only_count", "split_count", "split_correct", "beyond_count",
                          "lr_kept", "lr"))
    records = []
    for (task, variant, seq_len), group in rows.groupby(["task", "variant", "seq_len"], dropna=False, sort=False):
        ok = group[group["status"] == "ok"]
        if ok.empty or pd.isna(seq_len):
            continue
        total = float(_numeric(ok["count"]).sum())

        def share(column: str) -> float:
            return float(_numeric(ok[column]).fillna(0).sum()) / total if total else math.nan

        visible_share = share("within_count") + share("split_count") + share("answer_only_count")
        chance = float(_numeric(ok["chance"]).max())
        within = mean_interval(_per_run(ok, "within_correct", "within_count"))
        split = mean_interval(_per_run(ok, "split_correct", "split_count"))
        beyond = mean_interval(_per_run(ok, "beyond_correct", "beyond_count"))
        overall = mean_interval(_per_run(ok, "correct", "count"))
        top = ceiling(min(max(visible_share, 0.0), 1.0), chance) if not math.isnan(visible_share) else math.nan
        runs = ok.drop_duplicates("config_hash")
        converged = runs["converged"].map(lambda v: bool(v) if isinstance(v, (bool, np.bool_)) else False)
        records.append(dict(
            task=task, variant=variant, seq_len=seq_len, lr=_first(group["lr_kept"].fillna(group["lr"])),
            seeds=len(runs), converged=f"{int(converged.sum())}/{len(runs)}", within_share=share("within_count"),
            within_reach=within[0], within_ci_lo=within[1], within_ci_hi=within[2],
            split_share=share("split_count"), split_reach=split[0], split_ci_lo=split[1], split_ci_hi=split[2],
            beyond_share=share("beyond_count"), beyond_reach=beyond[0], beyond_ci_lo=beyond[1],
            beyond_ci_hi=beyond[2], chance=chance, accuracy=overall[0], accuracy_ci_lo=overall[1],
            accuracy_ci_hi=overall[2], ceiling=top, of_ceiling=overall[0] / top if top else math.nan,
            verdict=_verdict(within[0], split[0], beyond[0], share("within_count"), share("split_count"),
                             share("beyond_count"), chance, int(converged.sum()), len(runs))))
    if not records:
        return pd.DataFrame(columns=list(RETRIEVAL_HEADLINE_COLUMNS))
    out = pd.DataFrame.from_records(records)
    return _sort_by_variant(out, rows, ["task"], ["seq_len"])[list(RETRIEVAL_HEADLINE_COLUMNS)]


def _verdict(within: float, split: float, beyond: float, within_share: float, split_share: float,
             beyond_share: float, chance: float, converged: int, runs: int) -> str:
    parts = []
    if not within_share:
        parts.append("no item within reach")
    elif within >= LEARNT_SHARE:
        parts.append("learnt what its pattern reaches")
    else:
        parts.append(f"under-trained: the pattern reaches these items, the model got {within:.2f} of them")
    if split_share and not math.isnan(split):
        share = "under 1%" if split_share < 0.005 else f"{split_share:.0%}"
        parts.append(f"{split:.2f} on the {share} of items its pattern splits (a head sees the key "
                     f"without its answer)")
    if beyond_share and not math.isnan(beyond):
        if beyond <= chance + CHANCE_TOLERANCE:
            parts.append("chance beyond reach: the pattern cannot see them")
        else:
            parts.append(f"{beyond:.2f} beyond reach, above chance ({chance:.3g}): answers guessed from outside "
                         f"the pattern's field")
    if converged < runs:
        parts.append(f"{runs - converged} of {runs} runs had not converged (stopped by the step budget or time cap)")
    return "; ".join(parts)


def format_interval(mean: float, low: float, high: float) -> str:
    """'0.934 (0.912-0.956)'; the mean alone where there is no interval; '' where there is no mean."""
    if mean is None or pd.isna(mean):
        return ""
    if pd.isna(low) or pd.isna(high):
        return f"{mean:.3f}"
    return f"{mean:.3f} ({low:.3f}-{high:.3f})"


def retrieval_headline_cells(headline: pd.DataFrame) -> pd.DataFrame:
    """retrieval_headline for reading: one 'mean (95 % interval)' cell per class, its share of the items beside it."""
    if headline.empty:
        return headline

    def cell(row: pd.Series, part: str) -> str:
        text = format_interval(row[part], row[part.replace("_reach", "_ci_lo")], row[part.replace("_reach", "_ci_hi")])
        share = row[part.replace("_reach", "_share")]
        return f"{text} [{share:.0%}]" if text else ("-" if not share else "")

    return pd.DataFrame({
        "variant": headline["variant"], "N": headline["seq_len"],  # rate and seeds: the training table, the CSV
        "converged": headline["converged"],
        "within reach [share]": [cell(r, "within_reach") for _, r in headline.iterrows()],
        "split [share]": [cell(r, "split_reach") for _, r in headline.iterrows()],
        "beyond reach [share]": [cell(r, "beyond_reach") for _, r in headline.iterrows()],
        "chance": headline["chance"],
        "accuracy / ceiling": [f"{a:.3f} / {c:.3f}" if pd.notna(a) else "" for a, c in
                               zip(headline["accuracy"], headline["ceiling"])],
        "verdict": headline["verdict"]})


def retrieval_wide(summary: pd.DataFrame, task: str) -> pd.DataFrame:
    """One task of retrieval_summary as one row per variant and N, one accuracy column per inclusive distance
    bucket (columns named 'acc@<lo>-<hi>', tokens: 'mean (95 % interval)' over seeds), then the variant's
    theoretical reach at that N."""
    summary = summary[summary["task"] == task] if not summary.empty else summary
    if summary.empty:
        return pd.DataFrame()
    summary = summary.assign(cell=[format_interval(m, lo, hi) for m, lo, hi in zip(
        summary["accuracy"], summary["accuracy_ci_lo"], summary["accuracy_ci_hi"])])
    ordered = summary.sort_values("distance_lo", na_position="first", kind="stable")
    buckets = list(dict.fromkeys(ordered["bucket"]))
    variants = list(dict.fromkeys(summary["variant"]))
    wide = summary.pivot_table(index=["variant", "seq_len"], columns="bucket", values="cell",
                               aggfunc="first", dropna=False, sort=False)
    wide = wide.reindex(columns=buckets).replace("", np.nan).dropna(how="all").fillna("").reset_index()
    wide["variant"] = pd.Categorical(wide["variant"], categories=variants, ordered=True)
    wide = wide.sort_values(["variant", "seq_len"], kind="stable")
    wide["variant"] = wide["variant"].astype(str)
    wide.columns = [c if c in ("variant", "seq_len") else f"acc@{c}" for c in wide.columns]
    reach = summary.groupby(["variant", "seq_len"], sort=False)["theoretical_reach"].max()
    wide["theoretical_reach"] = [reach.get((v, n), math.nan) for v, n in zip(wide["variant"], wide["seq_len"])]
    return wide.reset_index(drop=True)


def retrieval_training(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per retrieval training run (config_hash), every rate of the sweep included: how long it trained,
    why it stopped, whether it converged (ceiling or plateau), how well it fit, and lr_kept, the rate the sweep
    kept, and current, whether it belongs to its variant's newest sweep (the one the other tables read). A run
    stopped by max_steps or time_cap had not converged: its accuracy partly measures its budget."""
    from ..retrieval.protocol import select_lr

    rows = rows_of_kind(frame, "retrieval")
    if rows.empty:
        return pd.DataFrame(columns=list(RETRIEVAL_TRAINING_COLUMNS))
    rows = _ensure(with_sweep(rows), ("config_hash", *RETRIEVAL_TRAINING_COLUMNS))
    rows = rows.assign(current=in_newest_sweep(rows))
    records = []
    for _, group in rows.groupby("config_hash", dropna=False, sort=False):
        record = {name: _first(group[name]) for name in RETRIEVAL_TRAINING_COLUMNS}
        record.update(variant=group["variant"].iloc[0], status=_status_of(group["status"]),
                      reason=_reasons(group["reason"]), sweep_id=group["sweep_id"].iloc[0])
        records.append(record)
    out = pd.DataFrame.from_records(records)
    with_lr = out[_numeric(out["lr"]).notna()]
    kept = select_lr(with_lr[["sweep_id", "lr", "seed", "val_accuracy"]]) if len(with_lr) else pd.Series(dtype=float)
    out["lr_kept"] = _numeric(out["lr"]) == out["sweep_id"].map(kept)
    return _sort_by_variant(out, rows, ["task"], ["lr", "seed"])[list(RETRIEVAL_TRAINING_COLUMNS)]


def passkey_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Passkey accuracy per variant, context length and needle depth (the heatmap's numbers); `distance` is the
    needle's distance from the query, the bucket the row carries (distance_lo = distance_hi)."""
    rows = rows_of_kind(frame, "retrieval")
    if rows.empty or "task" not in rows:
        return pd.DataFrame(columns=list(PASSKEY_SUMMARY_COLUMNS))
    rows = rows[rows["task"] == "passkey"]
    if "context_len" not in rows and "seq_len" in rows:
        rows = rows.assign(context_len=rows["seq_len"])
    if rows.empty or "depth" not in rows or "context_len" not in rows:
        return pd.DataFrame(columns=list(PASSKEY_SUMMARY_COLUMNS))
    rows = _ensure(rows, ("distance_lo", "reachable_fraction"))
    records = []
    for (variant, context_len, depth), group in rows.groupby(["variant", "context_len", "depth"], sort=True):
        accuracy, count = _weighted_accuracy(group)
        records.append(dict(variant=variant, context_len=context_len, depth=depth,
                            distance=_numeric(group["distance_lo"]).min(), accuracy=accuracy,
                            reachable_fraction=_weighted_mean(group, "reachable_fraction")[0], count=count,
                            status=_status_of(group["status"])))
    return pd.DataFrame.from_records(records, columns=list(PASSKEY_SUMMARY_COLUMNS))


def probe_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """The training-free probe per variant, direction and inclusive distance bucket: accuracy (share of
    (query, head) pairs whose key came back), reachable_fraction (the share the spec's pattern predicts) and
    mismatches ((query, key, head) triples where the two differ; anything but 0 makes the rows "wrong").

    The probe is exact, so a "wrong" bucket's accuracy is still what was measured and is kept. A variant that
    could not run keeps its one row, with status, reason and no bucket."""
    rows = rows_of_kind(frame, "probe")
    if rows.empty:
        return pd.DataFrame(columns=list(PROBE_SUMMARY_COLUMNS))
    rows = _ensure(rows, ("name", "mechanism", "backend", "params", "seq_len", "heads", "causal", "direction",
                          "distance_lo", "distance_hi", "count", "accuracy", "reachable_fraction", "mismatches",
                          "theoretical_reach", "reason"))
    keys = ["variant", "mechanism", "backend", "params", "seq_len", "direction", "distance_lo", "distance_hi"]
    records = []
    for key, group in rows.groupby(keys, dropna=False, sort=False):
        record = dict(zip(keys, key))
        measured = group[group["status"].isin(("ok", "wrong"))].assign(status="ok")
        accuracy, count = _weighted_accuracy(measured)
        mismatches = _numeric(group["mismatches"])
        record.update(name=_first(group["name"]), heads=_first(group["heads"]), causal=_first(group["causal"]),
                      bucket=bucket_label(record["distance_lo"], record["distance_hi"])
                      if pd.notna(record["distance_lo"]) else "",
                      count=count, accuracy=accuracy,
                      reachable_fraction=_weighted_mean(measured, "reachable_fraction")[0],
                      mismatches=float(mismatches.sum()) if mismatches.notna().any() else math.nan,
                      theoretical_reach=_numeric(group["theoretical_reach"]).max(),
                      status=_status_of(group["status"]), reason=_reasons(group["reason"]))
        records.append(record)
    out = pd.DataFrame.from_records(records)
    return _sort_by_variant(out, rows, [], ["direction", "distance_lo"])[list(PROBE_SUMMARY_COLUMNS)]


def distributed_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per sequence-parallel point (all its ranks together).

    latency_max_ms: the slowest rank's median (a step waits for it); bytes_sent_max: the busiest rank's payload
    per call, forward + backward, next to predicted_bytes_sent_max, the spec's prediction for that quantity;
    *_total: summed over ranks; bytes_match: every rank's count equalled its prediction; peak_mem_max_mib: the
    largest peak of any rank. Measured numbers are left out (NaN) unless every rank of the point ended ok and
    every rank is present; the prediction is kept, since it comes from the configuration alone."""
    rows = rows_of_kind(frame, "distributed")
    if rows.empty:
        return pd.DataFrame(columns=list(DISTRIBUTED_SUMMARY_COLUMNS))
    rows = _ensure(rows, ("mechanism", "params", *DISTRIBUTED_SETTING_COLUMNS, "dist_backend", "kernel", "seq_len",
                          "rank", "latency_median_s", "bytes_sent_forward", "bytes_sent_backward",
                          "predicted_bytes_sent_forward", "predicted_bytes_sent_backward", "bytes_match",
                          "peak_mem_bytes", "max_abs_err", "reason", "config_hash"))
    sent = _numeric(rows["bytes_sent_forward"]) + _numeric(rows["bytes_sent_backward"]).fillna(0)
    predicted = _numeric(rows["predicted_bytes_sent_forward"]) + _numeric(
        rows["predicted_bytes_sent_backward"]).fillna(0)
    rows = rows.assign(_sent=sent, _predicted=predicted, _latency=_numeric(rows["latency_median_s"]))
    records = []
    for _, group in rows.groupby("config_hash", dropna=False, sort=False):
        first = group.iloc[0]
        world = _numeric(group["world_size"]).max()
        ranks = int(group["rank"].nunique())
        complete = pd.isna(world) or ranks == int(world)
        ok = bool((group["status"] == "ok").all()) and complete and group["_latency"].notna().all()
        status = _status_of(group["status"])
        if status == "ok" and not complete:
            status = f"ok+missing ranks ({ranks} of {int(world)})"
        latency = group["_latency"]
        record = {name: first[name] for name in ("variant", "mechanism", "params", *DISTRIBUTED_SETTING_COLUMNS,
                                                  "dist_backend", "seq_len")}
        record.update(
            kernel=_first(group["kernel"]), ranks=ranks, status=status,
            latency_max_ms=float(latency.max()) * 1e3 if ok else math.nan,
            latency_min_ms=float(latency.min()) * 1e3 if ok else math.nan,
            slowest_rank=group.loc[latency.idxmax(), "rank"] if ok else math.nan,
            tokens_per_s=float(first["batch"]) * float(first["seq_len"]) / float(latency.max())
            if ok and pd.notna(first["batch"]) else math.nan,
            bytes_sent_max=group["_sent"].max() if ok else math.nan,
            predicted_bytes_sent_max=group["_predicted"].max() if complete else math.nan,
            bytes_sent_total=group["_sent"].sum() if ok else math.nan,
            predicted_bytes_sent_total=group["_predicted"].sum(min_count=1) if complete else math.nan,
            bytes_match=bool(group["bytes_match"].eq(True).all()) if ok else None,
            peak_mem_max_mib=_numeric(group["peak_mem_bytes"]).max() / MIB if ok else math.nan,
            max_abs_err=_numeric(group["max_abs_err"]).max(), reason=_reasons(group["reason"]))
        records.append(record)
    out = pd.DataFrame.from_records(records)
    return _sort_by_variant(out, rows, ["world_size", "pass"], ["seq_len"])[list(DISTRIBUTED_SUMMARY_COLUMNS)]


def perf_target_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """scripts/perf_targets.py's targets, missed ones first: the newest measurement of each (target_key, device,
    dtype, smoke) under its newest label (`target`), whether it met its limit (`passed`: measured <comparison> limit), whether it is one of the
    issue's targets or a context measurement (`issue_target`) and `runs`, how many times the store has measured
    it (the older rows stay in the store). `rounds` gives the spread of a ratio taken over interleaved rounds
    ("0.544-0.634, 2 of 3 meet"): a verdict whose rounds straddle the limit is inside the machine's noise."""
    if frame.empty or "kind" not in frame:
        return pd.DataFrame(columns=list(PERF_TARGET_COLUMNS))
    rows = frame[frame["kind"] == "perf_target"]
    if rows.empty:
        return pd.DataFrame(columns=list(PERF_TARGET_COLUMNS))
    rows = _ensure(rows, (*PERF_TARGET_COLUMNS, *_PERF_ROUND_COLUMNS))
    rows = rows.assign(rounds=[_round_spread(*values) for values in rows[list(_PERF_ROUND_COLUMNS)].itertuples(
        index=False)])
    # rows stored before the column existed: their only context measurement said so in its name
    unmarked = rows["issue_target"].isna()
    rows = rows.assign(issue_target=rows["issue_target"].where(
        ~unmarked, ~rows["target"].astype(str).str.contains("not an issue target")).astype(bool))
    rows = _current_targets(rows.sort_values("timestamp", kind="stable", na_position="first"))
    keys = ["target_key", "device", "dtype", "smoke"]
    runs = rows.groupby(keys, dropna=False, sort=False)["target"].transform("size")
    latest = rows.assign(runs=runs).drop_duplicates(keys, keep="last")
    passed = latest["passed"].map(lambda v: bool(v) if isinstance(v, (bool, np.bool_)) else None)
    latest = latest.assign(passed=passed, _missed=passed.map(lambda v: v is not True))
    latest = latest.sort_values("_missed", ascending=False, kind="stable")
    return latest[list(PERF_TARGET_COLUMNS)].reset_index(drop=True)


def _current_targets(rows: pd.DataFrame) -> pd.DataFrame:
    """Time-sorted perf_target rows, each under a `target_key`. Labels change between versions of the script and
    keys do not; rows stored before keys existed are keyed by their label and kept only where no keyed row exists
    for their device, dtype and smoke (else a renamed target would count twice, once with a stale verdict). An
    error row is keyed by the target method that raised and is dropped once a later run of that method stored a
    measurement."""
    rows = _ensure(rows, ("target_key", "status")).reset_index(drop=True)
    setting = rows["device"].map(str) + "|" + rows["dtype"].map(str) + "|" + rows["smoke"].map(str)
    keyed = rows["target_key"].notna()
    rows = rows[keyed | ~keyed.groupby(setting).transform("any")]
    rows = rows.assign(target_key=rows["target_key"].fillna(rows["target"]))
    setting = setting[rows.index]
    method = rows["target_key"].astype(str).str.split(".").str[0]
    measured = rows["status"] != "error"
    superseded = [i for i in rows.index[~measured]
                  if (measured & (method == method[i]) & (setting == setting[i])
                      & (rows["timestamp"] > rows.at[i, "timestamp"])).any()]
    return rows.drop(index=superseded)


def _round_spread(low, high, passed, count) -> str | None:
    """Rows without rounds (single measurements, or stored before rounds were kept) have none."""
    if pd.isna(count) or not count:
        return None
    return f"{low:.3f}-{high:.3f}, {int(passed)} of {int(count)} meet"


def failures(frame: pd.DataFrame) -> pd.DataFrame:
    """Every row that did not end ok, with its reason: what a reader must know before trusting a plot."""
    if frame.empty or "status" not in frame:
        return pd.DataFrame(columns=list(FAILURE_COLUMNS))
    parts = [rows_of_kind(frame, kind) for kind in frame["kind"].dropna().unique()] if "kind" in frame else []
    rows = pd.concat([p for p in parts if not p.empty], ignore_index=True) if parts else pd.DataFrame()
    if rows.empty:
        return pd.DataFrame(columns=list(FAILURE_COLUMNS))
    rows = rows[rows["status"] != "ok"]
    out = pd.DataFrame({name: _column(rows, name, None) for name in FAILURE_COLUMNS})
    out["reason"] = out["reason"].fillna("")
    # Probe and retrieval failures repeat per bucket: one line per distinct failure is enough.
    return out.drop_duplicates().reset_index(drop=True)


# ---------------------------------------------------------------------------------------------- formatting

def format_value(value: Any) -> str:
    """Numbers to 4 significant digits, integers whole, missing as an empty cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if float(value).is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.4g}"
    return str(value)


def format_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Every cell as display text (drops columns that are empty throughout)."""
    kept = [c for c in frame.columns if frame[c].map(lambda v: format_value(v) != "").any()]
    return frame[kept].apply(lambda column: column.map(format_value)) if kept else pd.DataFrame(index=frame.index)


def fold_constant_columns(frame: pd.DataFrame, keep: Iterable[str] = ("variant",)) -> tuple[pd.DataFrame, str]:
    """A table without the columns that hold one value in every row, and a line naming those values.

    A report table of 18 points each saying dtype=float32, batch=1, heads=4 is wider than a page and tells the
    reader nothing per row; the line above the table says it once. Columns in `keep` always stay (they name
    the rows), and a table of one row keeps everything (nothing is constant "across" one row)."""
    if len(frame) < 2:
        return frame, ""
    text = format_frame(frame)  # drops the columns that are empty throughout
    constant = [c for c in text.columns if c not in set(keep) and text[c].nunique(dropna=False) == 1]
    if len(constant) == len(text.columns):
        constant = constant[:-1]  # a table keeps at least one column
    if not constant:
        return frame, ""
    line = "Same in every row: " + ", ".join(f"{c} = {text[c].iloc[0]}" for c in constant) + "."
    return frame[[c for c in text.columns if c not in constant]], line


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pandas' to_markdown needs the `tabulate` package; this does not)."""
    text = format_frame(frame)
    if text.empty:
        return "_(no rows)_\n"

    def cell(value: str) -> str:
        return value.replace("|", "\\|").replace("\n", " ")

    numeric = [pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
               for c in text.columns]
    lines = ["| " + " | ".join(cell(str(c)) for c in text.columns) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in text.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def format_speedup(speedup: float, round_min: float | None = None, round_max: float | None = None) -> str:
    """'5.8x [4.6-6.5]': the median per-round speed-up and, in brackets, its range over the rounds."""
    if speedup is None or pd.isna(speedup):
        return ""
    spread = (f" [{format_value(round_min)}-{format_value(round_max)}]"
              if round_min is not None and pd.notna(round_min) and round_max is not None and pd.notna(round_max)
              else "")
    return f"{format_value(speedup)}x{spread}"


def latency_wide(speed: pd.DataFrame) -> pd.DataFrame:
    """speed_summary as one row per variant and pass, one column per N: the median latency in ms, or the
    status where the point did not end ok; plus the speed-up over dense at the largest N measured ok."""
    if speed.empty:
        return pd.DataFrame()
    cells = speed.assign(cell=[format_value(ms) if status == "ok" else str(status)
                               for ms, status in zip(speed["latency_median_ms"], speed["status"])])
    # Settings that vary (dtype, causal, batch, ...) stay apart as columns; constant ones would be noise.
    index = ["variant"] + [c for c in SPEED_SETTING_COLUMNS if cells[c].notna().any()
                           and (c == "pass" or cells[c].nunique(dropna=False) > 1)]
    variants = list(dict.fromkeys(cells["variant"]))
    wide = cells.pivot_table(index=index, columns="seq_len", values="cell", aggfunc="first", sort=False)
    wide = wide.reindex(columns=sorted(wide.columns)).fillna("")
    wide.columns = [f"N={int(n)}" for n in wide.columns]
    ok = cells[cells["speedup_vs_dense"].notna()].sort_values("seq_len")
    last = ok.groupby(index, sort=False).tail(1).set_index(index)
    def versus(key) -> str:
        if key not in last.index:
            return ""
        row = last.loc[key]
        speedup = format_speedup(row["speedup_vs_dense"], row.get("speedup_round_min"), row.get("speedup_round_max"))
        return f"{speedup} @ {int(row['seq_len'])}"

    wide["vs dense (largest N)"] = [versus(key) for key in wide.index]
    wide = wide.reset_index()
    wide["variant"] = pd.Categorical(wide["variant"], categories=variants, ordered=True)
    wide = wide.sort_values([c for c in index if c != "variant"] + ["variant"], kind="stable")
    wide["variant"] = wide["variant"].astype(str)
    return wide.reset_index(drop=True)


MAX_SEQ_LEN_COLUMNS = ("variant", "pass", "dtype", "causal", "device", "batch", "heads", "head_dim", "max_seq_len",
                       "first_failing_seq_len", "limited_by", "reason")


def max_seq_len_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per max_seq_len search: the largest N that fitted, the first that did not, and what stopped it
    (a status such as oom or timeout, latency_budget, or limit: the search reached benchmark.max_seq_len.limit)."""
    rows = rows_of_kind(frame, "max_seq_len")
    if rows.empty:
        return pd.DataFrame(columns=list(MAX_SEQ_LEN_COLUMNS))
    # A search spans several probes and may run several backends; its label names the backend it asked for.
    requested = _column(rows, "backend_requested", None).map(lambda b: None if b in (None, "auto") or b != b else b)
    rows = add_variant_column(rows.assign(backend=_column(rows, "backend", None).fillna(requested)))
    out = pd.DataFrame({name: _column(rows, name, None) for name in MAX_SEQ_LEN_COLUMNS})
    out["max_seq_len"] = _numeric(out["max_seq_len"]).astype("Int64")
    out["first_failing_seq_len"] = _numeric(out["first_failing_seq_len"]).astype("Int64")
    return _sort_by_variant(out, rows, ["pass"], [])[list(MAX_SEQ_LEN_COLUMNS)]


def headline_metrics(frame: pd.DataFrame) -> dict[str, float]:
    """The numbers a tracked run's summary shows, as flat keys.

    speed/<variant>/<pass>/<causal|full>/<dtype>/speedup_vs_dense (and .../seq_len): at the largest N that
    variant and dense both measured ok; max_seq_len/<variant>/<pass>/<causal|full>/<dtype>/max_seq_len; retrieval/<task>/<variant>/N=<n>/within_reach, .../beyond_reach and
    .../of_ceiling: the means of retrieval_headline.
    """
    out: dict[str, float] = {}
    speed = speed_summary(frame)
    compared = speed[speed["speedup_vs_dense"].notna() & (speed["mechanism"] != "dense")]
    for _, row in compared.sort_values("seq_len").groupby(["variant", "pass", "causal", "dtype"], sort=False,
                                                          dropna=False).tail(1).iterrows():
        key = f"speed/{row['variant']}/{row['pass']}/{'causal' if row['causal'] else 'full'}/{row['dtype']}"
        out[f"{key}/speedup_vs_dense"] = float(row["speedup_vs_dense"])
        out[f"{key}/seq_len"] = int(row["seq_len"])
    for _, row in max_seq_len_summary(frame).iterrows():
        key = f"max_seq_len/{row['variant']}/{row['pass']}/{'causal' if row['causal'] else 'full'}/{row['dtype']}"
        out[f"{key}/max_seq_len"] = int(row["max_seq_len"]) if pd.notna(row["max_seq_len"]) else 0
    for _, row in retrieval_headline(frame).iterrows():
        key = f"retrieval/{row['task']}/{row['variant']}/N={int(row['seq_len'])}"
        for name in ("within_reach", "beyond_reach", "of_ceiling"):
            if pd.notna(row[name]):
                out[f"{key}/{name}"] = float(row[name])
    return out


def _wide_off_terminal(console: Any) -> Any:
    """Logs and CI are not terminals: 200 columns there, rather than squeezing every table into 80 and cutting it."""
    if not console.is_terminal:
        console.width = max(console.width, 200)
    return console


def print_job_summary(rows: pd.DataFrame, console: Any = None) -> None:
    """What a job found, printed when it ends: the retrieval headline per variant and N (with its verdict), the
    probe's mismatches per variant. Speed and max_seq_len jobs print their own table as they end; long texts
    wrap, they are never cut."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = _wide_off_terminal(console or Console(stderr=True))
    headline = retrieval_headline(rows)
    if not headline.empty:
        table = Table(title=escape("retrieval: accuracy within and beyond each pattern's reach (mean, 95 % interval, "
                                   "[share of items]); of ceiling = accuracy / the pattern's ceiling"))
        for name in ("variant", "N", "within reach", "beyond reach", "of ceiling", "converged", "verdict"):
            table.add_column(name, justify="right" if name in ("N", "of ceiling") else "left",
                             overflow="fold", ratio=3 if name == "verdict" else None)
        cells = retrieval_headline_cells(headline)
        for (_, row), (_, cell) in zip(headline.iterrows(), cells.iterrows()):
            table.add_row(*map(escape, (str(row["variant"]), str(int(row["seq_len"])),
                                        str(cell["within reach [share]"]), str(cell["beyond reach [share]"]),
                                        format_value(row["of_ceiling"]), str(row["converged"]), str(row["verdict"]))))
        console.print(table)
    probe = probe_summary(rows)
    if not probe.empty:
        per_variant = probe.assign(mismatches=_numeric(probe["mismatches"]).fillna(0)).groupby(
            "variant", sort=False).agg(mismatches=("mismatches", "sum"), status=("status", _status_of))
        table = Table(title="probe: (query, key, head) triples that disagree with the spec (must be 0)")
        for name in ("variant", "mismatches", "status"):
            table.add_column(name, justify="right" if name == "mismatches" else "left")
        for variant, row in per_variant.iterrows():
            bad = row["mismatches"] > 0 or row["status"] != "ok"
            table.add_row(escape(str(variant)), f"{'[red]' if bad else ''}{int(row['mismatches'])}",
                          escape(str(row["status"])))
        console.print(table)


def print_summary(frame: pd.DataFrame, console: Any = None) -> None:
    """Print the stored rows' summaries as rich tables: median latency by N (failed points show their status),
    then retrieval accuracy by distance bucket per task."""
    from rich.console import Console
    from rich.table import Table

    console = _wide_off_terminal(console or Console())
    speed = speed_summary(frame)
    wide = latency_wide(speed)
    if not wide.empty:
        table = Table(title="median latency (ms) by sequence length N; 'vs dense' = fastest dense latency / this, "
                            "median of interleaved rounds [their range]")
        for name in wide.columns:
            left = not str(name).startswith(("N=", "vs dense"))
            table.add_column(str(name), justify="left" if left else "right", no_wrap=name == "variant")
        for values in wide.to_dict("records"):
            table.add_row(*[f"[red]{v}[/red]" if v in STATUSES and v != "ok" else str(v) for v in values.values()])
        console.print(table)
    retrieval = retrieval_summary(frame)
    for task in dict.fromkeys(retrieval["task"]):
        wide = retrieval_wide(retrieval, task)
        table = Table(title=f"{task}: accuracy by key-query distance bucket (tokens)")
        for name in wide.columns:
            table.add_column(str(name), justify="left" if name == "variant" else "right")
        for row in wide.itertuples(index=False):
            table.add_row(*[format_value(v) for v in row])
        console.print(table)
    fails = failures(frame)
    if not fails.empty:
        console.print(f"[yellow]{len(fails)} point(s) did not end ok[/yellow] "
                      f"({', '.join(f'{s}: {n}' for s, n in fails['status'].value_counts().items())}); "
                      "see the report's 'Failed points' table")
    if speed.empty and retrieval.empty:
        console.print("no speed or retrieval rows to summarise")
