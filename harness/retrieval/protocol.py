"""The rules that turn training runs into numbers a retrieval comparison can defend.

One place for each: when a run has learnt what its pattern allows (`ceiling`, `plateaued`), which learning
rate of a sweep is kept (`select_lr`), and the interval around a mean over seeds (`mean_interval`). The runner
(run.py, train.py) and the report (harness.report.tables) both call these, so what stops a run and what the
report calls converged are the same rule.
"""

from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

CONFIDENCE = 0.95
# Stop reasons that mean the run converged: it reached its pattern's ceiling or stopped improving.
CONVERGED_STOPS = ("ceiling", "plateau")


def ceiling(reachable_share: float, chance: float) -> float:
    """The most a model can score when it answers every reachable item and guesses the rest."""
    if not 0.0 <= reachable_share <= 1.0:
        raise ValueError(f"reachable_share={reachable_share} must be in [0, 1]")
    return reachable_share + chance * (1.0 - reachable_share)


def plateaued(val_accuracies: Sequence[float], patience: int, min_delta: float,
              floor: float = -math.inf) -> bool:
    """True when the last `patience` validation checks improved on the best before them by at most `min_delta`.

    Needs more than `patience` checks: a run that has not been checked that often has not had the chance to
    plateau. floor: a run whose best is still below it has not started learning (MQAR sits at chance before it
    jumps), which is not a plateau."""
    if patience < 1:
        raise ValueError(f"patience={patience} must be >= 1")
    values = [float(v) for v in val_accuracies]
    if len(values) <= patience or max(values) < floor:
        return False
    before, recent = values[:-patience], values[-patience:]
    return max(recent) <= max(before) + min_delta


def learning_floor(chance: float, ceiling_value: float, progress: float) -> float:
    """The validation accuracy a run must pass before a plateau counts: `progress` of the way from chance to the
    ceiling."""
    return chance + progress * (ceiling_value - chance)


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE,
                  bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float, float]:
    """(mean, low, high): Student's t interval of the mean over independent runs (seeds), clipped to `bounds`
    (an accuracy's interval never leaves [0, 1]).

    One run gives no interval (low = high = nan): its spread over seeds is unknown, and a binomial interval over
    its items would hide the seed-to-seed variation that dominates these runs."""
    clean = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not clean:
        return math.nan, math.nan, math.nan
    mean = sum(clean) / len(clean)
    if len(clean) < 2:
        return mean, math.nan, math.nan
    from scipy import stats

    sem = stats.sem(clean)
    if sem == 0:
        return mean, mean, mean
    low, high = stats.t.interval(confidence, len(clean) - 1, loc=mean, scale=sem)
    return mean, max(float(low), bounds[0]), min(float(high), bounds[1])


def binomial_interval(correct: float, count: float, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a proportion correct / count: the sampling noise of one bucket's items, which
    the interval over seeds does not show (and which is all there is with one seed). (NaN, NaN) for no items."""
    from scipy.stats import norm

    if not count or count <= 0 or math.isnan(count):
        return math.nan, math.nan
    z = float(norm.ppf(0.5 + confidence / 2))
    p = correct / count
    centre = (p + z * z / (2 * count)) / (1 + z * z / count)
    half = z * math.sqrt(p * (1 - p) / count + z * z / (4 * count * count)) / (1 + z * z / count)
    return max(0.0, centre - half), min(1.0, centre + half)


def select_lr(runs: pd.DataFrame) -> pd.Series:
    """The learning rate kept per sweep: best validation accuracy at the sweep's first seed.

    `runs` has one row per training run with columns sweep_id, lr, seed, val_accuracy. Every rate of a sweep is
    trained at its smallest seed, so that is where they compete; ties go to the smaller rate. Returns lr indexed
    by sweep_id."""
    missing = {"sweep_id", "lr", "seed", "val_accuracy"} - set(runs.columns)
    if missing:
        raise ValueError(f"select_lr needs columns {sorted(missing)}")
    first_seed = runs.groupby("sweep_id")["seed"].transform("min")
    competing = runs[runs["seed"] == first_seed].assign(
        score=pd.to_numeric(runs["val_accuracy"], errors="coerce").fillna(-1.0))
    ordered = competing.sort_values(["sweep_id", "score", "lr"], ascending=[True, False, True], kind="stable")
    return ordered.drop_duplicates("sweep_id").set_index("sweep_id")["lr"]
