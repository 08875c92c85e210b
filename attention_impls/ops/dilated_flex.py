from __future__ import annotations

import torch

from ..patterns import dilated_multiplicity
from ..registry import register
from ._flex import FlexBackend


@register
class DilatedFlex(FlexBackend):
    """One pass over the union of all branches: mask = seen by some branch, score += log(multiplicity)."""

    mechanism = "dilated"
    name = "flex"
    description = "FlexAttention, one pass; branch multiplicity c enters as score + log c"
    heads_in_mask = True

    def mask_mod(self, seq_len, num_heads, causal):
        multiplicity = dilated_multiplicity(self.params, seq_len, causal, num_heads)

        def mask_mod(batch, head, query, key):
            return multiplicity(query, key, head) > 0

        return mask_mod

    def score_mod(self, seq_len, num_heads, causal):
        multiplicity = dilated_multiplicity(self.params, seq_len, causal, num_heads)

        def score_mod(score, batch, head, query, key):
            return score + torch.log(multiplicity(query, key, head).to(score.dtype))

        return score_mod
