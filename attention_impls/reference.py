"""Float64 references, written from ../shared/spec/attention.md alone: materialise scores, mask, softmax.

These are the test oracle. They are O(N^2) in memory and slow on purpose; each mechanism writes its own
(attention_impls/mechanisms/<name>.py, `reference_multiplicity`), apart from its fast index function.
Tensors are (batch, seq, heads, head_dim); outputs are returned in the input dtype.
"""

from __future__ import annotations

import torch

from .mechanisms import get_mechanism
from .mechanisms.dilated import reference_dilated_multiplicity as dilated_multiplicity


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params, causal: bool) -> torch.Tensor:
    """Any mechanism's float64 reference output, in q's dtype."""
    return get_mechanism(params).reference(q, k, v, params, causal)


def dense(q, k, v, params, causal: bool) -> torch.Tensor:
    return attention(q, k, v, params, causal)


def sliding_window(q, k, v, params, causal: bool) -> torch.Tensor:
    return attention(q, k, v, params, causal)


def dilated(q, k, v, params, causal: bool) -> torch.Tensor:
    return attention(q, k, v, params, causal)


__all__ = ["attention", "dense", "dilated", "dilated_multiplicity", "sliding_window"]
