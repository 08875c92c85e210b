from __future__ import annotations

import torch
import torch.nn.functional as F

from ..dilated_merge import dilated_attention
from ..mechanisms import get_mechanism
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
    supports = frozenset({"decode"})  # a per-call scale: Attention rescales q

    def forward(self, q, k, v, causal):
        return dilated_attention(q, k, v, self.params, branch_kernel(q), causal)

    def forward_call(self, q, k, v, call):
        """A decoding step: the query attends to exactly the keys it sees (Mechanism.visible_keys), gathered per
        head, each key once with log c added to its score where c branches score it; the cost follows those keys,
        not the cache's length."""
        keys = [held.unique(return_counts=True) for held in get_mechanism("dilated").visible_keys(
            self.params, call.query_offset, call.key_length, q.shape[2], call.causal)]
        width = max(len(held) for held, _ in keys)
        index_HK = torch.zeros(len(keys), width, dtype=torch.long)
        bias_HK = torch.full((len(keys), width), float("-inf"), dtype=q.dtype)
        for head, (held, count) in enumerate(keys):
            index_HK[head, :len(held)] = held - call.key_start  # the call may hold a slice of the cache
            bias_HK[head, :len(held)] = count.to(q.dtype).log()
        index_HK, bias_HK = index_HK.to(q.device), bias_HK.to(q.device)
        rows = (index_HK * q.shape[2] + torch.arange(len(keys), device=q.device)[:, None]).flatten()
        k_BHKD, v_BHKD = self._gather(k, rows, width, "k"), self._gather(v, rows, width, "v")
        out_BH1D = F.scaled_dot_product_attention(q.transpose(1, 2), k_BHKD, v_BHKD, attn_mask=bias_HK[None, :, None],
                                                  scale=self.params.scale)
        return out_BH1D.transpose(1, 2)


    def _gather(self, x: torch.Tensor, rows: torch.Tensor, width: int, name: str) -> torch.Tensor:
        """(B, H, width, D): rows of x's (M * H, D) view per sequence (whole rows of D: indexing x[:, index, heads]
        and torch.gather were 5-25x slower on CPU). Without autograd into a buffer kept across steps: two fresh
        (H, width, D) tensors per step were page-faulted in anew each time, 10x the gather itself."""
        batch, heads, dim = x.shape[0], x.shape[2], x.shape[-1]
        shape = (batch, rows.numel(), dim)
        if torch.is_grad_enabled() and x.requires_grad:
            out = torch.stack([x[b].reshape(-1, dim).index_select(0, rows) for b in range(batch)])
        else:
            buffers = self.__dict__.setdefault("_decode_buffers", {})
            out = buffers.get(name)
            if out is None or out.shape != shape or out.dtype != x.dtype or out.device != x.device:
                out = buffers[name] = torch.empty(shape, dtype=x.dtype, device=x.device)
            for b in range(batch):
                torch.index_select(x[b].reshape(-1, dim), 0, rows, out=out[b])
        return out.view(batch, heads, width, dim)


def branch_kernel(q: torch.Tensor) -> LseKernel:
    """The fused kernel for these inputs: torch's CPU flash kernel, its CUDA flash kernel where that takes the
    inputs (fp16 / bf16, head_dim a multiple of 8 up to 256), and plain PyTorch otherwise."""
    if q.device.type == "cpu":
        return CpuFlashKernel()
    if cuda_flash_unavailable_reason() is None and cuda_flash_unsupported(q) is None:
        return CudaFlashKernel()
    return MathKernel()
