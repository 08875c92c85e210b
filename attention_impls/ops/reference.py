"""The float64 references as selectable backends (small N only: they materialise N x N scores)."""

from __future__ import annotations

import torch

from .. import reference
from ..registry import AttentionBackend, register

_ALL_FLOATS = frozenset({torch.float64, torch.float32, torch.float16, torch.bfloat16})


class _Reference(AttentionBackend):
    name = "reference"
    description = "float64 oracle from the spec; O(N^2) memory"
    dtypes = _ALL_FLOATS


@register
class DenseReference(_Reference):
    mechanism = "dense"

    def forward(self, q, k, v, causal):
        return reference.dense(q, k, v, self.params, causal)


@register
class SlidingWindowReference(_Reference):
    mechanism = "sliding_window"

    def forward(self, q, k, v, causal):
        return reference.sliding_window(q, k, v, self.params, causal)


@register
class DilatedReference(_Reference):
    mechanism = "dilated"

    def forward(self, q, k, v, causal):
        return reference.dilated(q, k, v, self.params, causal)
