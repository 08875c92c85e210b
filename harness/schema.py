"""What a stored row of each kind holds: its columns and their types, checked on every write.

`ResultsStore.append` checks each row against its kind's schema, so a job that writes a misspelt kind, a row
without its kind, status or config_hash, or a value of the wrong type (a latency as text, a count as a list) fails at the write
that made it, naming the column, instead of surfacing as a blank cell in a report. Columns a schema does not
name are allowed (the environment fingerprint, a backend's extra diagnostics). The report's test fixtures are
checked against it; the report's tables still list their own (derived) columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Mapping

import numpy as np
import pandas as pd

STATUSES = ("ok", "wrong", "oom", "timeout", "unsupported", "nan", "error", "skipped")

# Value types: what a cell may hold (None or NaN always may, unless the column is required).
TEXT, INT, NUMBER, BOOL, JSON = "text", "int", "number", "bool", "json"


@dataclass(frozen=True)
class Kind:
    """One kind of row: the types of the columns it may have (every row must have BASE_REQUIRED)."""

    name: str
    columns: Mapping[str, str]


# Every row, whatever wrote it (the store fills experiment, job_id, timestamp and reason).
BASE = {"experiment": TEXT, "kind": TEXT, "status": TEXT, "reason": TEXT, "config_hash": TEXT, "job_id": TEXT,
        "timestamp": TEXT}
BASE_REQUIRED = ("kind", "status", "config_hash")

# What identifies the attention a row measured, in every kind that measures one.
ATTENTION = {"variant": TEXT, "name": TEXT, "mechanism": TEXT, "backend": TEXT, "backend_requested": TEXT,
             "params": JSON, "config": JSON, "dtype": TEXT, "device": TEXT, "causal": BOOL, "seq_len": INT,
             "heads": INT, "head_dim": INT, "batch": INT}

# The latency columns of measure.Timing.columns(), shared by every timed kind.
TIMING = {"latency_median_s": NUMBER, "latency_iqr_s": NUMBER, "latency_min_s": NUMBER, "latency_mean_s": NUMBER,
          "latency_count": INT, "calls_per_sample": INT, "latency_times_s": JSON, "noisy": BOOL,
          "timing_method": TEXT}

SPEED = {**ATTENTION, **TIMING, "pass": TEXT, "tokens_per_s": NUMBER, "peak_mem_bytes": NUMBER, "mem_method": TEXT,
         "useful_flops": NUMBER, "executed_flops": NUMBER, "flops_per_s": NUMBER, "executed_flops_per_s": NUMBER,
         "matmul_peak_flops_per_s": NUMBER, "matmul_method": TEXT, "fraction_of_peak": NUMBER, "compile_s": NUMBER,
         "first_call_s": NUMBER, "max_abs_err": NUMBER, "max_abs_grad_err": NUMBER, "threads": INT, "rounds": INT,
         "round_medians_s": JSON, "speedup_round_median": NUMBER, "speedup_round_min": NUMBER,
         "speedup_round_max": NUMBER}

BY_DISTANCE = {"task": TEXT, "layers": INT, "distance_lo": INT, "distance_hi": INT, "count": INT,
               "accuracy": NUMBER, "reachable_fraction": NUMBER, "theoretical_reach": INT}

KINDS: dict[str, Kind] = {kind.name: kind for kind in (
    Kind("speed", SPEED),
    Kind("max_seq_len", {**ATTENTION, "pass": TEXT, "max_seq_len": INT, "first_failing_seq_len": INT,
                                         "limited_by": TEXT}),
    Kind("probe", {**ATTENTION, **BY_DISTANCE, "direction": TEXT, "mismatches": INT,
                                   "seconds": NUMBER}),
    Kind("retrieval", {**ATTENTION, **BY_DISTANCE, "task_layout": TEXT, "train_seq_len": INT,
                                       "d_model": INT, "token_shift": BOOL, "chance": NUMBER, "sweep_id": TEXT,
                                       "lrs": JSON, "lr": NUMBER, "seed": INT, "train_steps": INT,
                                       "train_sequences": INT, "train_seconds": NUMBER, "train_stop": TEXT,
                                       "converged": BOOL, "plateaued": BOOL, "val_accuracy": NUMBER,
                                       "val_ceiling": NUMBER, "learning_curve": JSON, "eval_set": TEXT,
                                       "correct": INT, "token_accuracy": NUMBER}),
    Kind("distributed", {**ATTENTION, **TIMING, "pass": TEXT, "world_size": INT, "rank": INT}),
    Kind("perf_target", {"target_key": TEXT, "target": TEXT, "measured": NUMBER, "limit": NUMBER,
                                          "comparison": TEXT, "passed": BOOL, "issue_target": BOOL, "detail": TEXT,
                                          "round_min": NUMBER, "round_max": NUMBER, "round_count": INT,
                                          "rounds_passed": INT, "smoke": BOOL}),
)}


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
        if expected is not None and not _missing(value) and not _fits(value, expected):
            raise ValueError(f"{kind.name} row: {column}={value!r} ({type(value).__name__}) is not {expected}")


def columns(kind: str) -> tuple[str, ...]:
    """Every column a row of `kind` may hold, by the schema (the store's own first)."""
    return tuple(dict.fromkeys([*BASE, *KINDS[kind].columns]))
