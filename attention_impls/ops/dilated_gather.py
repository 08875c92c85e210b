from __future__ import annotations

import torch

from ..dilated_merge import dilated_attention
from ..kernels import CpuFlashKernel, MathKernel
from ..registry import AttentionBackend, register


@register
class DilatedGather(AttentionBackend):
    """Each (segment, rate, offset) branch gathered to a dense batch, run through a fused kernel that returns
    log-sum-exp, merged by log-sum-exp in one in-place pass; exact backward through the mixture."""

    mechanism = "dilated"
    name = "gather"
    description = "gather branches, fused kernel with log-sum-exp (flash on CPU), merge by LSE"
    dtypes = frozenset({torch.float64, torch.float32, torch.float16, torch.bfloat16})

    def forward(self, q, k, v, causal):
        kernel = CpuFlashKernel() if q.device.type == "cpu" else MathKernel()
        return dilated_attention(q, k, v, self.params, kernel, causal)
