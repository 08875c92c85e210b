from __future__ import annotations

import torch

from ..dilated_merge import dilated_attention
from ..mechanisms import get_mechanism
from ..kernels import CpuFlashKernel, CudaFlashKernel, LseKernel, MathKernel, default_scale
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
    supports = frozenset({"decode", "grouped_heads"})  # a per-call scale: Attention rescales q

    def forward(self, q, k, v, causal):
        return dilated_attention(q, k, v, self.params, branch_kernel(q), causal)

    def forward_call(self, q, k, v, call):
        """A decoding step: in each branch the query's segment and residue pick the heads that take part and the
        keys they see (`Dilated.visible_branches`), a strided slice of the cache, which the kernel reads in place;
        the branches' (out, lse) merge by log-sum-exp, so a key scored by c branches counts c times, as in the
        whole-sequence call. One kernel call per branch, nothing gathered or padded: the cost
        follows the keys seen, not the cache's length (results/perf/NOTES.md). With grouped KV heads only the seen
        rows of the branch's KV heads are copied, never the whole cache."""
        if "decode" not in call.features:  # grouped heads in a whole-sequence call: the kernels want every head
            group = q.shape[2] // call.kv_heads
            return self.forward(q, k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2), call.causal)
        batch, _, heads, dim = q.shape
        group, scale = heads // k.shape[2], default_scale(dim, self.params.scale)
        # under autograd plain PyTorch (the fused CPU kernel has no gradient for its lse, which the merge needs)
        differentiable = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
        kernel = MathKernel() if differentiable else branch_kernel(q)
        parts = []
        for taking, seen in get_mechanism("dilated").visible_branches(self.params, call.query_offset, call.key_length,
                                                                      heads, call.causal):
            rows = slice(seen.start - call.key_start, seen.stop - call.key_start, seen.step)
            if group == 1:
                keys, values = k[:, rows, taking], v[:, rows, taking]
            else:
                index = torch.tensor([head // group for head in range(heads)[taking]], device=k.device)
                keys, values = k[:, rows].index_select(2, index), v[:, rows].index_select(2, index)
            parts.append((taking, *kernel.forward(q[:, :, taking], keys, values, False, scale)))
        compute = torch.promote_types(q.dtype, torch.float32)
        outs = torch.zeros(len(parts), batch, heads, dim, dtype=compute, device=q.device)
        lses = torch.full((len(parts), batch, heads), float("-inf"), dtype=compute, device=q.device)
        for index, (taking, out, lse) in enumerate(parts):
            outs[index, :, taking] = out[:, 0].to(compute)
            lses[index, :, taking] = lse[..., 0].to(compute)
        total = torch.logsumexp(lses, dim=0)
        # a head no branch reaches here (no rate-1 branch) outputs 0, as the spec's row with no visible key
        weights = torch.where(torch.isneginf(total), 0.0, (lses - total).exp())
        return (weights[..., None] * outs).sum(0)[:, None].to(q.dtype)


def branch_kernel(q: torch.Tensor) -> LseKernel:
    """The fused kernel for these inputs: torch's CPU flash kernel, its CUDA flash kernel where that takes the
    inputs (fp16 / bf16, head_dim a multiple of 8 up to 256), and plain PyTorch otherwise."""
    if q.device.type == "cpu":
        return CpuFlashKernel()
    if cuda_flash_unavailable_reason() is None and cuda_flash_unsupported(q) is None:
        return CudaFlashKernel()
    return MathKernel()
