from __future__ import annotations

import torch

from ..kernels import default_scale
from ..registry import AttentionBackend, register


@register
class DenseMath(AttentionBackend):
    mechanism = "dense"
    name = "math"
    description = "plain softmax(QK^T)V in PyTorch ops; materialises N x N scores"
    dtypes = frozenset({torch.float64, torch.float32, torch.float16, torch.bfloat16})

    def forward(self, q, k, v, causal):
        scale = default_scale(q.shape[-1], self.params.scale)
        scores_BHNN = torch.einsum("bnhd,bmhd->bhnm", q, k) * scale
        if causal:
            n = q.shape[1]
            future = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
            scores_BHNN = scores_BHNN.masked_fill(future, float("-inf"))
        # softmax in at least float32: half-precision exponent sums lose the tail
        weights = torch.softmax(scores_BHNN, dim=-1, dtype=torch.promote_types(q.dtype, torch.float32))
        return torch.einsum("bhnm,bmhd->bnhd", weights.to(v.dtype), v)
