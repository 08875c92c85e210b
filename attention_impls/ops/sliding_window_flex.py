from __future__ import annotations

from ..patterns import sliding_window_visible
from ..registry import register
from ._flex import FlexBackend


@register
class SlidingWindowFlex(FlexBackend):
    mechanism = "sliding_window"
    name = "flex"
    description = "FlexAttention with a block mask, compiled; skips tiles outside the band"

    def mask_mod(self, seq_len, num_heads, causal):
        visible = sliding_window_visible(*self.params.window(causal))

        def mask_mod(batch, head, query, key):
            return visible(query, key, head)

        return mask_mod
