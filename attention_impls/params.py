"""Parameters of each attention mechanism, validated once, at build time.

Every check names the parameter, the value and what is allowed, so a user mistake never surfaces as a
traceback from deep inside a kernel. The semantics follow ../shared/spec/attention.md.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Sequence

MECHANISMS = ("dense", "sliding_window", "dilated")

# Coverage of a dilated configuration repeats with period lcm(segment_lengths) in position and lcm(rates) in head;
# past this many (position, head) pairs the check is deferred to the first call, where N and H are known.
_MAX_COVERAGE_CHECK = 1 << 24


def suggest(value: str, choices: Sequence[str]) -> str:
    """A ' (did you mean ...?)' hint for a misspelt name, or ''."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_mechanism(mechanism: Any) -> str:
    if not isinstance(mechanism, str) or mechanism not in MECHANISMS:
        hint = suggest(mechanism, MECHANISMS) if isinstance(mechanism, str) else ""
        raise ValueError(f"mechanism={mechanism!r} is not known{hint}; choose one of {list(MECHANISMS)}")
    return mechanism


def _check_scale(scale: Any) -> float | None:
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale={scale!r} must be a positive finite number, or None for 1/sqrt(head_dim)")
    return float(scale)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}={value!r} must be an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}={value!r} must be >= {minimum}")
    return value


@dataclass(frozen=True)
class DenseParams:
    scale: float | None = None

    mechanism = "dense"


@dataclass(frozen=True)
class SlidingWindowParams:
    """Query p sees keys j with p - left <= j <= p + right (inclusive, flash-attn's `window_size`)."""

    left: int
    right: int
    scale: float | None = None

    mechanism = "sliding_window"

    def window(self, causal: bool) -> tuple[int, int]:
        """(left, right) as applied: causal forces right = 0."""
        return (self.left, 0) if causal else (self.left, self.right)


@dataclass(frozen=True)
class DilatedParams:
    """LongNet branches: (segment_lengths[i], dilation_rates[i]) pairs; head h uses offset h mod rate."""

    segment_lengths: tuple[int, ...]
    dilation_rates: tuple[int, ...]
    scale: float | None = None

    mechanism = "dilated"

    def branches(self, seq_len: int) -> list[tuple[int, int]]:
        """(segment length clipped to seq_len, rate) per branch."""
        return [(min(w, seq_len), r) for w, r in zip(self.segment_lengths, self.dilation_rates)]


AttentionParams = DenseParams | SlidingWindowParams | DilatedParams

ALLOWED_PARAMS = {
    "dense": ("scale",),
    "sliding_window": ("window", "scale"),
    "dilated": ("segment_lengths", "dilation_rates", "scale"),
}


def make_params(mechanism: str, **params: Any) -> AttentionParams:
    """Validate user parameters for `mechanism` and return its frozen parameter object."""
    check_mechanism(mechanism)
    allowed = ALLOWED_PARAMS[mechanism]
    for name in params:
        if name not in allowed:
            raise TypeError(
                f"{mechanism} attention got an unexpected parameter {name!r}{suggest(name, allowed)}; "
                f"allowed: {list(allowed)}"
            )
    scale = _check_scale(params.get("scale"))
    if mechanism == "dense":
        return DenseParams(scale=scale)
    if mechanism == "sliding_window":
        if "window" not in params:
            raise TypeError("sliding_window attention needs window=<int> or window=[left, right]")
        left, right = _parse_window(params["window"])
        return SlidingWindowParams(left=left, right=right, scale=scale)
    for required in ("segment_lengths", "dilation_rates"):
        if required not in params:
            raise TypeError(f"dilated attention needs {required}=[...] (e.g. segment_lengths=[2048, 4096], "
                            f"dilation_rates=[1, 2])")
    segment_lengths = _parse_positive_list("segment_lengths", params["segment_lengths"])
    dilation_rates = _parse_positive_list("dilation_rates", params["dilation_rates"])
    if len(segment_lengths) != len(dilation_rates):
        raise ValueError(
            f"segment_lengths={list(segment_lengths)} and dilation_rates={list(dilation_rates)} must have "
            f"the same length (one rate per segment length), got {len(segment_lengths)} and {len(dilation_rates)}"
        )
    dilated = DilatedParams(segment_lengths, dilation_rates, scale=scale)
    period_positions = math.lcm(*segment_lengths)
    period_heads = math.lcm(*dilation_rates)
    if period_positions * period_heads <= _MAX_COVERAGE_CHECK:
        check_dilated_coverage(dilated, period_positions, period_heads)
    return dilated


def _parse_window(window: Any) -> tuple[int, int]:
    if isinstance(window, bool):
        raise TypeError(f"window={window!r} must be an int >= 0 or a pair [left, right] of ints >= 0")
    if isinstance(window, int):
        _check_int("window", window, 0)
        return window, window
    if isinstance(window, Sequence) and not isinstance(window, str) and len(window) == 2:
        left = _check_int("window[0] (left)", window[0], 0)
        right = _check_int("window[1] (right)", window[1], 0)
        return left, right
    raise TypeError(f"window={window!r} must be an int >= 0 or a pair [left, right] of ints >= 0")


def _parse_positive_list(name: str, values: Any) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name}={values!r} must be a non-empty list of positive ints")
    if len(values) == 0:
        raise ValueError(f"{name}={list(values)} must be a non-empty list of positive ints")
    for i, value in enumerate(values):
        _check_int(f"{name}[{i}]", value, 1)
    return tuple(int(v) for v in values)


def check_dilated_coverage(params: DilatedParams, num_positions: int, num_heads: int) -> None:
    """Reject a configuration where some (position, head) pair takes part in no branch (spec: Dilated).

    Membership, (p mod w) mod r == h mod r, does not depend on N (clipping a segment to N leaves p mod w
    unchanged for p < N), so checking positions [0, num_positions) and heads [0, num_heads) suffices when
    those are the periods lcm(w) and lcm(r), or the actual N and H.
    """
    import torch  # local: params must stay importable and cheap for config validation

    positions = torch.arange(num_positions)[:, None]
    heads = torch.arange(num_heads)[None, :]
    covered = torch.zeros(num_positions, num_heads, dtype=torch.bool)
    for w, r in zip(params.segment_lengths, params.dilation_rates):
        covered |= (positions % w) % r == heads % r
    if not bool(covered.all()):
        position, head = (int(x) for x in (~covered).nonzero()[0])
        raise ValueError(
            f"segment_lengths={list(params.segment_lengths)}, dilation_rates={list(params.dilation_rates)} leave "
            f"position {position} of head {head} in no branch (it takes part in branch i only when "
            f"(p mod w_i) mod r_i == h mod r_i); add a branch with dilation rate 1"
        )
