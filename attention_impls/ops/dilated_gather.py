from __future__ import annotations

import torch

from ..dilated_merge import dilated_attention
from ..kernels import CpuFlashKernel, CudaFlashKernel, LseKernel, MathKernel
from ..registry import AttentionBackend, register
from ._optional import cuda_flash_unavailable_reason, cuda_flash_unsupported


@register
class DilatedGather(AttentionBackend):
    """Each (segment, rate, offset) branch gathered to a dense batch, run through a fused kernel that returns
    log-sum-exp, merged by log-sum-exp in one in-place pass; exact backward through the mixture."""

    mechanism = "dilated"
    name = "gather"
    description = "gather branches, fused kernel with log-sum-exp (torch's flash on CPU and CUDA), merge by LSE"
    dtypes = frozenset({torch.float64, torch.float32, torch.float16, torch.bfloat16})

    def forward(self, q, k, v, causal):
        return dilated_attention(q, k, v, self.params, branch_kernel(q), causal)


def branch_kernel(q: torch.Tensor) -> LseKernel:
    """The fused kernel for these inputs: torch's CPU flash kernel, its CUDA flash kernel where that takes the
    inputs (fp16 / bf16, head_dim a multiple of 8 up to 256), and plain PyTorch otherwise."""
    if q.device.type == "cpu":
        return CpuFlashKernel()
    if cuda_flash_unavailable_reason() is None and cuda_flash_unsupported(q) is None:
        return CudaFlashKernel()
    return MathKernel()
