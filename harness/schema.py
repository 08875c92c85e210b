"""What a stored row of each kind holds: its columns and their types, checked on every write.

`ResultsStore.append` checks each row against its kind's schema, so a job that writes a misspelt kind, a row
without its kind, status or config_hash, or a value of the wrong type (a latency as text, a count as a list) fails at the write
that made it, naming the column, instead of surfacing as a blank cell in a report. Columns a schema does not
name are allowed (the environment fingerprint, a backend's extra diagnostics), except under STRICT, which the test
suite turns on. The report's test fixtures are checked against it, and the README's table of output columns is
made from it (`markdown()`); the report's tables still list their own (derived) columns.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Mapping

import numpy as np
import pandas as pd

STATUSES = ("ok", "wrong", "oom", "timeout", "unsupported", "nan", "error", "killed", "skipped")
# A point recorded with one of these is final: resume reuses it. An error, a worker killed from outside (a signal
# it did not raise itself: kill -9, SIGTERM) and a point skipped after its ladder failed are measured again.
FINAL_STATUSES = ("ok", "wrong", "unsupported", "oom", "timeout", "nan")

# Value types: what a cell may hold (None or NaN always may, unless the column is required).
TEXT, INT, NUMBER, BOOL, JSON = "text", "int", "number", "bool", "json"


@dataclass(frozen=True)
class Kind:
    """One kind of row: the types of the columns it may have (every row must have BASE_REQUIRED)."""

    name: str
    columns: Mapping[str, str]


# Every row, whatever wrote it (the store fills experiment, job_id, timestamp and reason).
BASE = {"experiment": TEXT, "kind": TEXT, "status": TEXT, "reason": TEXT, "config_hash": TEXT, "job_id": TEXT,
        "timestamp": TEXT, "config": JSON}
BASE_REQUIRED = ("kind", "status", "config_hash")

# What identifies the attention a row measured, in every kind that measures one.
ATTENTION = {"variant": TEXT, "name": TEXT, "mechanism": TEXT, "backend": TEXT, "backend_requested": TEXT,
             "params": JSON, "batch": INT, "seq_len": INT, "heads": INT, "head_dim": INT, "dtype": TEXT,
             "causal": BOOL, "device": TEXT}

# The latency columns of measure.Timing.columns(), shared by every timed kind.
TIMING = {"latency_median_s": NUMBER, "latency_iqr_s": NUMBER, "latency_min_s": NUMBER, "latency_mean_s": NUMBER,
          "latency_count": INT, "calls_per_sample": INT, "latency_times_s": JSON, "noisy": BOOL,
          "timing_method": TEXT}

SPEED = {**ATTENTION, "pass": TEXT, "threads": INT, **TIMING, "tokens_per_s": NUMBER, "peak_mem_bytes": NUMBER,
         "mem_method": TEXT, "useful_flops": NUMBER, "executed_flops": NUMBER, "flops_per_s": NUMBER,
         "executed_flops_per_s": NUMBER, "matmul_peak_flops_per_s": NUMBER, "matmul_method": TEXT,
         "fraction_of_peak": NUMBER, "rounds": INT, "round_medians_s": JSON, "speedup_round_median": NUMBER,
         "speedup_round_min": NUMBER, "speedup_round_max": NUMBER, "speedup_reference": TEXT, "compile_s": NUMBER,
         "first_call_s": NUMBER, "max_abs_err": NUMBER, "max_abs_grad_err": NUMBER, "gate_seq_len": INT}

BY_DISTANCE = {"task": TEXT, "layers": INT, "distance_lo": INT, "distance_hi": INT, "count": INT,
               "accuracy": NUMBER, "reachable_fraction": NUMBER, "theoretical_reach": INT}
SHARES = {f"{share}_{what}": INT for share in ("within", "split", "answer_only", "beyond")
          for what in ("count", "correct")}

KINDS: dict[str, Kind] = {kind.name: kind for kind in (
    Kind("speed", SPEED),
    Kind("max_seq_len", {**ATTENTION, "pass": TEXT, "max_seq_len": INT, "first_failing_seq_len": INT,
                         "limited_by": TEXT, "probes": JSON}),
    Kind("probe", {**ATTENTION, **BY_DISTANCE, "direction": TEXT, "mismatches": INT, "seconds": NUMBER}),
    Kind("retrieval", {**ATTENTION, **BY_DISTANCE, "task_layout": TEXT, "train_seq_len": INT, "d_model": INT,
                       "token_shift": BOOL, "depth": NUMBER, "context_len": INT, "correct": INT,
                       "token_accuracy": NUMBER, **SHARES, "eval_set": TEXT, "eval_pairs": INT, "chance": NUMBER,
                       "eval_loss": NUMBER, "eval_seconds": NUMBER, "sweep_id": TEXT, "lrs": JSON, "lr": NUMBER,
                       "seed": INT, "seeds_requested": INT, "train_steps": INT, "train_sequences": INT,
                       "train_seconds": NUMBER, "train_steps_per_s": NUMBER, "train_stop": TEXT, "converged": BOOL,
                       "plateaued": BOOL, "val_accuracy": NUMBER, "val_ceiling": NUMBER, "train_accuracy": NUMBER,
                       "train_final_loss": NUMBER, "learning_curve": JSON}),
    Kind("distributed", {**ATTENTION, "pass": TEXT, "dist_backend": TEXT, "launcher": TEXT, "world_size": INT,
                         "rank": INT, "local_rank": INT, "shard_lengths": JSON, "local_seq_len": INT,
                         "shard_start": INT, "threads": INT, "kernel": TEXT, **TIMING, "tokens_per_s": NUMBER,
                         "useful_flops": NUMBER, "flops_per_s": NUMBER, "peak_mem_bytes": NUMBER, "mem_method": TEXT,
                         **{f"{name}_{direction}": INT
                            for name in ("bytes_sent", "bytes_received", "predicted_bytes_sent")
                            for direction in ("forward", "backward")},
                         "bytes_match": BOOL, "check_against": TEXT, "max_abs_err": NUMBER,
                         "max_abs_grad_err": NUMBER, "missing_ranks": JSON, "exitcode": INT}),
    Kind("perf_target", {"target_key": TEXT, "target": TEXT, "measurement": TEXT, "numerator": TEXT,
                         "denominator": TEXT, "measured": NUMBER, "comparison": TEXT, "limit": NUMBER,
                         "passed": BOOL, "issue_target": BOOL, "detail": TEXT, "quantities": JSON,
                         "round_min": NUMBER, "round_max": NUMBER, "round_count": INT, "rounds_passed": INT,
                         "device": TEXT, "dtype": TEXT, "smoke": BOOL, "seq_len": INT,
                         "matmul_peak_flops_per_s": NUMBER, "peak_mem_bytes": NUMBER, "mem_method": TEXT,
                         "latency_median_s": NUMBER, "flops_per_s": NUMBER}),  # the last two: rows before 2026-12-02
)}

# What a column means where its name does not say it all (the README's table is made from these).
NOTES = {
    "status": "ok, wrong, oom, timeout, unsupported, nan, error, killed (the worker died from a signal sent from "
              "outside; measured again on resume), skipped",
    "config": "the full resolved config, JSON", "backend": "the one that ran", "params": "JSON",
    "pass": "forward, forward_backward, decode (one query at N - 1 against N keys)", "latency_times_s": "raw samples, JSON", "noisy": "IQR > 10 % of median",
    "useful_flops": "the spec's count; forward+backward = 3.5x forward", "executed_flops": "what the backend scores",
    "round_medians_s": "JSON, one per interleaved round", "speedup_reference": "the dense point of the same N",
    "speedup_round_median": "over the reference, per round", "probes": "[N, status] tried, JSON",
    "limited_by": "limit, latency_budget or a status", "distance_lo": "inclusive, query minus key position",
    "reachable_fraction": "the spec's prediction", "mismatches": "must be 0, else status wrong",
    "within_count": "items within reach, docs/retrieval.md; split_, answer_only_, beyond_ alike",
    "train_stop": "ceiling, plateau, max_steps, time_cap, nan", "learning_curve": "JSON [step, val accuracy, loss]",
    "eval_set": "distance, noise", "shard_lengths": "JSON", "bytes_match": "sent == predicted",
    "missing_ranks": "on failures", "target_key": "stable, <measurement>.<quantity>", "target": "its label",
    "numerator": "quantity over denominator, per round", "quantities": "medians of every quantity, JSON",
    "issue_target": "false for a context measurement", "round_min": "spread of the per-round ratios",
    "rounds_passed": "rounds that alone meet the limit",
}
NOTES["kind"] = ", ".join(KINDS)
ENVIRONMENT = ("env_torch", "env_xformers", "env_python", "env_device", "env_device_name", "env_cpu_model",
               "env_threads", "env_git_commit", "env_code_version", "env_load_avg_1m", "env_hostname")
# SHOOTOUT_STRICT_SCHEMA=1 (the test suite sets it): a column no schema names is an error too, so a job that
# starts writing a new column fails its tests until the schema (and so the README's table) names it. Missing
# values are let through: a frame of several kinds holds every kind's columns.
STRICT = bool(os.environ.get("SHOOTOUT_STRICT_SCHEMA"))


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))  # NaN of any float type, pd.NA, NaT
    except (TypeError, ValueError):
        return False  # a list or array: a value, not a missing one


def _fits(value: Any, kind: str) -> bool:
    if kind == TEXT:
        return isinstance(value, str)
    if kind == BOOL:
        return isinstance(value, (bool, np.bool_))
    if isinstance(value, (bool, np.bool_)):
        return False  # True is an int to Python, not a count or a latency
    if kind == INT:
        return isinstance(value, Integral) or (isinstance(value, Real) and (float(value).is_integer()
                                                                             or math.isinf(value)))
    if kind == NUMBER:
        return isinstance(value, Real)
    return isinstance(value, (list, tuple, dict, str, np.ndarray))  # JSON: a structure, or its text


def check_row(row: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first problem: a missing kind, status or config_hash, an unknown kind or
    status, or a value of the wrong type for its column."""
    for column in BASE_REQUIRED:
        if column not in row or _missing(row[column]):
            raise ValueError(f"result row lacks {column!r}: it has {sorted(row)}")
    kind = KINDS.get(row["kind"])
    if kind is None:
        raise ValueError(f"kind={row['kind']!r} is not a known kind of row; known: {sorted(KINDS)}")
    if row["status"] not in STATUSES:
        raise ValueError(f"status={row['status']!r} is not one of {STATUSES}")
    types = {**BASE, **kind.columns}
    for column, value in row.items():
        expected = types.get(column)
        if expected is None and STRICT and not column.startswith("env_") and not _missing(value):
            raise ValueError(f"{kind.name} row: column {column!r} is named by no schema (harness/schema.py)")
        if expected is not None and not _missing(value) and not _fits(value, expected):
            raise ValueError(f"{kind.name} row: {column}={value!r} ({type(value).__name__}) is not {expected}")


