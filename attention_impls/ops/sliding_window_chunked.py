"""Sliding window in plain PyTorch, query blocks against their key band: memory O(N * window), not O(N^2).

Queries are cut into blocks of `block` rows; block b needs keys [b*block - left, b*block + block - 1 + right],
a band of block + left + right keys. Padding the keys by `left` in front makes that band start at b*block, so
all bands are one strided `unfold` of the padded keys.

Left-only windows (causal, or right = 0) take a faster exact path, `left_band_attention`: with blocks of exactly
`left` rows, query block b sees (i) its own block causally and (ii) the previous block where key row >= query row.
(ii) is causal too once both blocks are read backwards, so both halves run in a fused causal kernel that returns
log-sum-exp (torch's flash kernel on CPU) and are merged by log-sum-exp: no wasted tiles, no materialised scores.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..kernels import CpuFlashKernel, LseKernel, MathKernel, default_scale, merge_lse_into
from ..registry import AttentionBackend, register


class _LeftBand:
    """Views of (batch, padded_len, H, D) tensors as the two halves of the left-band decomposition."""

    def __init__(self, batch: int, num_blocks: int, block: int) -> None:
        self.batch, self.num_blocks, self.block = batch, num_blocks, block

    def own(self, x: torch.Tensor) -> torch.Tensor:
        """Every block, as a batch of blocks: (B * nb, s, H, D)."""
        return x.reshape(self.batch * self.num_blocks, self.block, *x.shape[2:])

    def later(self, x: torch.Tensor) -> torch.Tensor:
        """Blocks 1.. (the queries of the previous-block half), rows reversed: (B * (nb - 1), s, H, D)."""
        return self._reversed(x[:, self.block :])

    def earlier(self, x: torch.Tensor) -> torch.Tensor:
        """Blocks ..nb-2 (the keys of the previous-block half), rows reversed."""
        return self._reversed(x[:, : (self.num_blocks - 1) * self.block])

    def _reversed(self, x: torch.Tensor) -> torch.Tensor:
        blocks = x.reshape(self.batch, self.num_blocks - 1, self.block, *x.shape[2:])
        return blocks.flip(2).reshape(-1, self.block, *x.shape[2:])

    def unreverse(self, x: torch.Tensor) -> torch.Tensor:
        """(B * (nb - 1), s, H, D) reversed rows -> (B, nb - 1, s, H, D) in order."""
        return x.reshape(self.batch, self.num_blocks - 1, self.block, *x.shape[2:]).flip(2)

    def lse_own(self, lse_BHN: torch.Tensor) -> torch.Tensor:
        b, h, _ = lse_BHN.shape
        return lse_BHN.reshape(b, h, self.num_blocks, self.block).transpose(1, 2).reshape(-1, h, self.block)

    def lse_later(self, lse_BHN: torch.Tensor) -> torch.Tensor:
        b, h, _ = lse_BHN.shape
        blocks = lse_BHN[:, :, self.block :].reshape(b, h, self.num_blocks - 1, self.block).flip(3)
        return blocks.transpose(1, 2).reshape(-1, h, self.block)


def _left_band_forward(q, k, v, left: int, scale: float, kernel: LseKernel):
    """q, k, v padded to whole blocks of `left` rows; returns (out (B, Np, H, D) accumulator dtype, lse (B, H, Np))."""
    batch, padded_len, heads, head_dim = q.shape
    band = _LeftBand(batch, padded_len // left, left)
    acc_dtype = torch.promote_types(q.dtype, torch.float32)
    out_own, lse_own = kernel.forward(band.own(q), band.own(k), band.own(v), True, scale)
    out = out_own.reshape(batch, padded_len, heads, head_dim).to(acc_dtype)
    lse = lse_own.reshape(batch, band.num_blocks, heads, left).transpose(1, 2).reshape(batch, heads, padded_len)
    lse = lse.to(acc_dtype)
    if band.num_blocks > 1:
        out_prev, lse_prev = kernel.forward(band.later(q), band.earlier(k), band.earlier(v), True, scale)
        out_view = out[:, left:].view(batch, band.num_blocks - 1, left, heads, head_dim)
        lse_view = lse[:, :, left:].view(batch, heads, band.num_blocks - 1, left)
        lse_prev = lse_prev.reshape(batch, band.num_blocks - 1, heads, left).flip(3).transpose(1, 2)
        merge_lse_into(out_view, lse_view, band.unreverse(out_prev), lse_prev.to(acc_dtype))
    return out, lse


def _left_band_backward(grad_out, q, k, v, out, lse, left: int, scale: float, kernel: LseKernel):
    batch, padded_len, heads, head_dim = q.shape
    band = _LeftBand(batch, padded_len // left, left)
    lse = lse if q.dtype == torch.float64 else lse.float()
    grad_q, grad_k, grad_v = (
        g.reshape(batch, padded_len, heads, head_dim).to(torch.promote_types(q.dtype, torch.float32))
        for g in kernel.backward(band.own(grad_out), band.own(q), band.own(k), band.own(v), band.own(out),
                                 band.lse_own(lse), True, scale)
    )
    if band.num_blocks > 1:
        dq, dk, dv = kernel.backward(band.later(grad_out), band.later(q), band.earlier(k), band.earlier(v),
                                     band.later(out), band.lse_later(lse), True, scale)
        span = (band.num_blocks - 1) * left
        grad_q[:, left:] += band.unreverse(dq).reshape(batch, span, heads, head_dim)
        grad_k[:, :span] += band.unreverse(dk).reshape(batch, span, heads, head_dim)
        grad_v[:, :span] += band.unreverse(dv).reshape(batch, span, heads, head_dim)
    return grad_q, grad_k, grad_v


class _LeftBandFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, left: int, scale: float, kernel: LseKernel):
        seq_len = q.shape[1]
        padded_len = math.ceil(seq_len / left) * left
        # Padding sits after every real position: causal real queries never see it, and the previous-block half
        # only reads keys from blocks that are entirely real. Padded query rows are computed and dropped.
        if padded_len != seq_len:
            q, k, v = (F.pad(x, (0, 0, 0, 0, 0, padded_len - seq_len)) for x in (q, k, v))
        q, k, v = (x.contiguous() for x in (q, k, v))
        out, lse = _left_band_forward(q, k, v, left, scale, kernel)
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.left, ctx.scale, ctx.kernel, ctx.seq_len = left, scale, kernel, seq_len
        return out[:, :seq_len]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        if q.shape[1] != ctx.seq_len:
            grad_out = F.pad(grad_out, (0, 0, 0, 0, 0, q.shape[1] - ctx.seq_len))
        grad_out = grad_out.contiguous()
        grads = _left_band_backward(grad_out, q, k, v, out, lse, ctx.left, ctx.scale, ctx.kernel)
        return tuple(g[:, : ctx.seq_len].to(q.dtype) for g in grads) + (None, None, None)


def left_band_attention(q, k, v, left: int, scale: float) -> torch.Tensor:
    """Exact sliding-window attention for windows (left, 0), left >= 1; (batch, seq, heads, head_dim)."""
    kernel = CpuFlashKernel() if q.device.type == "cpu" else MathKernel()
    return _LeftBandFunction.apply(q, k, v, left, scale, kernel)


def block_size(left: int, right: int, seq_len: int) -> int:
    # Rows per block trade wasted scores (the band is block + left + right wide for block + ... useful) against
    # matmul size; about half the window keeps the waste near 1.5x with matmuls still >= 64 wide.
    return max(1, min(seq_len, max(64, (left + right + 1) // 2)))


@register
class SlidingWindowChunked(AttentionBackend):
    mechanism = "sliding_window"
    name = "chunked"
    description = "pure PyTorch, query blocks x key bands; O(N * window) memory, backward everywhere"
    dtypes = frozenset({torch.float64, torch.float32, torch.float16, torch.bfloat16})

    def _geometry(self, seq_len: int, causal: bool) -> tuple[int, int, int, int]:
        left, right = self.params.window(causal)
        left, right = min(left, seq_len - 1), min(right, seq_len - 1)  # a wider window sees nothing more
        block = block_size(left, right, seq_len)
        return left, right, block, math.ceil(seq_len / block)

    def forward(self, q, k, v, causal):
        batch, seq_len, heads, head_dim = q.shape
        left, right, block, num_blocks = self._geometry(seq_len, causal)
        if right == 0 and left >= 1:
            return left_band_attention(q, k, v, left, default_scale(head_dim, self.params.scale))
        padded_len = num_blocks * block
        span = block + left + right
        compute = torch.promote_types(q.dtype, torch.float32)

        q_blocks = F.pad(q, (0, 0, 0, 0, 0, padded_len - seq_len)).view(batch, num_blocks, block, heads, head_dim)
        # keys padded by `left` in front and enough behind that every band has `span` rows
        pad_kv = (0, 0, 0, 0, left, padded_len - seq_len + right)
        k_bands = F.pad(k, pad_kv).unfold(1, span, block)  # (B, num_blocks, H, D, span)
        v_bands = F.pad(v, pad_kv).unfold(1, span, block)

        scale = default_scale(head_dim, self.params.scale)
        scores = torch.einsum("bnqhd,bnhds->bnhqs", q_blocks.to(compute), k_bands.to(compute)) * scale

        row = torch.arange(block, device=q.device)[:, None]  # query p = b*block + row
        col = torch.arange(span, device=q.device)[None, :]  # key j = b*block - left + col
        band = (col - row >= 0) & (col - row <= left + right)  # p - left <= j <= p + right
        key_pos = torch.arange(num_blocks, device=q.device)[:, None] * block - left + col  # (num_blocks, span)
        visible = band[None] & ((key_pos >= 0) & (key_pos < seq_len))[:, None, :]  # (num_blocks, block, span)
        # a finite fill, not -inf: padded query rows see no key, and must give finite (discarded) values
        scores = scores.masked_fill(~visible[None, :, None], torch.finfo(compute).min)
        weights = torch.softmax(scores, dim=-1)
        out = torch.einsum("bnhqs,bnhds->bnqhd", weights, v_bands.to(compute))
        return out.reshape(batch, padded_len, heads, head_dim)[:, :seq_len].to(q.dtype)

    def executed_pairs(self, seq_len, num_heads, causal):
        left, right, block, num_blocks = self._geometry(seq_len, causal)
        if right == 0 and left >= 1:  # two causal triangles of left x left per block, padding included
            blocks = math.ceil(seq_len / left)
            return num_heads * (2 * blocks - 1) * left * (left + 1) // 2
        return num_heads * num_blocks * block * (block + left + right)
