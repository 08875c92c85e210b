from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import AttentionBackend, register


@register
class SlidingWindowMaskedSdpa(AttentionBackend):
    """The naive baseline: an N x N boolean band mask handed to SDPA, so it scores all N^2 pairs."""

    mechanism = "sliding_window"
    name = "masked_sdpa"
    description = "SDPA with a materialised N x N band mask (the naive baseline)"
    dtypes = frozenset({torch.float64, torch.float32, torch.float16, torch.bfloat16})

    def forward(self, q, k, v, causal):
        left, right = self.params.window(causal)
        positions = torch.arange(q.shape[1], device=q.device)
        offset = positions[None, :] - positions[:, None]  # [query, key] -> key - query
        band = (offset >= -left) & (offset <= right)
        out_BHND = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=band, scale=self.params.scale
        )
        return out_BHND.transpose(1, 2)

    def executed_pairs(self, seq_len, num_heads, causal, device="cpu", backward=False):
        return num_heads * seq_len * seq_len