# The environment's columns that hold numbers (the others are text).
ENVIRONMENT_NUMBERS = {"env_threads": INT, "env_load_avg_1m": NUMBER}


def from_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows read back from a CSV as text (dtype=str, keep_default_na=False) with each column's schema type
    restored: a hex config_hash of digits stays text, empty cells of numbers become NaN, booleans bool."""
    kinds = [KINDS[name] for name in frame.get("kind", pd.Series(dtype=str)).unique() if name in KINDS]
    types: dict[str, str] = {**BASE, **ENVIRONMENT_NUMBERS}
    for kind in kinds:
        types.update(kind.columns)
    typed = frame.copy()
    for column in typed.columns:
        expected = types.get(column, TEXT)
        values = typed[column]
        if expected in (NUMBER, INT):
            typed[column] = pd.to_numeric(values.replace("", np.nan), errors="coerce")
        elif expected == BOOL:
            typed[column] = values.map({"True": True, "False": False, "true": True, "false": False}).astype(object)
            typed.loc[values == "", column] = None
        elif column != "reason":
            typed[column] = values.where(values != "", None)  # an empty cell was a missing value
    return typed


def columns(kind: str) -> tuple[str, ...]:
    """Every column a row of `kind` may hold, by the schema (the store's own first)."""
    return tuple(dict.fromkeys([*BASE, *KINDS[kind].columns]))


def markdown() -> str:
    """The README's table of output columns, made from the schema (a test checks the README holds it)."""
    def cell(names) -> str:
        return ", ".join(f"`{name}`" + (f" ({NOTES[name]})" if name in NOTES else "") for name in names)

    groups = {"attention columns": ATTENTION, "timing columns": TIMING}
    lines = [f"Every row: {cell(BASE)} and the environment ({', '.join(f'`{name}`' for name in ENVIRONMENT)}).",
             *(f"The {group}: {cell(columns)}." for group, columns in groups.items()), "",
             "| kind | columns |", "|---|---|"]
    for kind in KINDS.values():
        shared = [group for group, columns in groups.items() if set(columns) <= set(kind.columns)]
        own = [name for name in kind.columns if not any(name in groups[group] for group in shared)]
        lines.append(f"| {kind.name} | {'; '.join([*(f'the {group}' for group in shared), cell(own)])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
