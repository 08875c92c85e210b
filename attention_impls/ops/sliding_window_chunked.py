"""Sliding window in plain PyTorch, query blocks against their key band: memory O(N * window), not O(N^2).

Queries are cut into blocks of `block` rows; block b needs keys [b*block - left, b*block + block - 1 + right],
a band of block + left + right keys. Padding the keys by `left` in front makes that band start at b*block, so
all bands are one strided `unfold` of the padded keys.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..kernels import default_scale
from ..registry import AttentionBackend, register


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
        return num_heads * num_blocks * block * (block + left + right)
