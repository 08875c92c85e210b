"""A drop-in for torch.nn.MultiheadAttention(batch_first=True) whose attention is any mechanism and backend.

Same constructor and forward signature, same parameter names (in_proj_weight, in_proj_bias, out_proj), so a
state_dict moves between the two and `nn.TransformerEncoderLayer(...).self_attn` can be swapped for it.
One addition: `qk_transform(q, k) -> (q, k)` on (batch, seq, heads, head_dim) tensors between projection and
attention, where position encodings such as rotary belong.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .registry import build


class MultiheadAttention(nn.Module):
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
        batch_first: bool = True,
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
        unsupported = {"dropout": dropout != 0.0, "add_bias_kv": add_bias_kv, "add_zero_attn": add_zero_attn,
                       "kdim": kdim not in (None, embed_dim), "vdim": vdim not in (None, embed_dim)}
        for name, is_set in unsupported.items():
            if is_set:
                raise ValueError(f"{name}={locals()[name]!r} is not supported by attention_impls.MultiheadAttention "
                                 "(self-attention without attention dropout, bias_kv or zero_attn)")
        factory = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.batch_first = batch_first
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim, **factory))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim, **factory)) if bias else None
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.attention = build(mechanism, backend, **params)
        self.qk_transform = qk_transform  # an nn.Module here is registered as a submodule
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.in_proj_weight)  # as torch.nn.MultiheadAttention does
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)

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
    ) -> tuple[torch.Tensor, None]:
        if need_weights:
            raise ValueError("need_weights=True is not supported: efficient attention never forms the weights; "
                             "call with need_weights=False (nn.TransformerEncoderLayer already does)")
        if key_padding_mask is not None:
            raise ValueError("key_padding_mask is not supported; pass None")
        if attn_mask is not None and not is_causal:
            raise ValueError("an arbitrary attn_mask is not supported; the pattern comes from the mechanism. "
                             "For causal attention pass is_causal=True (an accompanying causal attn_mask is "
                             "then taken as the hint torch.nn.MultiheadAttention treats it as)")
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        if query.dim() != 3 or query.shape[-1] != self.embed_dim:
            raise ValueError(f"query must be (batch, seq, {self.embed_dim}) or (seq, {self.embed_dim}), "
                             f"got {tuple(query.shape)}")
        batch, seq_len, _ = query.shape
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        shape_BNHD = (batch, seq_len, self.num_heads, self.head_dim)
        q = F.linear(query, w_q, b_q).view(shape_BNHD)
        k = F.linear(key, w_k, b_k).view(batch, key.shape[1], self.num_heads, self.head_dim)
        v = F.linear(value, w_v, b_v).view(batch, value.shape[1], self.num_heads, self.head_dim)
        if self.qk_transform is not None:
            q, k = self.qk_transform(q, k)
        out = self.attention(q, k, v, causal=is_causal).reshape(batch, seq_len, self.embed_dim)
        out = self.out_proj(out)
        if unbatched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, None
