from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import AttentionBackend, register


@register
class DenseSdpa(AttentionBackend):
    mechanism = "dense"
    name = "sdpa"
    description = "torch.nn.functional.scaled_dot_product_attention (flash / memory-efficient / math, torch picks)"
    dtypes = frozenset({torch.float64, torch.float32, torch.float16, torch.bfloat16})

    supports = frozenset({"query_block", "decode", "cross", "position_offsets", "key_padding", "grouped_heads", "scale",
                          "dropout", "attn_mask"})

    def forward(self, q, k, v, causal):
        out_BHND = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal, scale=self.params.scale
        )
        return out_BHND.transpose(1, 2)

    def forward_call(self, q, k, v, call):
        visible = None
        if call.causal:
            query_positions, key_positions = call.positions(q.device)
            visible = key_positions[:, None, None, :] <= query_positions[:, None, :, None]  # (B or 1, 1, L, M)
        seen = call.key_seen(q.device)
        if seen is not None:
            visible = seen[:, None, None, :] if visible is None else visible & seen[:, None, None, :]
        mask = call.attn_mask
        if mask is not None and mask.dtype == torch.bool:
            visible, mask = (mask if visible is None else visible & mask), None
        sees_any = None
        if visible is not None:
            # A query that sees nothing outputs 0 (SDPA alone gives NaN): let it see every key, then zero it.
            sees_any = visible.any(-1, keepdim=True)
            visible = visible | ~sees_any
        if mask is not None:  # a float mask, added to the scores, on the keys the rest lets through
            visible = mask if visible is None else torch.where(visible, mask, float("-inf")).to(q.dtype)
        out_BHLD = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=visible, dropout_p=call.dropout_p,
            scale=call.scale if call.scale is not None else self.params.scale,
            enable_gqa=call.kv_heads != q.shape[2])
        if sees_any is not None:
            out_BHLD = out_BHLD * sees_any
        return out_BHLD.transpose(1, 2)
