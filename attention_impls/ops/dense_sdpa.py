from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import AttentionBackend, register


@register
class DenseSdpa(AttentionBackend):
    mechanism = "dense"
    name = "sdpa"
    description = "torch.nn.functional.scaled_dot_product_attention (flash / memory-efficient / math, torch picks)"
    dtypes = frozenset({torch.float64, torch.float32, torch.float16, torch.bfloat16})

    def forward(self, q, k, v, causal):
        out_BHND = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal, scale=self.params.scale
        )
        return out_BHND.transpose(1, 2)
