"""What one attention call asks for beyond q, k and v (../shared/spec/attention.md, "Positions, padding, grouped
heads, scale, dropout"): where the queries and keys sit, which keys are padding, how heads are grouped, the scale
and attention dropout. `make_call` checks every argument against the tensors before any kernel runs.

Positions: key j of batch element b sits at j - position_offsets[b], query i at query_offset + i -
position_offsets[b]. KV-cache decoding is one query at query_offset = M - 1, chunked prefill any block; with
L == M and no query_offset the positions are the plain 0..N-1. L != M without a query_offset is attention between
two unrelated sequences (cross-attention): the spec defines it for dense, non-causal, only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .mechanisms.base import check_scale

# The features a call may use; a backend declares the ones it implements in `supports`.
FEATURE_WORDS = {
    "query_block": "a query block at positions of its own (query_offset, or fewer queries than keys)",
    "decode": "one query at a position of its own (a decoding step: query_offset, one query)",
    "cross": "attention between unrelated sequences (fewer queries than keys, no query_offset)",
    "position_offsets": "per-sequence position offsets (left padding)",
    "key_padding": "key padding (key_padding_mask or key_lengths)",
    "grouped_heads": "grouped-query heads",
    "scale": "a per-call scale",
    "dropout": "attention dropout",
    "attn_mask": "an attn_mask on top of the pattern",
}
FEATURES = tuple(FEATURE_WORDS)
# Every backend takes these: attention_impls.Attention rescales q for a per-call scale and repeats k and v for
# grouped heads where a backend has no way of its own.
FALLBACKS = frozenset({"scale", "grouped_heads"})


def dropout_keep(shape: tuple[int, ...], p: float, device: torch.device) -> torch.Tensor:
    """The weights dropout keeps, drawn from torch's global generator (so a test can draw the same mask again
    under the same seed and hand it to the reference)."""
    return torch.empty(shape, device=device).bernoulli_(1.0 - p).bool()


@dataclass(frozen=True)
class Call:
    causal: bool
    query_len: int
    key_len: int
    num_heads: int
    kv_heads: int
    query_offset: int | None  # position of the first query (before position_offsets); None: unrelated sequences
    position_offsets: torch.Tensor | None  # (B,) int64: a left-padded sequence's start
    key_padding_mask: torch.Tensor | None  # (B, M) bool, True = padding (never seen)
    scale: float | None  # None: the mechanism's (1/sqrt(D) unless built with one)
    dropout_p: float
    attn_mask: torch.Tensor | None = None  # broadcasts to (B, H, L, M): bool True = may be seen, or float added
    key_start: int = 0  # index of the first key held: a decoding step may read a slice of its cache
    clip_length: int | None = None  # the key length segments clip to (the whole cache's); None: key_len

    @property
    def features(self) -> frozenset[str]:
        block = self.query_offset is not None and (self.query_len != self.key_len or self.query_offset != 0
                                                   or self.key_start != 0)
        used = {
            # a decoding step is a block of one query, apart so that a backend can take it alone
            "query_block": block and self.query_len > 1,
            "decode": block and self.query_len == 1,
            "cross": self.query_offset is None,
            "position_offsets": self.position_offsets is not None,
            "key_padding": self.key_padding_mask is not None,
            "grouped_heads": self.kv_heads != self.num_heads,
            "scale": self.scale is not None,
            "dropout": self.dropout_p > 0,
            "attn_mask": self.attn_mask is not None,
        }
        return frozenset(name for name, is_used in used.items() if is_used)

    def positions(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(query positions (B or 1, L), key positions (B or 1, M)), int64."""
        query = torch.arange(self.query_len, device=device)[None] + (self.query_offset or 0)
        key = torch.arange(self.key_len, device=device)[None] + self.key_start
        if self.position_offsets is not None:
            offsets = self.position_offsets.to(device)[:, None]
            query, key = query - offsets, key - offsets
        return query, key

    @property
    def key_length(self) -> int:
        """The length the spec's rules clip to: the whole key sequence's, also when a slice of it is held."""
        return self.clip_length if self.clip_length is not None else self.key_len

    def key_seen(self, device: torch.device) -> torch.Tensor | None:
        """(B or 1, M) bool: keys that may be seen at all (not padding, not at a negative position); None = all."""
        seen = None
        if self.key_padding_mask is not None:
            seen = ~self.key_padding_mask.to(device)
        if self.position_offsets is not None:
            at_or_after_start = self.positions(device)[1] >= 0
            seen = at_or_after_start if seen is None else seen & at_or_after_start
        return seen


