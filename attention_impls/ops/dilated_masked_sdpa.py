from __future__ import annotations

import torch
import torch.nn.functional as F

from ..patterns import dilated_multiplicity
from ..registry import AttentionBackend, register


@register
class DilatedMaskedSdpa(AttentionBackend):
    """The naive baseline: the union of all branches as one H x N x N additive mask for SDPA, log c where c
    branches score the pair and -inf where none does, so it scores all N^2 pairs per head."""

    mechanism = "dilated"
    name = "masked_sdpa"
    description = "SDPA with a materialised H x N x N mask of log(branch multiplicity) (the naive baseline)"
    dtypes = frozenset({torch.float64, torch.float32, torch.float16, torch.bfloat16})

    def __init__(self, params) -> None:
        super().__init__(params)
        self._masks: dict[tuple, torch.Tensor] = {}

    def _mask(self, seq_len: int, num_heads: int, causal: bool, device: torch.device,
              dtype: torch.dtype) -> torch.Tensor:
        key = (seq_len, num_heads, causal, device, dtype)
        if key not in self._masks:
            # One mask kept: training calls repeat a shape, while a sweep over N would otherwise hold H x N^2
            # floats for every N it passed.
            self._masks.clear()
            positions = torch.arange(seq_len, device=device)
            count = dilated_multiplicity(self.params, seq_len, causal, num_heads)(
                positions[None, :, None], positions[None, None, :], torch.arange(num_heads, device=device)[:, None,
                                                                                                          None])
            self._masks[key] = torch.log(count.to(dtype))  # log 0 = -inf: never scored
        return self._masks[key]

    def forward(self, q, k, v, causal):
        mask_HNN = self._mask(q.shape[1], q.shape[2], causal, q.device, q.dtype)
        out_BHND = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask_HNN, scale=self.params.scale
        )
        return out_BHND.transpose(1, 2)

    def executed_pairs(self, seq_len, num_heads, causal, device="cpu", backward=False):
        return num_heads * seq_len * seq_len
