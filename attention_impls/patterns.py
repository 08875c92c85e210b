"""Which (query, key) pairs each mechanism scores, and the exact FLOP count.

Each mechanism's index function and closed-form pair count live in its module (attention_impls/mechanisms/);
the FlexAttention backends (mask_mod / score_mod), the masked baselines and the pattern pictures all call them.
The count follows ../shared/spec/attention.md, "What counts as a FLOP": never an N x N mask.
"""

from __future__ import annotations

from .mechanisms import IndexFn, get_mechanism
from .mechanisms.dense import dense_pairs
from .mechanisms.dilated import dilated_multiplicity, dilated_pairs
from .mechanisms.sliding_window import sliding_window_pairs, sliding_window_visible

BACKWARD_FLOP_FACTOR = 2.5  # flash-attn's convention: backward = 2.5 x forward


def useful_pairs(params, seq_len: int, num_heads: int, causal: bool) -> int:
    """(query, key) pairs scored for one batch element, summed over heads."""
    return get_mechanism(params).pairs(params, seq_len, num_heads, causal)


def useful_flops(params, batch: int, seq_len: int, num_heads: int, head_dim: int, causal: bool,
                 backward: bool = False) -> float:
    """Forward FLOPs = 4 * head_dim * pairs; forward+backward = 3.5 x that."""
    forward = 4.0 * head_dim * batch * useful_pairs(params, seq_len, num_heads, causal)
    return forward * (1.0 + BACKWARD_FLOP_FACTOR) if backward else forward


def multiplicity(params, seq_len: int, num_heads: int, causal: bool) -> IndexFn:
    """How many times query p scores key j in head h, for any mechanism (0 = never)."""
    return get_mechanism(params).multiplicity(params, seq_len, num_heads, causal)


__all__ = ["BACKWARD_FLOP_FACTOR", "IndexFn", "dense_pairs", "dilated_multiplicity", "dilated_pairs", "multiplicity",
           "sliding_window_pairs", "sliding_window_visible", "useful_flops", "useful_pairs"]
