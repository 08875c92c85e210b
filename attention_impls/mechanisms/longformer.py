"""Longformer-style attention (Beltagy et al. 2020): a sliding window plus global tokens (docs/mechanisms/
longformer.md). The first G positions are global: each of them sees every key, and every query sees them.
Causal: j <= p as everywhere, so a global query sees the keys before it and no later ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .base import IndexFn, Mechanism, check_int, check_scale, compact, parse_window
from .dense import _triangle
from .sliding_window import _sum_clipped_ramp, sliding_window_pairs, window_label, window_size


@dataclass(frozen=True)
class LongformerParams:
    """Query p sees keys p - left .. p + right (inclusive) and keys 0 .. G - 1; a query p < G sees every key."""

    left: int
    right: int
    global_tokens: int
    scale: float | None = None

    mechanism = "longformer"

    def window(self, causal: bool) -> tuple[int, int]:
        """(left, right) as applied: causal forces right = 0."""
        return (self.left, 0) if causal else (self.left, self.right)

    def globals_in(self, seq_len: int) -> int:
        """G clipped to N: a sequence shorter than G is all global (dense)."""
        return min(self.global_tokens, seq_len)


def longformer_pairs(seq_len: int, left: int, right: int, global_tokens: int, causal: bool) -> int:
    """Pairs scored over one head, in closed form: rows p < G see every key (causal: p + 1); a row p >= G sees its
    window and the G global keys, less the global keys already inside its window."""
    n, g = seq_len, min(global_tokens, seq_len)
    global_rows = _triangle(g) if causal else g * n
    rest = n - g
    if rest == 0:
        return global_rows
    # window sizes of rows g .. n-1: all rows' sum less rows 0 .. g-1 (each loses the keys its window would
    # have below 0 or above n - 1)
    first_rows = g * (left + right + 1) - _sum_clipped_ramp(left, g) - _sum_clipped_ramp(g - 1 - (n - 1 - right), g)
    windows = sliding_window_pairs(n, left, right) - first_rows
    # row p >= g's window holds min(g, max(0, g - (p - left))) global keys; with t = p - g that is
    # max(0, left - t) - max(0, left - t - g)
    overlap = _sum_clipped_ramp(left, rest) - _sum_clipped_ramp(left - g, rest)
    return global_rows + windows + rest * g - overlap


class Longformer(Mechanism):
    name = "longformer"
    allowed_params = ("window", "global_tokens", "scale")
    priority = {"cpu": ("band_global", "flex", "masked_sdpa"), "cuda": ("flex", "masked_sdpa")}
    # masked faster up to B x H x N^2 = 5.2e5 (B=1, H=8, N = 256: band_global 1.11x), band_global from 2.1e6 (0.51x)
    small_n_priority = {"cpu": (1 << 20, ("masked_sdpa",))}
    small_n_by = "scores"
    example_params = {"window": 32, "global_tokens": 8}
    config_params = {"window": 256, "global_tokens": 16}

    def make_params(self, **params: Any) -> LongformerParams:
        self.check_unknown(params)
        scale = check_scale(params.get("scale"))
        for required in ("window", "global_tokens"):
            if required not in params:
                raise TypeError("longformer attention needs window=<int> or window=[left, right], and "
                                "global_tokens=<int> (how many leading positions are global)")
        left, right = parse_window(params["window"])
        global_tokens = check_int("global_tokens", params["global_tokens"], 0)
        return LongformerParams(left=left, right=right, global_tokens=global_tokens, scale=scale)

    def multiplicity(self, params: LongformerParams, seq_len, num_heads, causal) -> IndexFn:
        left, right = params.window(causal)
        g = params.globals_in(seq_len)

        def multiplicity(query, key, head):
            offset = key - query
            # positions before 0 (a left-padded sequence's padding) are never global
            seen = ((offset >= -left) & (offset <= right)) | ((key >= 0) & (key < g)) | ((query >= 0) & (query < g))
            if causal:
                seen = seen & (key <= query)
            return (seen & (head >= 0)).to(torch.int32)

        return multiplicity

    def pairs(self, params: LongformerParams, seq_len, num_heads, causal) -> int:
        left, right = params.window(causal)
        return num_heads * longformer_pairs(seq_len, left, right, params.global_tokens, causal)

    def reference_visible(self, params, query_positions, key_positions, num_heads, causal, key_length):
        # docs/mechanisms/longformer.md, row by row: a global query (position < G) sees every key; any other query
        # sees its window and the global keys; causal keeps j <= p.
        left, right = params.window(causal)
        g = min(params.global_tokens, key_length)
        query, key = query_positions[:, None], key_positions[None, :]
        global_query = (query >= 0) & (query < g)
        global_key = (key >= 0) & (key < g)
        in_window = (key >= query - left) & (key <= query + right)
        seen = global_query | in_window | global_key
        if causal:
            seen = seen & (key <= query)
        return seen.long().expand(num_heads, -1, -1)

    def picture_size(self, params: LongformerParams, num_heads):
        return 1, max(32, 4 * (params.left + params.right + 1) + params.global_tokens)

    def label(self, values: dict[str, Any]) -> str:
        parts = [window_label(values.pop("window"))] if "window" in values else []
        if "global_tokens" in values:
            parts.append(f"g={compact(values.pop('global_tokens'))}")
        return " ".join(parts)

    def size(self, values: dict[str, Any]) -> list[float]:
        tokens = values.get("global_tokens")
        return window_size(values.get("window")) + ([float(tokens)] if isinstance(tokens, (int, float)) else [])

    def param_strategy(self):
        from hypothesis import strategies as st

        windows = st.one_of(st.integers(0, 30), st.lists(st.integers(0, 12), min_size=2, max_size=2))
        return st.fixed_dictionaries({"window": windows, "global_tokens": st.integers(0, 8)})


MECHANISM = Longformer()
