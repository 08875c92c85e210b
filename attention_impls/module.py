"""A drop-in for torch.nn.MultiheadAttention whose attention is any mechanism and backend.

Same constructor, forward signature, defaults (batch_first=False) and parameter names (in_proj_weight or
q/k/v_proj_weight, in_proj_bias, out_proj), so a state_dict moves between the two and the `self_attn` or
`multihead_attn` of torch's Transformer layers can be swapped for it. What each argument means for a pattern:

- `key_padding_mask` (batch, S), bool (True = padding) or float (0 or -inf): padded keys are never seen; a query
  that sees no key outputs 0 (torch gives NaN there).
- `attn_mask` (L, S) or (batch * heads, L, S), torch's convention (bool True = not allowed, or float added): a
  causal mask, or `is_causal=True` (with or without the mask; torch's module wants both), makes the pattern
  causal; any other mask is applied on top of the pattern (a key must be allowed by both; a float mask is added
  to the scores). A causal query block shorter than its keys sits at their end (a decoder's cache).
- `need_weights=True` (torch's default) returns the attention weights (batch, L, S), averaged over heads unless
  `average_attn_weights=False`, computed by the float64 reference of the mechanism at O(L x S) memory, before
  dropout; `need_weights=False` (what torch's Transformer layers pass) never forms them.
- `dropout` drops attention weights in training mode (as torch's module does); eval mode uses none.
- `kdim` / `vdim` project keys and values from other widths (separate q/k/v_proj_weight, as torch does).
- `add_bias_kv` and `add_zero_attn` are refused: they append a key at position S, which no pattern places.

torch's fused fast path (TransformerEncoderLayer in eval mode) reads `_qkv_same_embed_dim`; it is False here, so
eval mode runs this module, never torch's dense kernel in place of the pattern.
One addition: `qk_transform(q, k) -> (q, k)` on (batch, seq, heads, head_dim) tensors between projection and
attention, where position encodings such as rotary belong.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .call import make_call
from .mechanisms import get_mechanism
from .registry import build


class MultiheadAttention(nn.Module):
    # torch's Transformer layers take their fused fast path only when this is True (see the module docstring)
    _qkv_same_embed_dim = False

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        mechanism: str = "dense",
        backend: str | None = None,
        qk_transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
        **params: Any,
    ) -> None:
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0 or embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be a positive multiple of num_heads={num_heads}")
        for name, is_set in (("add_bias_kv", add_bias_kv), ("add_zero_attn", add_zero_attn)):
            if is_set:
                raise ValueError(f"{name}=True is not supported by attention_impls.MultiheadAttention: it appends a "
                                 f"key after the sequence's last position, which no attention pattern places")
        if isinstance(dropout, bool) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout!r} must be a probability in [0, 1)")
        factory = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.batch_first, self.dropout = batch_first, dropout
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False
        if self.kdim == embed_dim and self.vdim == embed_dim:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim, **factory))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.q_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim, **factory))
            self.k_proj_weight = nn.Parameter(torch.empty(embed_dim, self.kdim, **factory))
            self.v_proj_weight = nn.Parameter(torch.empty(embed_dim, self.vdim, **factory))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.attention = build(mechanism, backend, **params)
        self.qk_transform = qk_transform  # an nn.Module here is registered as a submodule
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # as torch.nn.MultiheadAttention does
        for weight in (self.in_proj_weight, self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
            if weight is not None:
                nn.init.xavier_uniform_(weight)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)

    def _projections(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.in_proj_weight is not None:
            return self.in_proj_weight.chunk(3)
        return self.q_proj_weight, self.k_proj_weight, self.v_proj_weight

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        if query.dim() != 3 or query.shape[-1] != self.embed_dim:
            layout = "(batch, L, E)" if self.batch_first else "(L, batch, E)"
            raise ValueError(f"query must be {layout} or (L, E) with E = {self.embed_dim}, got "
                             f"{tuple(query.shape)}")
        if key.dim() != 3 or key.shape[-1] != self.kdim or value.shape[-1] != self.vdim \
                or key.shape[:2] != value.shape[:2] or key.shape[0] != query.shape[0]:
            raise ValueError(f"key {tuple(key.shape)} and value {tuple(value.shape)} must match the query's batch "
                             f"and each other's length, with widths kdim={self.kdim} and vdim={self.vdim}")
        batch, query_len, _ = query.shape
        key_len = key.shape[1]
        w_q, w_k, w_v = self._projections()
        b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        q = F.linear(query, w_q, b_q).view(batch, query_len, self.num_heads, self.head_dim)
        k = F.linear(key, w_k, b_k).view(batch, key_len, self.num_heads, self.head_dim)
        v = F.linear(value, w_v, b_v).view(batch, key_len, self.num_heads, self.head_dim)
        if self.qk_transform is not None:
            q, k = self.qk_transform(q, k)
        padding = _padding(key_padding_mask, batch, key_len)
        causal, mask = _causal_and_mask(attn_mask, is_causal, batch, self.num_heads, query_len, key_len,
                                        query.device)
        # torch pairs a query block with the end of its keys only when causal (a decoder's cache); otherwise a
        # shorter query sequence is another sequence (cross-attention)
        offset = key_len - query_len if causal else None
        arguments = dict(causal=causal, query_offset=offset, key_padding_mask=padding, attn_mask=mask)
        out = self.attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, **arguments)
        out = self.out_proj(out.reshape(batch, query_len, self.embed_dim))
        weights = None
        if need_weights:
            call = make_call(q, k, v, **arguments)
            weights = get_mechanism(self.attention.mechanism).reference_weights(
                q, k, self.attention.params, call).to(q.dtype)  # (batch, heads, L, S)
            weights = weights.mean(1) if average_attn_weights else weights
        if unbatched:
            out = out.squeeze(0)
            weights = weights.squeeze(0) if weights is not None else None
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


def _padding(key_padding_mask: torch.Tensor | None, batch: int, key_len: int) -> torch.Tensor | None:
    """torch's key_padding_mask (bool True = padding, or float 0 / -inf) as a bool mask, True = padding."""
    if key_padding_mask is None:
        return None
    if key_padding_mask.shape != (batch, key_len):
        raise ValueError(f"key_padding_mask must be (batch, S) = ({batch}, {key_len}), got "
                         f"{tuple(key_padding_mask.shape)}")
    if key_padding_mask.dtype == torch.bool:
        return key_padding_mask
    if key_padding_mask.is_floating_point() and bool(((key_padding_mask == 0) | (key_padding_mask == float("-inf")))
                                                     .all()):
        return key_padding_mask == float("-inf")
    raise ValueError("key_padding_mask must be bool (True = padding) or float holding only 0 and -inf")


