from __future__ import annotations

from ..mechanisms import get_mechanism
from ..registry import register
from ._flex import FlexBackend


@register
class LongformerFlex(FlexBackend):
    """FlexAttention with the window-or-global rule as its mask_mod (block-sparse: tiles with no seen pair skipped)."""

    mechanism = "longformer"
    name = "flex"
    description = "FlexAttention + block mask of the window-or-global rule, compiled"

    def mask_mod(self, seq_len, num_heads, causal):
        multiplicity = get_mechanism(self.mechanism).multiplicity(self.params, seq_len, num_heads, causal)

        def mask_mod(batch, head, query, key):
            return multiplicity(query, key, head) > 0

        return mask_mod
