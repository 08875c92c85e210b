"""What the two FlexAttention backends share: the compiled kernel, block-mask caching, support rules."""

from __future__ import annotations

import functools
from typing import Callable

import torch

from ..registry import AttentionBackend, _dtype_name
from ._optional import cpu_compiler_missing, flex_unavailable_reason

# FlexAttention's CPU path (inductor C++ template) compiles forward only, for these dtypes.
_CPU_DTYPES = frozenset({torch.float32, torch.bfloat16})


@functools.cache
def compiled_flex_attention() -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


class FlexBackend(AttentionBackend):
    needs_compile = True
    hides_non_finite = True  # a NaN score is masked like an unseen one
    dtypes = frozenset({torch.float32, torch.float16, torch.bfloat16})
    backward_devices = frozenset({"cuda"})

    def __init__(self, params):
        super().__init__(params)
        self._block_masks: dict[tuple, object] = {}

    @classmethod
    def unavailable_reason(cls):
        return flex_unavailable_reason()

    @classmethod
    def not_supported_reasons(cls, device, dtype, causal, requires_grad, head_dim=None, features=frozenset()):
        reasons = super().not_supported_reasons(device, dtype, causal, requires_grad, head_dim, features)
        if torch.device(device).type == "cpu":
            if dtype in cls.dtypes and dtype not in _CPU_DTYPES:
                allowed = ", ".join(sorted(_dtype_name(d) for d in _CPU_DTYPES))
                reasons.append(f"dtype={_dtype_name(dtype)} on cpu (supported on cpu: {allowed})")
            if (missing := cpu_compiler_missing()) is not None:
                reasons.append(missing)
        if requires_grad and torch.device(device).type == "cpu":
            reasons[:] = [r for r in reasons if not r.startswith("backward")]
            reasons.append("FlexAttention backward is not supported on CPU")
        return reasons

    def mask_mod(self, seq_len: int, num_heads: int, causal: bool) -> Callable:
        raise NotImplementedError

    def score_mod(self, seq_len: int, num_heads: int, causal: bool) -> Callable | None:
        return None

    heads_in_mask = False  # whether the pattern depends on the head (block mask then has an H dimension)

    def block_mask(self, seq_len: int, num_heads: int, causal: bool, device: torch.device):
        from torch.nn.attention.flex_attention import create_block_mask

        key = (seq_len, num_heads, causal, str(device))
        if key not in self._block_masks:
            heads = num_heads if self.heads_in_mask else None
            self._block_masks[key] = create_block_mask(
                self.mask_mod(seq_len, num_heads, causal), None, heads, seq_len, seq_len, device=device
            )
        return self._block_masks[key]

    def forward(self, q, k, v, causal):
        batch, seq_len, heads, _ = q.shape
        out_BHND = compiled_flex_attention()(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            score_mod=self.score_mod(seq_len, heads, causal),
            block_mask=self.block_mask(seq_len, heads, causal, q.device),
            scale=self.params.scale,
        )
        return out_BHND.transpose(1, 2)

    def executed_pairs(self, seq_len, num_heads, causal, device="cpu", backward=False):
        """Whole tiles of the block mask: what the kernel scores, masked or not."""
        mask = self.block_mask(seq_len, num_heads, causal, torch.device("cpu"))
        tiles = int(mask.kv_num_blocks.sum()) + (int(mask.full_kv_num_blocks.sum())
                                                 if mask.full_kv_num_blocks is not None else 0)
        q_block, kv_block = mask.BLOCK_SIZE
        per_head = 1 if self.heads_in_mask else num_heads
        return tiles * per_head * min(q_block, seq_len) * min(kv_block, seq_len)
