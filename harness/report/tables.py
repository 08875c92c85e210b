"""Summary tables from the stored rows: what a reader compares, one row per variant and sequence length.

Every function takes the store's tidy frame (all kinds mixed, any missing optional column tolerated) and
returns a new frame with documented columns; `to_markdown` and `print_summary` only format.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
import pandas as pd

from ..store import STATUSES
from .palette import add_variant_column, variant_order

# Columns of speed_summary(), in order (README "Report tables").
SPEED_SUMMARY_COLUMNS = (
    "variant", "mechanism", "backend", "params", "pass", "dtype", "causal", "device", "batch", "heads",
    "head_dim", "seq_len", "status", "latency_median_ms", "latency_iqr_ms", "tokens_per_s", "peak_mem_mib",
    "useful_gflops_per_s", "fraction_of_peak", "speedup_vs_dense", "reason",
)
# What makes two speed points comparable apart from the variant and N: speed-up over dense is taken within it.
SPEED_SETTING_COLUMNS = ("pass", "dtype", "causal", "device", "batch", "heads", "head_dim")

RETRIEVAL_SUMMARY_COLUMNS = (
    "task", "variant", "mechanism", "backend", "params", "seq_len", "distance_lo", "distance_hi", "bucket",
    "accuracy", "count", "reach", "status",
)
PASSKEY_SUMMARY_COLUMNS = ("variant", "context_len", "depth", "accuracy", "count", "status")
PROBE_SUMMARY_COLUMNS = ("variant", "mechanism", "backend", "params", "seq_len", "distance", "heads",
                         "recovered", "status")
FAILURE_COLUMNS = ("kind", "variant", "task", "pass", "seq_len", "status", "reason")

MIB = float(1 << 20)


def _column(frame: pd.DataFrame, name: str, default: Any = np.nan) -> pd.Series:
    return frame[name] if name in frame else pd.Series([default] * len(frame), index=frame.index, dtype=object
                                                       if default is None else None)


def rows_of_kind(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Rows of one kind with a `variant` column; a retried point (same config_hash) keeps its latest row."""
    if frame.empty or "kind" not in frame:
        return pd.DataFrame()
    rows = frame[frame["kind"] == kind]
    if rows.empty:
        return pd.DataFrame()
    if kind == "speed" and "config_hash" in rows:
        # Speed rows are one per point: a resumed sweep re-measures points that ended in error, and the
        # newer row is the answer. (Retrieval and probe rows share a config_hash across buckets: not deduped.)
        if "timestamp" in rows:
            rows = rows.sort_values("timestamp", kind="stable")
        rows = rows.drop_duplicates("config_hash", keep="last")
    return add_variant_column(rows).reset_index(drop=True)


def _sort_by_variant(out: pd.DataFrame, rows: pd.DataFrame, first: list[str], then: list[str]) -> pd.DataFrame:
    """Sort by `first`, then variant in palette order (dense, sliding window, dilated), then `then`."""
    rank = {label: i for i, label in enumerate(variant_order(rows))}
    keyed = out.assign(_rank=out["variant"].map(rank))
    columns = [c for c in (*first, "_rank", *then) if c in keyed and keyed[c].notna().any()]
    return keyed.sort_values(columns, kind="stable", na_position="first").drop(columns="_rank").reset_index(drop=True)


