"""Longformer attention on the CPU as three exact parts merged by log-sum-exp, with no N x N anything.

Global queries (p < G) are one dense kernel call. Every other query sees its window and the G global keys,
two disjoint key sets once the window is taken inside positions G .. N - 1: the window part is the sliding
window's band path run on that subsequence (the band is relative, so cutting the first G keys away is exactly
"the window less the global keys"), the global part one kernel call against keys 0 .. G - 1, and the two merge
by log-sum-exp. Backward runs each part's kernel backward with the merged (out, lse) (kernels.py), so the
gradient is exact, mixture included.
"""

from __future__ import annotations

import torch

from ..kernels import CpuFlashKernel, LseFunction, default_scale, merge_lse_into
from ..registry import AttentionBackend, register
from ._window_band import FORWARD_BLOCK, Band, backward_block, band_backward, band_forward


def _forward(q, k, v, left: int, right: int, global_tokens: int, causal: bool, scale: float):
    batch, seq_len, heads, _ = q.shape
    g = min(global_tokens, seq_len)
    kernel = CpuFlashKernel()
    acc_dtype = torch.promote_types(q.dtype, torch.float32)
    out = torch.empty_like(q)
    lse = torch.empty(batch, heads, seq_len, dtype=acc_dtype)
    if g:
        # causal: global query p sees keys 0 .. p, all inside the first g
        keys = slice(0, g) if causal else slice(0, seq_len)
        out[:, :g], lse[:, :, :g] = kernel.forward(q[:, :g], k[:, keys], v[:, keys], causal, scale)
    if g < seq_len:
        rest = (x[:, g:].contiguous() for x in (q, k, v))
        out_rest, lse_rest = band_forward(*rest, left, right, scale)
        out_rest, lse_rest = out_rest.to(acc_dtype), lse_rest.to(acc_dtype)
        if g:
            out_global, lse_global = kernel.forward(q[:, g:], k[:, :g], v[:, :g], False, scale)
            merge_lse_into(out_rest, lse_rest, out_global.to(acc_dtype), lse_global.to(acc_dtype))
        out[:, g:], lse[:, :, g:] = out_rest, lse_rest
    return out, lse


def _backward(grad_out, q, k, v, out, lse, left: int, right: int, global_tokens: int, causal: bool, scale: float):
    seq_len = q.shape[1]
    g = min(global_tokens, seq_len)
    kernel = CpuFlashKernel()
    acc_dtype = torch.promote_types(q.dtype, torch.float32)
    grads = [torch.zeros(q.shape, dtype=acc_dtype) for _ in range(3)]
    grad_q, grad_k, grad_v = grads
    lse_kernel = lse if q.dtype == torch.float64 else lse.float()
    if g:
        keys = slice(0, g) if causal else slice(0, seq_len)
        dq, dk, dv = kernel.backward(grad_out[:, :g], q[:, :g], k[:, keys], v[:, keys], out[:, :g],
                                     lse_kernel[:, :, :g].contiguous(), causal, scale)
        grad_q[:, :g] += dq
        grad_k[:, keys] += dk
        grad_v[:, keys] += dv
    if g < seq_len:
        rows = slice(g, seq_len)
        parts = [x[:, rows].contiguous() for x in (grad_out, q, k, v, out)]
        lse_rows = lse_kernel[:, :, rows].contiguous()
        dq, dk, dv = band_backward(*parts, lse_rows, left, right, scale)
        grad_q[:, rows] += dq
        grad_k[:, rows] += dk
        grad_v[:, rows] += dv
        if g:
            dq, dk, dv = kernel.backward(parts[0], parts[1], k[:, :g], v[:, :g], parts[4], lse_rows, False, scale)
            grad_q[:, rows] += dq
            grad_k[:, :g] += dk
            grad_v[:, :g] += dv
    return tuple(grads)


@register
class LongformerBandGlobal(AttentionBackend):
    """Global rows dense, the rest as the sliding window's band path plus one call against the global keys."""

    mechanism = "longformer"
    name = "band_global"
    description = ("global rows as one dense call; other rows: the band path over positions G.. merged by LSE "
                   "with one call against the G global keys (torch's CPU flash kernel)")
    devices = frozenset({"cpu"})
    backward_devices = frozenset({"cpu"})
    dtypes = frozenset({torch.float64, torch.float32, torch.float16, torch.bfloat16})

    def _window(self, seq_len: int, causal: bool) -> tuple[int, int]:
        """The window as the band path over positions G.. takes it: wider than that part sees nothing more, and
        an unclipped width would size the band's edge masks by the window rather than by the sequence."""
        left, right = self.params.window(causal)
        rest = max(seq_len - self.params.globals_in(seq_len), 1)
        return min(left, rest - 1), min(right, rest - 1)

    def forward(self, q, k, v, causal):
        left, right = self._window(q.shape[1], causal)
        options = {"left": left, "right": right, "global_tokens": self.params.global_tokens, "causal": causal,
                   "scale": default_scale(q.shape[-1], self.params.scale)}
        return LseFunction.apply(q, k, v, _forward, _backward, options)

    def executed_pairs(self, seq_len, num_heads, causal, device="cpu", backward=False):
        """Global rows as scored (one dense call); the other rows: the band path's blocks, which score their whole
        band, plus every global key."""
        g = self.params.globals_in(seq_len)
        left, right = self._window(seq_len, causal)
        block = backward_block(left, right) if backward else FORWARD_BLOCK
        global_rows = g * (g + 1) // 2 if causal else g * seq_len
        band = Band(seq_len - g, left, right, block).executed_pairs() if seq_len > g else 0
        return num_heads * (global_rows + band + (seq_len - g) * g)
