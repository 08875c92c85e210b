from __future__ import annotations

from ..registry import AttentionBackend, register
from ._optional import xformers_unavailable_reason


@register
class SlidingWindowXformers(AttentionBackend):
    mechanism = "sliding_window"
    name = "xformers"
    description = "xformers memory_efficient_attention with LocalAttentionFromBottomRightMask"
    devices = frozenset({"cuda"})
    backward_devices = frozenset({"cuda"})

    @classmethod
    def unavailable_reason(cls):
        return xformers_unavailable_reason()

    def forward(self, q, k, v, causal):
        import xformers.ops as xops

        left, right = self.params.window(causal)
        n = q.shape[1]
        # xformers' mask: q - window_left <= k + s <= q + window_right, s = 0 for self-attention: our definition
        bias = xops.fmha.attn_bias.LocalAttentionFromBottomRightMask(window_left=min(left, n), window_right=min(right, n))
        return xops.memory_efficient_attention(q, k, v, attn_bias=bias, scale=self.params.scale)
