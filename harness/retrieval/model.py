"""A tiny decoder-only Transformer whose attention is any attention_impls mechanism and backend.

nanoGPT's shape: token embedding -> `layers` pre-norm blocks (causal self-attention, GELU MLP) -> final norm ->
linear head. Positions are rotary (RoFormer), applied to q and k inside the attention, so the model has no
position embedding and runs at any sequence length: the held-out evaluation uses longer ones than training.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from attention_impls import MultiheadAttention

from .config import ModelConfig


class Rotary(nn.Module):
    """Rotates each (x[i], x[i + D/2]) pair of q and k by angle position * base^(-2i/D) (GPT-NeoX layout)."""

    def __init__(self, head_dim: int, base: float) -> None:
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        self._cache: dict[tuple[int, torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def _cos_sin(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (seq_len, device, dtype)
        if key not in self._cache:
            angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32),
                                 self.inv_freq.to(device))  # (N, D/2)
            angles = torch.cat([angles, angles], dim=-1)[None, :, None, :]  # (1, N, 1, D)
            self._cache[key] = (angles.cos().to(dtype), angles.sin().to(dtype))
        return self._cache[key]

    def forward(self, q_BNHD: torch.Tensor, k_BNHD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self._cos_sin(q_BNHD.shape[1], q_BNHD.device, q_BNHD.dtype)
        return q_BNHD * cos + _rotate_half(q_BNHD) * sin, k_BNHD * cos + _rotate_half(k_BNHD) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


class TokenShift(nn.Module):
    """h_t + gate * h_(t-1), gate learned per channel (RWKV's time-mix, the short convolution of H3 and Based).

    It hands every position its predecessor, so a key-value pair (k at t, v at t+1) is one position's content and
    a single attention layer can look it up; without it a first layer must learn a previous-token head, which on
    CPU budgets is most of the training time. It widens each layer's reach by one position (reach.py counts it).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.ones(channels))

    def forward(self, h_BNC: torch.Tensor) -> torch.Tensor:
        previous_BNC = F.pad(h_BNC, (0, 0, 1, 0))[:, :-1]  # position t holds h_(t-1); position 0 holds zeros
        return h_BNC + self.gate * previous_BNC


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, attention: dict[str, Any]) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.token_shift = TokenShift(cfg.d_model) if cfg.token_shift else None
        self.attn = MultiheadAttention(cfg.d_model, cfg.heads, bias=False, batch_first=True,
                                       mechanism=attention["mechanism"],
                                       backend=attention.get("backend"),
                                       qk_transform=Rotary(cfg.d_model // cfg.heads, cfg.rotary_base),
                                       **(attention.get("params") or {}))
        # mlp_ratio=0 gives an attention-only block: retrieval needs no MLP, and it costs 2/3 of a block's FLOPs.
        self.mlp = None
        if cfg.mlp_ratio > 0:
            self.ln_2 = nn.LayerNorm(cfg.d_model)
            self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model), nn.GELU(),
                                     nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model))

    def forward(self, x_BNC: torch.Tensor) -> torch.Tensor:
        h_BNC = self.ln_1(x_BNC)
        if self.token_shift is not None:
            h_BNC = self.token_shift(h_BNC)
        x_BNC = x_BNC + self.attn(h_BNC, h_BNC, h_BNC, need_weights=False, is_causal=True)[0]
        return x_BNC if self.mlp is None else x_BNC + self.mlp(self.ln_2(x_BNC))


class TinyDecoder(nn.Module):
    """`logits = TinyDecoder(cfg, vocab_size, {"mechanism": "dense", "backend": None, "params": {}})(tokens)`."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, attention: dict[str, Any]) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, attention) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # nanoGPT's init: N(0, 0.02) for embeddings and linear layers, zero biases. The attention's own in_proj is
        # an nn.Parameter, not a Linear, and keeps MultiheadAttention's xavier init.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    @property
    def backends(self) -> list[Optional[str]]:
        """The backend each layer's attention ran with last (None before the first forward)."""
        return [block.attn.attention.backend for block in self.blocks]

    def forward(self, tokens_BN: torch.Tensor) -> torch.Tensor:
        x_BNC = self.token_embedding(tokens_BN)
        for block in self.blocks:
            x_BNC = block(x_BNC)
        return self.head(self.ln_f(x_BNC))  # (B, N, vocab)
