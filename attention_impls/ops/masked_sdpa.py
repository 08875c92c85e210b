"""The masked baseline of every mechanism: the pattern as one additive mask for torch's SDPA, built from the
mechanism's index function at the call's positions (log c where c branches score a pair, -inf where none does).
Registered for every mechanism by looping, like the reference: it is the one fast path that takes every feature of
a call (query blocks, left-padding offsets, key padding, per-call scale, dropout), at O(L x M) memory per head."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..call import Call, dropout_keep
from ..mechanisms import MECHANISMS, get_mechanism
from ..registry import AttentionBackend, register

_ALL_FLOATS = frozenset({torch.float64, torch.float32, torch.float16, torch.bfloat16})


class _MaskedSdpa(AttentionBackend):
    name = "masked_sdpa"
    dtypes = _ALL_FLOATS
    supports = frozenset({"query_block", "decode", "position_offsets", "key_padding", "scale", "dropout",
                          "attn_mask"})

    def __init__(self, params) -> None:
        super().__init__(params)
        self._masks: dict[tuple, torch.Tensor] = {}

    def _count(self, query_positions, key_positions, num_heads, key_length, causal) -> torch.Tensor:
        """(B or 1, H, L, M) multiplicity at these positions (key_length: what the rules clip to)."""
        # one mask for every head where the pattern is the same in each (an H-fold mask is 2x slower in training)
        heads = torch.arange(num_heads if get_mechanism(self.mechanism).per_head else 1, device=query_positions.device)
        count = get_mechanism(self.mechanism).multiplicity(self.params, key_length, num_heads, causal)(
            query_positions[:, None, :, None], key_positions[:, None, None, :], heads[None, :, None, None])
        return count

    def _plain_mask(self, seq_len, num_heads, causal, device, dtype) -> torch.Tensor:
        key = (seq_len, num_heads, causal, device, dtype)
        if key not in self._masks:
            # One mask kept: training repeats a shape, while a sweep over N would otherwise hold H x N^2 floats
            # for every N it passed.
            self._masks.clear()
            positions = torch.arange(seq_len, device=device)[None]
            # (1, H or 1, N, N): SDPA's CPU flash kernel takes a 4-D mask, a 3-D one falls back to the math path
            count = self._count(positions, positions, num_heads, seq_len, causal)
            # a key seen at most once: a bool mask (SDPA's faster path); else log c, with log 0 = -inf: never scored
            self._masks[key] = count > 0 if int(count.max()) <= 1 else torch.log(count.to(dtype))
        return self._masks[key]

    def forward(self, q, k, v, causal):
        mask_1HNN = self._plain_mask(q.shape[1], q.shape[2], causal, q.device, q.dtype)
        out_BHND = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                  attn_mask=mask_1HNN, scale=self.params.scale)
        return out_BHND.transpose(1, 2)

    def forward_call(self, q, k, v, call: Call):
        query_positions, key_positions = call.positions(q.device)
        count = self._count(query_positions, key_positions, q.shape[2], call.key_length, call.causal)
        seen = call.key_seen(q.device)
        if seen is not None:
            count = count * seen[:, None, None, :]
        if call.attn_mask is not None and call.attn_mask.dtype == torch.bool:
            count = count * call.attn_mask
        sees_any = (count > 0).any(-1, keepdim=True)  # (B, H, L, 1)
        # A query that sees nothing outputs 0 (SDPA would give NaN): score it against everything, then zero it.
        bias = torch.where(sees_any, torch.log(count.to(q.dtype)), 0.0)
        if call.attn_mask is not None and call.attn_mask.dtype != torch.bool:
            bias = bias + call.attn_mask.to(q.dtype)
        scale = call.scale if call.scale is not None else self.params.scale
        q_BHLD, k_BHMD, v_BHMD = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if call.dropout_p > 0:
            # explicit, so the mask is drawn as attention_impls.call.dropout_keep draws it (tests replay it)
            scale = scale if scale is not None else q.shape[-1] ** -0.5
            scores = torch.matmul(q_BHLD, k_BHMD.transpose(-1, -2)) * scale + bias
            weights = torch.softmax(scores, dim=-1, dtype=torch.promote_types(q.dtype, torch.float32)).to(q.dtype)
            keep = dropout_keep(weights.shape, call.dropout_p, q.device)
            out_BHLD = torch.matmul(weights * keep / (1.0 - call.dropout_p), v_BHMD)
        else:
            out_BHLD = F.scaled_dot_product_attention(q_BHLD, k_BHMD, v_BHMD, attn_mask=bias, scale=scale)
        return (out_BHLD * sees_any).transpose(1, 2)

    def executed_pairs(self, seq_len, num_heads, causal, device="cpu", backward=False):
        return num_heads * seq_len * seq_len


_DESCRIPTIONS = {
    "dilated": "SDPA with a materialised H x N x N mask of log(branch multiplicity) (the naive baseline)",
}
for _mechanism in [m for m in MECHANISMS if m != "dense"]:  # dense: its sdpa backend takes masks itself
    _name = "".join(part.title() for part in _mechanism.split("_")) + "MaskedSdpa"
    register(type(_name, (_MaskedSdpa,), {
        "mechanism": _mechanism, "__module__": __name__,
        "description": _DESCRIPTIONS.get(_mechanism, "SDPA with the pattern as a materialised N x N mask (the naive "
                                                     "baseline)")}))
