from __future__ import annotations

import torch

from ..kernels import CudaFlashKernel, LseFunction, default_scale
from ..registry import AttentionBackend, register
from ._optional import (
    cuda_flash_unsupported,
    cuda_flash_window_unavailable_reason,
    flash_device_unsupported,
    flash_head_dim_unsupported,
)


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

    @classmethod
    def not_supported_reasons(cls, device, dtype, causal, requires_grad, head_dim=None, features=frozenset()):
        reasons = super().not_supported_reasons(device, dtype, causal, requires_grad, head_dim, features)
        if head_dim is not None and (why := flash_head_dim_unsupported(head_dim)) is not None:
            reasons.append(why)  # backend=None then picks the next backend instead of failing in forward
        if (why := flash_device_unsupported(device)) is not None:
            reasons.append(why)  # likewise on a GPU older than the kernel (before Ampere)
        return reasons

    def forward(self, q, k, v, causal):
        if (why := cuda_flash_unsupported(q)) is not None:
            raise ValueError(f"sliding_window backend 'flash' cannot run these inputs: {why}")
        seq_len = q.shape[1]
        left, right = (min(side, seq_len - 1) for side in self.params.window(causal))
        kernel = CudaFlashKernel(window=(left, right))
        options = {"causal": False, "scale": default_scale(q.shape[-1], self.params.scale)}
        return LseFunction.apply(q, k, v, kernel.forward, kernel.backward, options)