def _causal_and_mask(attn_mask: torch.Tensor | None, is_causal: bool, batch: int, heads: int, query_len: int,
                     key_len: int, device: torch.device) -> tuple[bool, torch.Tensor | None]:
    """(causal, the rest of the mask in SDPA's convention: bool True = allowed, or float added), from torch's
    attn_mask (bool True = not allowed) and is_causal hint."""
    if attn_mask is None:
        return is_causal, None  # torch's module demands the mask with the hint; the hint alone is enough here
    if attn_mask.dim() == 2:
        expected = (query_len, key_len)
        mask = attn_mask[None, None]
    elif attn_mask.dim() == 3 and attn_mask.shape[0] == batch * heads:
        expected = (batch * heads, query_len, key_len)
        mask = attn_mask.view(batch, heads, query_len, key_len)
    else:
        expected = (query_len, key_len)
    if tuple(attn_mask.shape) != expected:
        raise ValueError(f"attn_mask must be (L, S) = ({query_len}, {key_len}) or (batch * heads, L, S), got "
                         f"{tuple(attn_mask.shape)}")
    allowed = ~mask if mask.dtype == torch.bool else mask
    future = torch.ones(query_len, key_len, dtype=torch.bool, device=device).triu(key_len - query_len + 1)
    causal_mask = (~future if mask.dtype == torch.bool else torch.where(future, float("-inf"), 0.0))
    if bool((allowed == causal_mask.to(allowed.dtype)).all()):
        return True, None  # the causal mask itself: the pattern's own causal mode
    if is_causal:
        raise ValueError("is_causal=True but attn_mask is not the causal mask (key j allowed for query i exactly "
                         "when j <= i + S - L); pass the causal mask, or is_causal=False with your mask")
    return False, allowed
