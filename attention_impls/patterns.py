"""Which (query, key) pairs each mechanism scores, as small index functions, and the exact FLOP count.

The index functions take broadcastable integer tensors (query position, key position, head) and are shared by
the FlexAttention backends (as mask_mod / score_mod) and by the pattern pictures. The pair counts are closed
forms of the same definitions (../shared/spec/attention.md, "What counts as a FLOP"): never an N x N mask.
"""

from __future__ import annotations

from typing import Callable

import torch

from .params import AttentionParams, DenseParams, DilatedParams, SlidingWindowParams

IndexFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

BACKWARD_FLOP_FACTOR = 2.5  # flash-attn's convention: backward = 2.5 x forward


def sliding_window_visible(left: int, right: int) -> IndexFn:
    """Key j is visible from query p when p - left <= j <= p + right."""

    def visible(query: torch.Tensor, key: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        offset = key - query
        return (offset >= -left) & (offset <= right)

    return visible


def dilated_multiplicity(params: DilatedParams, seq_len: int, causal: bool, num_heads: int | None = None) -> IndexFn:
    """How many branches score the pair (p, j) for head h: 0 means masked; c > 0 adds log c to the score.

    num_heads: H, which blocked head offsets (h // ceil(H / r)) need; cyclic ones (h mod r) do not."""
    branches = params.branches(seq_len)
    if params.head_offsets != "cyclic" and num_heads is None:
        raise ValueError(f"head_offsets={params.head_offsets!r}: dilated_multiplicity needs num_heads")

    def multiplicity(query: torch.Tensor, key: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        count = torch.zeros_like(query - key + head, dtype=torch.int32)
        for segment, rate in branches:
            offset = params.offset(head, rate, num_heads)
            same_segment = (query // segment) == (key // segment)
            takes_part = ((query % segment) % rate == offset) & ((key % segment) % rate == offset)
            count = count + (same_segment & takes_part).to(torch.int32)
        if causal:
            count = torch.where(key <= query, count, torch.zeros_like(count))
        return count

    return multiplicity


def _triangle(n: int) -> int:
    return n * (n + 1) // 2


def _sum_clipped_ramp(start: int, count: int) -> int:
    """sum over t in [0, count) of max(0, start - t)."""
    terms = min(max(start, 0), count)
    return terms * start - _triangle(terms - 1) if terms > 0 else 0


def dense_pairs(seq_len: int, causal: bool) -> int:
    return _triangle(seq_len) if causal else seq_len * seq_len


def sliding_window_pairs(seq_len: int, left: int, right: int) -> int:
    """sum over p of |[max(0, p - left), min(N - 1, p + right)]|, in closed form."""
    full = seq_len * (left + right + 1)
    cut_left = _sum_clipped_ramp(left, seq_len)  # query p loses max(0, left - p) keys below 0
    cut_right = _sum_clipped_ramp(right, seq_len)  # and, by symmetry, max(0, right - (N - 1 - p)) above N - 1
    return full - cut_left - cut_right


def _participants(length: int, rate: int, offset: int) -> int:
    """Positions t in [0, length) with t mod rate == offset."""
    return 0 if offset >= length else (length - offset + rate - 1) // rate


def dilated_pairs(seq_len: int, num_heads: int, params: DilatedParams, causal: bool) -> int:
    """Pairs summed over heads and branches; a pair seen by c branches counts c times."""
    total = 0
    for segment, rate in params.branches(seq_len):
        full_segments, tail = divmod(seq_len, segment)
        for head in range(num_heads):
            offset = params.offset(head, rate, num_heads)
            for length, copies in ((segment, full_segments), (tail, 1)):
                n = _participants(length, rate, offset)
                total += copies * (_triangle(n) if causal else n * n)
    return total


def useful_pairs(params: AttentionParams, seq_len: int, num_heads: int, causal: bool) -> int:
    """(query, key) pairs scored for one batch element, summed over heads."""
    if isinstance(params, DenseParams):
        return num_heads * dense_pairs(seq_len, causal)
    if isinstance(params, SlidingWindowParams):
        left, right = params.window(causal)
        return num_heads * sliding_window_pairs(seq_len, left, right)
    return dilated_pairs(seq_len, num_heads, params, causal)


def useful_flops(
    params: AttentionParams,
    batch: int,
    seq_len: int,
    num_heads: int,
    head_dim: int,
    causal: bool,
    backward: bool = False,
) -> float:
    """Forward FLOPs = 4 * head_dim * pairs; forward+backward = 3.5 x that."""
    forward = 4.0 * head_dim * batch * useful_pairs(params, seq_len, num_heads, causal)
    return forward * (1.0 + BACKWARD_FLOP_FACTOR) if backward else forward
