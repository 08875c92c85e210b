from __future__ import annotations

import torch
import torch.nn.functional as F

from ..mechanisms import get_mechanism
from ..registry import AttentionBackend, register


@register
class LongformerMaskedSdpa(AttentionBackend):
    """The naive baseline: the window-or-global rule as one N x N boolean mask for SDPA (scores all N^2 pairs)."""

    mechanism = "longformer"
    name = "masked_sdpa"
    description = "SDPA with a materialised N x N window-or-global mask (the naive baseline)"
    dtypes = frozenset({torch.float64, torch.float32, torch.float16, torch.bfloat16})

    def forward(self, q, k, v, causal):
        seq_len = q.shape[1]
        position = torch.arange(seq_len, device=q.device)
        mask = get_mechanism(self.mechanism).multiplicity(self.params, seq_len, q.shape[2], causal)(
            position[:, None], position[None, :], torch.zeros((), dtype=torch.long, device=q.device)) > 0
        out_BHND = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                  attn_mask=mask, scale=self.params.scale)
        return out_BHND.transpose(1, 2)

    def executed_pairs(self, seq_len, num_heads, causal, device="cpu", backward=False):
        return num_heads * seq_len * seq_len
