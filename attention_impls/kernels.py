"""Attention kernels that return log-sum-exp, and whose backward takes an externally supplied (out, lse).

Taking (out, lse) from outside is what makes a merge of several partial attentions exact under autograd:
if out and lse are those of the *merged* attention, each part's backward computes exactly its share of the
merged gradient (P = exp(s - lse_merged), Delta = rowsum(dout * out_merged)), mixture weights included. This
is the same identity flash-attention's ring and split-KV backward passes use.

Layout: q, k, v, out are (batch, seq, heads, head_dim); lse is (batch, heads, seq) in float32.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Protocol

import torch


class LseKernel(Protocol):
    name: str

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def backward(
        self,
        grad_out: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        out: torch.Tensor,
        lse: torch.Tensor,
        causal: bool,
        scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


def merge_lse_into(
    out_acc: torch.Tensor, lse_acc: torch.Tensor, out_part: torch.Tensor, lse_part: torch.Tensor
) -> None:
    """In place on (strided) views: (out_acc, lse_acc) <- the log-sum-exp merge with (out_part, lse_part).

    Outputs are (..., m, Hs, D) and lse (B, Hs, ..., m) with the same middle dimensions (B, S, m, Hs, D) and
    (B, Hs, S, m); an lse of -inf means "nothing yet" and merges to the part itself.
    """
    lse_new = torch.logaddexp(lse_acc, lse_part)
    # move lse's heads next to head_dim to broadcast against the outputs
    keep = torch.exp(lse_acc - lse_new).movedim(1, -1)[..., None]
    take = torch.exp(lse_part - lse_new).movedim(1, -1)[..., None]
    out_acc.mul_(keep).addcmul_(out_part, take)  # two passes over the outputs: rescale, then add the part
    lse_acc.copy_(lse_new)


class LseFunction(torch.autograd.Function):
    """Autograd for any algorithm written as a forward that returns (out, lse) and a backward that takes them back.

    `forward_fn(q, k, v, **options)` -> (out, lse); `backward_fn(grad_out, q, k, v, out, lse, **options)` ->
    (grad_q, grad_k, grad_v); q, k, v, grad_out reach both contiguous.
    """

    @staticmethod
    def forward(ctx, q, k, v, forward_fn: Callable[..., Any], backward_fn: Callable[..., Any], options: dict):
        q, k, v = (x.contiguous() for x in (q, k, v))
        out, lse = forward_fn(q, k, v, **options)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.backward_fn, ctx.options = backward_fn, options
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        grads = ctx.backward_fn(grad_out.contiguous(), q, k, v, out, lse, **ctx.options)
        return (*(g.to(q.dtype) for g in grads), None, None, None)


def default_scale(head_dim: int, scale: float | None) -> float:
    return 1.0 / math.sqrt(head_dim) if scale is None else scale


class CpuFlashKernel:
    """torch's fused flash-attention kernel for CPU, which returns log-sum-exp (fp32/fp64/bf16/fp16)."""

    name = "cpu_flash"
    head_major = True  # it walks (batch, head) by (batch, head): contiguous rows per head run 1.16x faster

    def forward(self, q, k, v, causal, scale, mask=None):
        """`mask`: optional additive (L, S) mask in q's dtype, shared by every batch entry and head. k and v may
        be overlapping strided views (the kernel only reads them through their strides)."""
        out_BHLD, lse_BHL = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), 0.0, causal, attn_mask=mask, scale=scale
        )
        return out_BHLD.transpose(1, 2), lse_BHL

    def backward(self, grad_out, q, k, v, out, lse, causal, scale, mask=None):
        grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad_out.transpose(1, 2), q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            out.transpose(1, 2), lse, 0.0, causal, attn_mask=mask, scale=scale,
        )
        return tuple(g.transpose(1, 2) for g in grads)