def _numeric(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce")


def speed_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per speed point: latency, throughput, memory, FLOP/s, share of the matmul ceiling, speed-up.

    speedup_vs_dense = latency of the fastest dense backend measured ok at the same setting and N / this
    latency (so > 1 is faster than dense; NaN where no dense point exists to compare with).
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
    out["tokens_per_s"] = _numeric(_column(rows, "tokens_per_s")).where(ok)
    out["peak_mem_mib"] = _numeric(_column(rows, "peak_mem_bytes")).where(ok) / MIB
    out["useful_gflops_per_s"] = _numeric(_column(rows, "flops_per_s")).where(ok) / 1e9
    out["fraction_of_peak"] = _numeric(_column(rows, "fraction_of_peak")).where(ok)
    out["reason"] = _column(rows, "reason", "").fillna("")

    keys = [c for c in (*SPEED_SETTING_COLUMNS, "seq_len") if out[c].notna().any()]
    dense = out[(out["mechanism"] == "dense") & out["latency_median_ms"].notna()]
    if keys and not dense.empty:
        best = dense.groupby(keys, dropna=False)["latency_median_ms"].min().rename("_dense_ms").reset_index()
        merged = out[keys].reset_index().merge(best, on=keys, how="left").set_index("index")
        out["speedup_vs_dense"] = merged["_dense_ms"] / out["latency_median_ms"]
    else:
        out["speedup_vs_dense"] = np.nan
    return _sort_by_variant(out, rows, ["pass"], ["seq_len"])[list(SPEED_SUMMARY_COLUMNS)]


def _weighted_accuracy(group: pd.DataFrame) -> tuple[float, float]:
    ok = group[group["status"] == "ok"]
    accuracy = _numeric(ok["accuracy"])
    weights = _numeric(ok["count"]).fillna(1.0) if "count" in ok else pd.Series(1.0, index=ok.index)
    valid = accuracy.notna()
    if not valid.any():
        return math.nan, 0.0
    total = float(weights[valid].sum())
    mean = float((accuracy[valid] * weights[valid]).sum() / total) if total > 0 else float(accuracy[valid].mean())
    return mean, total


def _status_of(statuses: Iterable[str]) -> str:
    """'ok' when every row is ok, else the distinct statuses, e.g. 'ok+oom'."""
    distinct = sorted(set(statuses), key=lambda s: (s != "ok", s))
    return "+".join(distinct)


def bucket_label(lo: Any, hi: Any) -> str:
    def text(value: Any) -> str:
        value = float(value)
        return "inf" if math.isinf(value) else f"{value:.0f}"

    if pd.isna(lo) and pd.isna(hi):
        return "all"
    if pd.isna(hi):
        return f">={text(lo)}"
    if pd.isna(lo):
        return f"<{text(hi)}"
    return f"{text(lo)}-{text(hi)}"


def retrieval_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per task, variant, N and distance bucket (count-weighted over the rows that fall in it)."""
    rows = rows_of_kind(frame, "retrieval")
    if rows.empty:
        return pd.DataFrame(columns=list(RETRIEVAL_SUMMARY_COLUMNS))
    for name in ("task", "mechanism", "backend", "params", "seq_len", "distance_lo", "distance_hi", "accuracy",
                 "count", "reach"):
        if name not in rows:
            rows[name] = np.nan
    keys = ["task", "variant", "mechanism", "backend", "params", "seq_len", "distance_lo", "distance_hi"]
    records = []
    for key, group in rows.groupby(keys, dropna=False, sort=False):
        accuracy, count = _weighted_accuracy(group)
        record = dict(zip(keys, key))
        reach = _numeric(group["reach"]).dropna()
        record.update(bucket=bucket_label(record["distance_lo"], record["distance_hi"]), accuracy=accuracy,
                      count=count, reach=float(reach.iloc[0]) if len(reach) else math.nan,
                      status=_status_of(group["status"]))
        records.append(record)
    out = pd.DataFrame.from_records(records)
    return _sort_by_variant(out, rows, ["task"], ["seq_len", "distance_lo"])[list(RETRIEVAL_SUMMARY_COLUMNS)]


def retrieval_wide(summary: pd.DataFrame, task: str) -> pd.DataFrame:
    """One task of retrieval_summary as one row per variant and N, one accuracy column per distance bucket
    (columns named 'acc@<lo>-<hi>', distances in tokens)."""
    summary = summary[summary["task"] == task] if not summary.empty else summary
    if summary.empty:
        return pd.DataFrame()
    ordered = summary.sort_values("distance_lo", na_position="first", kind="stable")
    buckets = list(dict.fromkeys(ordered["bucket"]))
    variants = list(dict.fromkeys(summary["variant"]))
    wide = summary.pivot_table(index=["variant", "seq_len"], columns="bucket", values="accuracy",
                               aggfunc="first", dropna=False, sort=False)
    wide = wide.reindex(columns=buckets).dropna(how="all").reset_index()
    wide["variant"] = pd.Categorical(wide["variant"], categories=variants, ordered=True)
    wide = wide.sort_values(["variant", "seq_len"], kind="stable")
    wide["variant"] = wide["variant"].astype(str)
    wide.columns = [c if c in ("variant", "seq_len") else f"acc@{c}" for c in wide.columns]
    return wide.reset_index(drop=True)


def passkey_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Passkey accuracy per variant, context length and needle depth (the heatmap's numbers)."""
    rows = rows_of_kind(frame, "retrieval")
    if rows.empty or "task" not in rows:
        return pd.DataFrame(columns=list(PASSKEY_SUMMARY_COLUMNS))
    rows = rows[rows["task"] == "passkey"]
    if "context_len" not in rows and "seq_len" in rows:
        rows = rows.assign(context_len=rows["seq_len"])
    if rows.empty or "depth" not in rows or "context_len" not in rows:
        return pd.DataFrame(columns=list(PASSKEY_SUMMARY_COLUMNS))
    records = []
    for (variant, context_len, depth), group in rows.groupby(["variant", "context_len", "depth"], sort=True):
        accuracy, count = _weighted_accuracy(group)
        records.append(dict(variant=variant, context_len=context_len, depth=depth, accuracy=accuracy, count=count,
                            status=_status_of(group["status"])))
    return pd.DataFrame.from_records(records, columns=list(PASSKEY_SUMMARY_COLUMNS))


def probe_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per variant and distance: the fraction of heads that recovered the planted key (1.0 = all heads)."""
    rows = rows_of_kind(frame, "probe")
    if rows.empty or "distance" not in rows or "recovered" not in rows:
        return pd.DataFrame(columns=list(PROBE_SUMMARY_COLUMNS))
    rows = rows.assign(recovered=_numeric(rows["recovered"].astype(object).map(
        lambda x: float(x) if isinstance(x, (bool, np.bool_, int, float)) else x)))
    for name in ("mechanism", "backend", "params", "seq_len", "head"):
        if name not in rows:
            rows[name] = np.nan
    keys = ["variant", "mechanism", "backend", "params", "seq_len", "distance"]
    records = []
    for key, group in rows.groupby(keys, dropna=False, sort=False):
        ok = group[group["status"] == "ok"]
        record = dict(zip(keys, key))
        record.update(heads=int(ok["head"].nunique()) if len(ok) else 0,
                      recovered=float(ok["recovered"].mean()) if len(ok) else math.nan,
                      status=_status_of(group["status"]))
        records.append(record)
    out = pd.DataFrame.from_records(records)
    return _sort_by_variant(out, rows, [], ["seq_len", "distance"])[list(PROBE_SUMMARY_COLUMNS)]


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
    # Probe and retrieval failures repeat per head/bucket: one line per distinct failure is enough.
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
    wide["vs dense (largest N)"] = [
        f"{format_value(last.loc[key, 'speedup_vs_dense'])}x @ {int(last.loc[key, 'seq_len'])}"
        if key in last.index else "" for key in wide.index]
    wide = wide.reset_index()
    wide["variant"] = pd.Categorical(wide["variant"], categories=variants, ordered=True)
    wide = wide.sort_values([c for c in index if c != "variant"] + ["variant"], kind="stable")
    wide["variant"] = wide["variant"].astype(str)
    return wide.reset_index(drop=True)


def print_summary(frame: pd.DataFrame, console: Any = None) -> None:
    """Print the stored rows' summaries as rich tables: median latency by N (failed points show their status),
    then retrieval accuracy by distance bucket per task."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    speed = speed_summary(frame)
    wide = latency_wide(speed)
    if not wide.empty:
        table = Table(title="median latency (ms) by sequence length N; 'vs dense' = fastest dense latency / this")
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
