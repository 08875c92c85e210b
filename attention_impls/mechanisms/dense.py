"""Dense attention (spec: Dense): every query scores every key (causal: every key at or before it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .base import IndexFn, Mechanism, check_scale


@dataclass(frozen=True)
class DenseParams:
    scale: float | None = None

    mechanism = "dense"


def _triangle(n: int) -> int:
    return n * (n + 1) // 2


def dense_pairs(seq_len: int, causal: bool) -> int:
    return _triangle(seq_len) if causal else seq_len * seq_len


class Dense(Mechanism):
    name = "dense"
    allowed_params = ("scale",)
    priority = {"cpu": ("sdpa", "math"), "cuda": ("sdpa", "xformers", "math")}

    def make_params(self, **params: Any) -> DenseParams:
        self.check_unknown(params)
        return DenseParams(scale=check_scale(params.get("scale")))

    def multiplicity(self, params: DenseParams, seq_len: int, num_heads: int, causal: bool) -> IndexFn:
        def multiplicity(query: torch.Tensor, key: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
            seen = key <= query if causal else torch.ones_like(query - key + head, dtype=torch.bool)
            return (seen & (head >= 0)).to(torch.int32)

        return multiplicity

    def pairs(self, params: DenseParams, seq_len: int, num_heads: int, causal: bool) -> int:
        return num_heads * dense_pairs(seq_len, causal)

    def reference_visible(self, params, query_positions, key_positions, num_heads, causal, key_length):
        query, key = query_positions[:, None], key_positions[None, :]
        seen = (key <= query) if causal else torch.ones_like(query - key, dtype=torch.bool)
        return seen.long().expand(num_heads, -1, -1)

    def reach(self, params, seq_len, depth, causal, token_shift) -> int:
        return seq_len - 1

    def receptive_field(self, params, seq_len, depth, causal, token_shift) -> torch.Tensor:
        field = torch.ones(seq_len, seq_len, dtype=torch.bool)
        return torch.tril(field) if causal else field

    def param_strategy(self):
        from hypothesis import strategies as st

        return st.just({})


MECHANISM = Dense()