class CudaFlashKernel:
    """torch's own CUDA flash-attention 2 kernel (fp16 / bf16, compute capability >= 8.0), called below SDPA for
    its log-sum-exp and for a backward that takes (out, lse) from outside. `window` = (left, right) limits query p
    to keys p - left .. p + right inside the kernel, which skips the tiles outside the window."""

    name = "cuda_flash"

    def __init__(self, window: tuple[int, int] | None = None) -> None:
        # torch builds before the window arguments existed take the call without them
        self.window = {} if window is None else {"window_size_left": window[0], "window_size_right": window[1]}

    def forward(self, q, k, v, causal, scale):
        out, lse, _rng_state, _unused, _debug = torch.ops.aten._flash_attention_forward(
            q, k, v, None, None, q.shape[1], k.shape[1], 0.0, causal, False, scale=scale, **self.window
        )
        return out, lse

    def backward(self, grad_out, q, k, v, out, lse, causal, scale):
        # without dropout the kernel never reads its random-number state: empty stand-ins of the right type
        rng_state = torch.empty(2, dtype=torch.uint64, device=q.device)
        unused = torch.empty((), dtype=torch.uint64, device=q.device)
        return torch.ops.aten._flash_attention_backward(
            grad_out, q, k, v, out, lse, None, None, q.shape[1], k.shape[1], 0.0, causal, rng_state, unused,
            scale=scale, **self.window
        )


class MathKernel:
    """Plain PyTorch, any device and dtype; scores materialised per call, accumulated in float32 or better."""

    name = "math"

    @staticmethod
    def _scores(q, k, causal, scale):
        compute = torch.promote_types(q.dtype, torch.float32)
        scores_BHLL = torch.einsum("blhd,bmhd->bhlm", q.to(compute), k.to(compute)) * scale
        if causal:
            n = q.shape[1]
            future = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
            scores_BHLL = scores_BHLL.masked_fill(future, float("-inf"))
        return scores_BHLL

    def forward(self, q, k, v, causal, scale):
        scores = self._scores(q, k, causal, scale)
        lse_BHL = torch.logsumexp(scores, dim=-1)
        probs = torch.exp(scores - lse_BHL[..., None])
        out = torch.einsum("bhlm,bmhd->blhd", probs, v.to(probs.dtype))
        return out.to(q.dtype), lse_BHL.float() if q.dtype != torch.float64 else lse_BHL

    def backward(self, grad_out, q, k, v, out, lse, causal, scale):
        scores = self._scores(q, k, causal, scale)
        compute = scores.dtype
        probs = torch.exp(scores - lse.to(compute)[..., None])  # (B, H, L, L): the merged attention's weights
        grad_out_c, v_c = grad_out.to(compute), v.to(compute)
        grad_v = torch.einsum("bhlm,blhd->bmhd", probs, grad_out_c)
        grad_probs = torch.einsum("blhd,bmhd->bhlm", grad_out_c, v_c)
        delta_BHL = (grad_out_c * out.to(compute)).sum(-1).transpose(1, 2)
        grad_scores = probs * (grad_probs - delta_BHL[..., None]) * scale
        grad_q = torch.einsum("bhlm,bmhd->blhd", grad_scores, k.to(compute))
        grad_k = torch.einsum("bhlm,blhd->bmhd", grad_scores, q.to(compute))
        return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype)


class XformersKernel:
    """xformers' memory-efficient partial attention (out, lse) and its backward (CUDA only)."""

    name = "xformers"

    @staticmethod
    def _bias(causal):
        from xformers.ops import fmha

        return fmha.attn_bias.LowerTriangularMask() if causal else None

    def forward(self, q, k, v, causal, scale):
        from xformers.ops import fmha

        out, lse = fmha.memory_efficient_attention_partial(q, k, v, attn_bias=self._bias(causal), scale=scale)
        return out, lse[..., : q.shape[1]].float()

    def backward(self, grad_out, q, k, v, out, lse, causal, scale):
        from xformers.ops import fmha

        return fmha.memory_efficient_attention_backward(
            grad_out.contiguous(), out.contiguous(), lse.contiguous(), q, k, v,
            attn_bias=self._bias(causal), scale=scale,
        )
