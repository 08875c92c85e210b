from __future__ import annotations

import torch

from ..kernels import CudaFlashKernel, LseFunction, default_scale
from ..registry import AttentionBackend, register
from ._optional import cuda_flash_unsupported, cuda_flash_window_unavailable_reason


@register
class SlidingWindowFlash(AttentionBackend):
    """The window inside torch's CUDA flash-attention 2 kernel (its window_size_left / right): tiles wholly outside
    the window are skipped, so the work is ~N x window, at flash attention's rate."""

    mechanism = "sliding_window"
    name = "flash"
    description = "torch's CUDA flash-attention 2 kernel with its own local window (skips tiles outside it)"
    devices = frozenset({"cuda"})
    backward_devices = frozenset({"cuda"})
    dtypes = frozenset({torch.float16, torch.bfloat16})

    @classmethod
    def unavailable_reason(cls):
        return cuda_flash_window_unavailable_reason()

    def forward(self, q, k, v, causal):
        if (why := cuda_flash_unsupported(q)) is not None:
            raise ValueError(f"sliding_window backend 'flash' cannot run these inputs: {why}")
        seq_len = q.shape[1]
        left, right = (min(side, seq_len - 1) for side in self.params.window(causal))
        kernel = CudaFlashKernel(window=(left, right))
        options = {"causal": False, "scale": default_scale(q.shape[-1], self.params.scale)}
        return LseFunction.apply(q, k, v, kernel.forward, kernel.backward, options)
