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
        """A decoding step: the query attends to exactly the keys it sees (Mechanism.visible_keys), each key once
        with log c added to its score where c branches score it. Heads that see as many keys run as one kernel
        call; nothing is padded, so the cost follows the keys seen, not the cache's length (one (H, widest head)
        batch read 1.9x the keys at N = 65536 in the paper configuration: results/perf/NOTES.md)."""
        heads = q.shape[2]
        seen = [held.unique(return_counts=True) for held in get_mechanism("dilated").visible_keys(
            self.params, call.query_offset, call.key_length, heads, call.causal)]
        groups: dict[int, list[int]] = {}
        for head, (held, _) in enumerate(seen):
            groups.setdefault(len(held), []).append(head)
        # one flat gather, group after group: key j of head h is row j * H + h of the (M * H, D) view
        rows = torch.cat([(seen[head][0] - call.key_start) * heads + head
                          for members in groups.values() for head in members]).to(q.device)
        k_flat, v_flat = self._gather(k, rows, "k"), self._gather(v, rows, "v")
        batch, dim = q.shape[0], q.shape[-1]
        out = torch.empty(batch, 1, heads, dim, dtype=q.dtype, device=q.device)
        first = 0
        for width, members in groups.items():
            size = len(members) * width
            keys = k_flat[:, first:first + size].view(batch, len(members), width, dim)
            values = v_flat[:, first:first + size].view(batch, len(members), width, dim)
            counts = torch.stack([seen[head][1] for head in members])
            bias = None if bool((counts == 1).all()) else counts.to(q.dtype).log().to(q.device)[None, :, None]
            index = torch.tensor(members, device=q.device)
            out[:, :, index] = F.scaled_dot_product_attention(
                q[:, :, index].transpose(1, 2), keys, values, attn_mask=bias, scale=self.params.scale).transpose(1, 2)
            first += size
        return out

    def _gather(self, x: torch.Tensor, rows: torch.Tensor, name: str) -> torch.Tensor:
        """(B, rows, D): rows of x's (M * H, D) view per sequence (whole rows of D: indexing x[:, index, heads]
        and torch.gather were 5-25x slower on CPU). Without autograd into a buffer kept across steps: two fresh
        (rows, D) tensors per step were page-faulted in anew each time, 10x the gather itself."""
        batch, dim = x.shape[0], x.shape[-1]
        shape = (batch, rows.numel(), dim)
        if torch.is_grad_enabled() and x.requires_grad:
            out = torch.stack([x[b].reshape(-1, dim).index_select(0, rows) for b in range(batch)])
        else:
            buffers = self.__dict__.setdefault("_decode_buffers", {})
            out = buffers.get(name)
            if (out is None or out.shape != shape or out.dtype != x.dtype or out.device != x.device
                    or out.is_inference() != torch.is_inference_mode_enabled()):  # an inference tensor is read-only outside
                out = buffers[name] = torch.empty(shape, dtype=x.dtype, device=x.device)
            for b in range(batch):
                torch.index_select(x[b].reshape(-1, dim), 0, rows, out=out[b])
        return out


def branch_kernel(q: torch.Tensor) -> LseKernel:
    """The fused kernel for these inputs: torch's CPU flash kernel, its CUDA flash kernel where that takes the
    inputs (fp16 / bf16, head_dim a multiple of 8 up to 256), and plain PyTorch otherwise."""
    if q.device.type == "cpu":
        return CpuFlashKernel()
    if cuda_flash_unavailable_reason() is None and cuda_flash_unsupported(q) is None:
        return CudaFlashKernel()
    return MathKernel()
