"""Float64 references, written from ../shared/spec/attention.md alone: materialise scores, mask, softmax.

These are the test oracle. They are O(N^2) in memory and slow on purpose; keep them readable.
Tensors are (batch, seq, heads, head_dim); outputs are returned in the input dtype.
"""

from __future__ import annotations

import math

import torch

from .params import DenseParams, DilatedParams, SlidingWindowParams


def _scores(q: torch.Tensor, k: torch.Tensor, scale: float | None) -> torch.Tensor:
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return torch.einsum("bphd,bjhd->bhpj", q.double(), k.double()) * scale  # (B, H, N, N)


def _softmax_attend(scores: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    weights = torch.softmax(scores, dim=-1)  # (B, H, N, N); every row has at least one visible key
    return torch.einsum("bhpj,bjhd->bphd", weights, v.double())


def _causal(n: int, device: torch.device) -> torch.Tensor:
    p = torch.arange(n, device=device)
    return p[None, :] <= p[:, None]  # [query, key]: key <= query


def dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: DenseParams, causal: bool) -> torch.Tensor:
    scores = _scores(q, k, params.scale)
    if causal:
        scores = scores.masked_fill(~_causal(q.shape[1], q.device), float("-inf"))
    return _softmax_attend(scores, v).to(q.dtype)


def sliding_window(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: SlidingWindowParams, causal: bool
) -> torch.Tensor:
    left, right = params.window(causal)
    n = q.shape[1]
    p = torch.arange(n, device=q.device)
    query, key = p[:, None], p[None, :]
    visible = (key >= query - left) & (key <= query + right)
    scores = _scores(q, k, params.scale).masked_fill(~visible, float("-inf"))
    return _softmax_attend(scores, v).to(q.dtype)


def dilated_multiplicity(n: int, num_heads: int, params: DilatedParams, causal: bool, device=None) -> torch.Tensor:
    """(H, N, N) count of branches in which query p sees key j, straight from the spec's definition."""
    p = torch.arange(n, device=device)
    query, key = p[:, None], p[None, :]
    count = torch.zeros(num_heads, n, n, dtype=torch.int64, device=device)
    for segment, rate in zip(params.segment_lengths, params.dilation_rates):
        segment = min(segment, n)
        for head in range(num_heads):
            # spec, "Head offsets": cyclic o = h mod r; blocked o = h // ceil(H / r)
            offset = head % rate if params.head_offsets == "cyclic" else head // math.ceil(num_heads / rate)
            q_part = (query % segment) % rate == offset
            k_part = (key % segment) % rate == offset
            same_segment = query // segment == key // segment
            count[head] += (q_part & k_part & same_segment).long()
    if causal:
        count = count * _causal(n, device)
    return count


def dilated(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: DilatedParams, causal: bool) -> torch.Tensor:
    # One softmax over the multiset union of the branches' keys: a key seen c times adds log c to its score.
    count = dilated_multiplicity(q.shape[1], q.shape[2], params, causal, q.device).double()
    scores = _scores(q, k, params.scale) + torch.log(count)[None]  # log 0 = -inf masks unseen keys
    return _softmax_attend(scores, v).to(q.dtype)
