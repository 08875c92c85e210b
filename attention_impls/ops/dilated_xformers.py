from __future__ import annotations

from ..dilated_merge import dilated_attention
from ..kernels import XformersKernel
from ..registry import AttentionBackend, register
from ._optional import xformers_unavailable_reason


@register
class DilatedXformers(AttentionBackend):
    mechanism = "dilated"
    name = "xformers"
    description = "xformers partial attention (out, lse) per branch, merged by LSE; its backward per branch"
    devices = frozenset({"cuda"})
    backward_devices = frozenset({"cuda"})

    @classmethod
    def unavailable_reason(cls):
        return xformers_unavailable_reason()

    def forward(self, q, k, v, causal):
        return dilated_attention(q, k, v, self.params, XformersKernel(), causal)
