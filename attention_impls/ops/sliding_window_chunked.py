"""Sliding window in plain PyTorch: exact, memory O(N * window), never O(N^2).

On CPU every window runs the band path (`_window_band.band_attention`): blocks of queries against an overlapping
strided view of their keys, in one call of torch's fused flash kernel under a band mask that every block shares,
with a hand-written backward through the same kernel.

Elsewhere, queries are cut into blocks of `block` rows; block b needs keys [b*block - left, b*block + block - 1 +
right]; padding the keys by `left` in front makes all bands one strided `unfold`, scored by einsum under a mask
(autograd backward).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..kernels import default_scale
from ..registry import AttentionBackend, register
from ._window_band import FORWARD_BLOCK, Band, backward_block, band_attention


def block_size(left: int, right: int, seq_len: int) -> int:
    # Rows per block trade wasted scores (the band is block + left + right wide for block + ... useful) against
    # matmul size; about half the window keeps the waste near 1.5x with matmuls still >= 64 wide.
    return max(1, min(seq_len, max(64, (left + right + 1) // 2)))


def unfold_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, left: int, right: int,
                     scale: float) -> torch.Tensor:
    """Any device: query blocks against `unfold`ed key bands, einsum under a mask; autograd backward."""
    batch, seq_len, heads, head_dim = q.shape
    block = block_size(left, right, seq_len)
    num_blocks = math.ceil(seq_len / block)
    padded_len = num_blocks * block
    span = block + left + right
    compute = torch.promote_types(q.dtype, torch.float32)

    q_blocks = F.pad(q, (0, 0, 0, 0, 0, padded_len - seq_len)).view(batch, num_blocks, block, heads, head_dim)
    # keys padded by `left` in front and enough behind that every band has `span` rows
    pad_kv = (0, 0, 0, 0, left, padded_len - seq_len + right)
    k_bands = F.pad(k, pad_kv).unfold(1, span, block)  # (B, num_blocks, H, D, span)
    v_bands = F.pad(v, pad_kv).unfold(1, span, block)

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


@register
class SlidingWindowChunked(AttentionBackend):
    mechanism = "sliding_window"
    name = "chunked"
    description = ("query blocks x overlapping key bands: fused CPU flash kernel under a band mask on CPU, "
                   "einsum elsewhere; O(N * window) memory, backward everywhere")
    dtypes = frozenset({torch.float64, torch.float32, torch.float16, torch.bfloat16})

    def _window(self, seq_len: int, causal: bool) -> tuple[int, int]:
        left, right = self.params.window(causal)
        return min(left, seq_len - 1), min(right, seq_len - 1)  # a wider window sees nothing more

    def forward(self, q, k, v, causal):
        left, right = self._window(q.shape[1], causal)
        scale = default_scale(q.shape[-1], self.params.scale)
        attention = band_attention if q.device.type == "cpu" else unfold_attention
        return attention(q, k, v, left, right, scale)

    def executed_pairs(self, seq_len, num_heads, causal, device="cpu", backward=False):
        left, right = self._window(seq_len, causal)
        if device.startswith("cpu"):  # the band path: its forward and backward cut the queries differently
            block = backward_block(left, right) if backward else FORWARD_BLOCK
            return num_heads * Band(seq_len, left, right, block).executed_pairs()
        block = block_size(left, right, seq_len)  # the unfold path scores whole bands, forward and backward alike
        return num_heads * math.ceil(seq_len / block) * block * (block + left + right)
