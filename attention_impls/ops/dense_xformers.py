from __future__ import annotations

import torch

from ..registry import AttentionBackend, register
from ._optional import xformers_unavailable_reason


@register
class DenseXformers(AttentionBackend):
    mechanism = "dense"
    name = "xformers"
    description = "xformers.ops.memory_efficient_attention (cutlass / flash kernels)"
    devices = frozenset({"cuda"})
    backward_devices = frozenset({"cuda"})

    @classmethod
    def unavailable_reason(cls):
        return xformers_unavailable_reason()

    def forward(self, q, k, v, causal):
        import xformers.ops as xops

        bias = xops.fmha.attn_bias.LowerTriangularMask() if causal else None
        return xops.memory_efficient_attention(q, k, v, attn_bias=bias, scale=self.params.scale)