def _check_batch_vector(name: str, value: Any, batch: int, device: torch.device) -> torch.Tensor:
    tensor = torch.as_tensor(value, device=device)
    if tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex():
        raise TypeError(f"{name} must hold integers, got dtype={str(tensor.dtype).removeprefix('torch.')}")
    if tensor.shape != (batch,):
        raise ValueError(f"{name} must have shape (batch,) = ({batch},), got {tuple(tensor.shape)}")
    return tensor.long()


def make_call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: Any = False, scale: Any = None,
              query_offset: Any = None, position_offsets: Any = None, key_padding_mask: Any = None,
              key_lengths: Any = None, dropout_p: Any = 0.0, attn_mask: Any = None) -> Call:
    """Check the call's arguments against q (B, L, H, D), k and v (B, M, H_kv, D); each error names the value
    and what is allowed."""
    if not isinstance(causal, bool):
        raise TypeError(f"causal={causal!r} must be a bool, got {type(causal).__name__}")
    batch, query_len, num_heads, head_dim = q.shape
    key_len, kv_heads = k.shape[1], k.shape[2]
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape (batch, keys, kv_heads, head_dim), got "
                         f"k={tuple(k.shape)}, v={tuple(v.shape)}")
    if k.shape[0] != batch or k.shape[3] != head_dim:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree in batch and head_dim "
                         f"(dims 0 and 3)")
    if kv_heads < 1 or num_heads % kv_heads:
        raise ValueError(f"q has {num_heads} heads and k/v {kv_heads}: grouped-query attention needs the query "
                         f"heads to be a multiple of the key/value heads")
    if key_len < 1:
        raise ValueError(f"k and v hold {key_len} keys; at least one is needed")
    if query_offset is None and query_len == key_len:
        query_offset = 0
    if query_offset is None:
        if causal:
            raise ValueError(f"causal attention of {query_len} queries against {key_len} keys needs query_offset= "
                             f"(the position of the first query; {key_len - query_len} for the last {query_len} "
                             f"positions, as in KV-cache decoding): causal order is undefined between unrelated "
                             f"sequences")
        if position_offsets is not None:
            raise ValueError("position_offsets needs query_offset= when queries and keys differ in length")
    else:
        if isinstance(query_offset, bool) or not isinstance(query_offset, int):
            raise TypeError(f"query_offset={query_offset!r} must be an int (the position of the first query)")
        if not 0 <= query_offset <= key_len - query_len:
            raise ValueError(f"query_offset={query_offset} must be in [0, {key_len - query_len}] for {query_len} "
                             f"queries against {key_len} keys (a query block lies within its keys)")
    offsets = None
    if position_offsets is not None:
        offsets = _check_batch_vector("position_offsets", position_offsets, batch, q.device)
        if bool((offsets < 0).any()) or bool((offsets >= key_len).any()):
            raise ValueError(f"position_offsets={offsets.tolist()} must be in [0, {key_len - 1}] (the index where "
                             f"each sequence's real tokens start)")
    padding = None
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dtype != torch.bool:
            raise TypeError("key_padding_mask must be a bool tensor (batch, keys), True where the key is padding")
        if key_padding_mask.shape != (batch, key_len):
            raise ValueError(f"key_padding_mask must have shape (batch, keys) = ({batch}, {key_len}), got "
                             f"{tuple(key_padding_mask.shape)}")
        padding = key_padding_mask.to(q.device)
    if key_lengths is not None:
        lengths = _check_batch_vector("key_lengths", key_lengths, batch, q.device)
        if bool((lengths < 0).any()) or bool((lengths > key_len).any()):
            raise ValueError(f"key_lengths={lengths.tolist()} must be in [0, {key_len}]")
        beyond = torch.arange(key_len, device=q.device)[None] >= lengths[:, None]
        padding = beyond if padding is None else padding | beyond
    check_scale(scale)
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not 0 <= dropout_p < 1:
        raise ValueError(f"dropout_p={dropout_p!r} must be a number in [0, 1)")
    mask = None
    if attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor) or not (attn_mask.dtype == torch.bool
                                                           or attn_mask.is_floating_point()):
            raise TypeError("attn_mask must be a bool tensor (True = may be seen) or a float tensor added to the "
                            "scores, broadcastable to (batch, heads, queries, keys)")
        try:
            torch.broadcast_shapes(attn_mask.shape, (batch, num_heads, query_len, key_len))
        except RuntimeError:
            raise ValueError(f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to (batch, heads, "
                             f"queries, keys) = {(batch, num_heads, query_len, key_len)}") from None
        mask = attn_mask.to(q.device)
    return Call(causal=causal, query_len=query_len, key_len=key_len, num_heads=num_heads, kv_heads=kv_heads,
                query_offset=query_offset, position_offsets=offsets, key_padding_mask=padding,
                scale=None if scale is None else float(scale), dropout_p=float(dropout_p), attn_mask=mask)
