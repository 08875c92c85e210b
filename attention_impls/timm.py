"""Swap the attention of a timm Vision Transformer for any mechanism (`pip install attention-shootout[timm]`).

    import timm
    import attention_impls.timm
    model = timm.create_model("vit_small_patch16_224", pretrained=False)
    attention_impls.timm.swap_attention(model, "sliding_window", window=32)

Every `timm.layers.Attention` in the model (the attention of timm's ViT, DeiT and their relatives) is replaced by
a `PatternAttention` holding the very same submodules: the same parameters under the same state_dict keys, so a
timm checkpoint loads before or after the swap. Its forward is timm's with the one attention call replaced by the
library's: timm's q/k norms, attention dropout (training only, as timm applies it), `attn_mask` (added to the
pattern), `is_causal`, output norm, gate and projection all stay. The pattern runs over timm's token order: the
prefix tokens (class, registers) first, then the patches row by row; a ViT is not causal, so neither is the pattern
unless the caller passes is_causal. Modules of other classes (subclasses included, whose forward may differ) are
left alone; a model with none to swap is an error.
"""

from __future__ import annotations

from typing import Any

import torch

from .mechanisms import get_mechanism
from .registry import Attention, build

# What PatternAttention takes over from timm's Attention: its submodules and the sizes its forward reads.
_SUBMODULES = ("qkv", "q_norm", "k_norm", "attn_drop", "norm", "proj", "proj_drop")
_SIZES = ("num_heads", "head_dim", "attn_dim", "scale")


class PatternAttention(torch.nn.Module):
    """timm's Attention computing `attention` (a built mechanism) in place of dense SDPA."""

    def __init__(self, timm_attention: torch.nn.Module, attention: Attention) -> None:
        super().__init__()
        for name in _SIZES:
            setattr(self, name, getattr(timm_attention, name))
        for name in _SUBMODULES:
            setattr(self, name, getattr(timm_attention, name))  # the same modules: parameters are shared
        self.gate = getattr(timm_attention, "gate", None)  # timm releases before the gated option have none
        self.attention = attention  # holds no parameters or buffers: the state_dict keys stay timm's

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}"

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        batch, tokens, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        # timm lays q, k, v out as (B, H, N, D); the library takes (B, N, H, D). The norms act on D either way.
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).unbind(2)
        q, k = self.q_norm(q), self.k_norm(k)
        scale = None if self.scale == self.head_dim ** -0.5 else self.scale  # the default keeps every backend open
        out = self.attention(q, k, v, causal=bool(is_causal), scale=scale, attn_mask=attn_mask,
                             dropout_p=self.attn_drop.p if self.training else 0.0)
        out = self.norm(out.reshape(batch, tokens, self.attn_dim))
        if gate is not None:
            out = out * gate
        return self.proj_drop(self.proj(out))


def swap_attention(model: torch.nn.Module, mechanism: str, backend: str | None = None, **params: Any) -> int:
    """Replace every `timm.layers.Attention` in `model` (in place) by the mechanism; returns how many were replaced.

    The parameters are checked before anything changes (a bad one raises ValueError and leaves the model as it was);
    backend=None picks, per call, a backend that takes what the call uses."""
    try:
        from timm.layers import Attention as TimmAttention
    except ImportError as error:
        raise ImportError("attention_impls.timm needs timm: pip install 'attention-shootout[timm]'") from error
    get_mechanism(mechanism).make_params(**params)
    found = [(name, module) for name, module in model.named_modules() if type(module) is TimmAttention]
    if not found:
        kinds = sorted({type(m).__name__ for m in model.modules() if "attention" in type(m).__name__.lower()})
        raise ValueError(f"{type(model).__name__} has no timm.layers.Attention to swap"
                         + (f" (its attention modules: {', '.join(kinds)})" if kinds else ""))
    for name, module in found:
        missing = [n for n in _SUBMODULES + _SIZES if not hasattr(module, n)]
        if missing:
            raise ValueError(f"{name}: this timm release's Attention has no {', '.join(missing)}; "
                             f"attention_impls.timm was written against timm 1.0")
    built = [build(mechanism, backend, **params) for _ in found]
    for (name, module), attention in zip(found, built):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, PatternAttention(module, attention))
    return len(found)
