"""Sliding-window attention (spec: Sliding window): query p sees keys p - left .. p + right, inclusive."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .base import IndexFn, Mechanism, check_scale, compact, parse_window
from .dense import _triangle


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


def sliding_window_visible(left: int, right: int) -> IndexFn:
    """Key j is visible from query p when p - left <= j <= p + right."""

    def visible(query: torch.Tensor, key: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        offset = key - query
        return (offset >= -left) & (offset <= right)

    return visible


def _sum_clipped_ramp(start: int, count: int) -> int:
    """sum over t in [0, count) of max(0, start - t)."""
    terms = min(max(start, 0), count)
    return terms * start - _triangle(terms - 1) if terms > 0 else 0


def sliding_window_pairs(seq_len: int, left: int, right: int) -> int:
    """sum over p of |[max(0, p - left), min(N - 1, p + right)]|, in closed form."""
    full = seq_len * (left + right + 1)
    cut_left = _sum_clipped_ramp(left, seq_len)  # query p loses max(0, left - p) keys below 0
    cut_right = _sum_clipped_ramp(right, seq_len)  # and, by symmetry, max(0, right - (N - 1 - p)) above N - 1
    return full - cut_left - cut_right


def window_label(window: Any) -> str:
    """'w=256' (a symmetric pair reads as one number), 'w=[128,0]'."""
    if isinstance(window, (list, tuple)) and len(window) == 2 and window[0] == window[1]:
        window = window[0]
    return f"w={compact(window)}"


def window_size(window: Any) -> list[float]:
    if isinstance(window, (list, tuple)):
        return [float(w) for w in window]
    return [float(window)] if isinstance(window, (int, float)) else []


class SlidingWindow(Mechanism):
    name = "sliding_window"
    allowed_params = ("window", "scale")
    # CPU: chunked 122 ms, flex 173 ms, masked_sdpa 1868 ms (causal forward, N = 8192; results/perf/NOTES.md).
    # CUDA: the expected ranking, not yet measured here.
    priority = {"cpu": ("chunked", "flex", "masked_sdpa"),
                "cuda": ("flash", "flex", "xformers", "chunked", "masked_sdpa")}
    # masked 14.5 ms vs chunked 15.9 ms at N = 192; 20.0 vs 17.6 at 224 (B=32, H=2, D=32, forward+backward;
    # scripts/bench_small_n.py)
    small_n_priority = {"cpu": (192, ("masked_sdpa",))}
    example_params = {"window": 64}
    config_params = {"window": 256}

    def make_params(self, **params: Any) -> SlidingWindowParams:
        self.check_unknown(params)
        scale = check_scale(params.get("scale"))
        if "window" not in params:
            raise TypeError("sliding_window attention needs window=<int> or window=[left, right]")
        left, right = parse_window(params["window"])
        return SlidingWindowParams(left=left, right=right, scale=scale)

    def multiplicity(self, params: SlidingWindowParams, seq_len, num_heads, causal) -> IndexFn:
        visible = sliding_window_visible(*params.window(causal))

        def multiplicity(query, key, head):
            return (visible(query, key, head) & (head >= 0)).to(torch.int32)

        return multiplicity

    def pairs(self, params: SlidingWindowParams, seq_len, num_heads, causal) -> int:
        left, right = params.window(causal)
        return num_heads * sliding_window_pairs(seq_len, left, right)

    def reference_visible(self, params, query_positions, key_positions, num_heads, causal, key_length):
        left, right = params.window(causal)  # causal: right = 0, so j <= p
        query, key = query_positions[:, None], key_positions[None, :]
        visible = (key >= query - left) & (key <= query + right)
        return visible.long().expand(num_heads, -1, -1)

    def key_range(self, params, first_query, last_query, key_length, causal):
        left, right = params.window(causal)
        return first_query - left, last_query + right + 1

    def reach(self, params, seq_len, depth, causal, token_shift) -> int:
        return min(depth * (params.window(causal)[0] + int(token_shift)), seq_len - 1)

    def receptive_field(self, params, seq_len, depth, causal, token_shift) -> torch.Tensor:
        left, right = params.window(causal)
        left += int(token_shift)
        offset = torch.arange(seq_len)[None, :] - torch.arange(seq_len)[:, None]  # key - query
        return (offset >= -depth * left) & (offset <= depth * right)

    def picture_size(self, params: SlidingWindowParams, num_heads):
        return 1, 4 * (params.left + params.right + 1)

    def label(self, values: dict[str, Any]) -> str:
        return window_label(values.pop("window")) if "window" in values else ""

    def size(self, values: dict[str, Any]) -> list[float]:
        return window_size(values.get("window"))

    def param_strategy(self):
        from hypothesis import strategies as st

        return st.one_of(
            st.integers(0, 60).map(lambda w: {"window": w}),
            st.tuples(st.integers(0, 20), st.integers(0, 20)).map(lambda lr: {"window": list(lr)}),
        )


MECHANISM = SlidingWindow()
