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


HEAD_OFFSETS = ("cyclic", "blocked")


@dataclass(frozen=True)
class DilatedParams:
    """LongNet branches: (segment_lengths[i], dilation_rates[i]) pairs; head h's offset in a branch of rate r is
    h mod r (`cyclic`, the paper's rule) or h // ceil(H / r) (`blocked`, microsoft/torchscale's code)."""

    segment_lengths: tuple[int, ...]
    dilation_rates: tuple[int, ...]
    scale: float | None = None
    head_offsets: str = "cyclic"

    mechanism = "dilated"

    def branches(self, seq_len: int) -> list[tuple[int, int]]:
        """(segment length clipped to seq_len, rate) per branch."""
        return [(min(w, seq_len), r) for w, r in zip(self.segment_lengths, self.dilation_rates)]

    def offset(self, head, rate: int, num_heads: int | None):
        """Head `head`'s offset in a branch of this rate (ints or integer tensors). `blocked` depends on the head
        count, so it needs num_heads; `cyclic` does not."""
        if self.head_offsets == "cyclic":
            return head % rate
        if num_heads is None:
            raise ValueError("head_offsets='blocked' needs the number of heads (h // ceil(H / r))")
        return head // _heads_per_offset(rate, num_heads)

    def offsets(self, rate: int, num_heads: int) -> range:
        """The offsets some head has in a branch of this rate (fewer than rate when H < rate)."""
        if self.head_offsets == "cyclic":
            return range(min(rate, num_heads))
        return range(-(-num_heads // _heads_per_offset(rate, num_heads)))

    def heads_with_offset(self, offset: int, rate: int, num_heads: int) -> slice:
        """The heads whose offset is `offset`, as a slice of the head axis: every r-th head (cyclic) or one
        contiguous block of ceil(H / r) heads, the last block shorter when r does not divide H (blocked)."""
        if self.head_offsets == "cyclic":
            return slice(offset, None, rate)
        block = _heads_per_offset(rate, num_heads)
        return slice(offset * block, min((offset + 1) * block, num_heads))


def _heads_per_offset(rate: int, num_heads: int) -> int:
    return -(-num_heads // rate)  # ceil(H / r) without floats


AttentionParams = DenseParams | SlidingWindowParams | DilatedParams

ALLOWED_PARAMS = {
    "dense": ("scale",),
    "sliding_window": ("window", "scale"),
    "dilated": ("segment_lengths", "dilation_rates", "scale", "head_offsets"),
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
    head_offsets = params.get("head_offsets", "cyclic")
    if not isinstance(head_offsets, str) or head_offsets not in HEAD_OFFSETS:
        hint = suggest(head_offsets, HEAD_OFFSETS) if isinstance(head_offsets, str) else ""
        raise ValueError(f"head_offsets={head_offsets!r} is not known{hint}; choose one of {list(HEAD_OFFSETS)} "
                         "(cyclic: h mod r, the paper's; blocked: h // ceil(H / r), microsoft/torchscale's)")
    dilated = DilatedParams(segment_lengths, dilation_rates, scale=scale, head_offsets=head_offsets)
    period_positions = math.lcm(*segment_lengths)
    period_heads = math.lcm(*dilation_rates)
    # Blocked offsets depend on H, which is known only at the first call; cyclic ones repeat with period lcm(r).
    if head_offsets == "cyclic" and period_positions * period_heads <= _MAX_COVERAGE_CHECK:
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

    Membership, (p mod w) mod r == offset(h), does not depend on N (clipping a segment to N leaves p mod w
    unchanged for p < N), so checking positions [0, num_positions) and heads [0, num_heads) suffices when
    those are the periods lcm(w) and lcm(r), or the actual N and H. Blocked offsets (h // ceil(H / r)) have no
    period in h: num_heads must be the actual H.
    """
    import torch  # local: params must stay importable and cheap for config validation

    positions = torch.arange(num_positions)[:, None]
    heads = torch.arange(num_heads)[None, :]
    covered = torch.zeros(num_positions, num_heads, dtype=torch.bool)
    for w, r in zip(params.segment_lengths, params.dilation_rates):
        covered |= (positions % w) % r == params.offset(heads, r, num_heads)
    if not bool(covered.all()):
        position, head = (int(x) for x in (~covered).nonzero()[0])
        rule = "h mod r_i" if params.head_offsets == "cyclic" else f"h // ceil({num_heads} / r_i)"
        raise ValueError(
            f"segment_lengths={list(params.segment_lengths)}, dilation_rates={list(params.dilation_rates)} leave "
            f"position {position} of head {head} in no branch (it takes part in branch i only when "
            f"(p mod w_i) mod r_i == {rule}); add a branch with dilation rate 1"
        )
