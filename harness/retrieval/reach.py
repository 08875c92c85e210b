"""What a stack of attention layers can reach: which earlier tokens can influence the output at a position.

One layer lets query p read key j when the pattern scores (p, j) for some head (the output projection mixes
heads). The residual stream keeps each position's own information, so after L layers p is influenced by j when
a chain p = p_L >= ... >= p_0 = j exists with each step visible in one layer: the L-th power of the one-layer
visibility-or-identity relation. An answer is reachable when every position it needs is (tasks.py "sources").

Closed forms: dense reaches everything causal; a causal sliding window with left extent W reaches back exactly
min(L * W, N - 1) (L * (W + 1) with the model's token shift). Dilated attention reaches a position-dependent set (a query at a segment start sees nothing
before it in one layer, and with nested segment lengths never at any depth), computed here from the spec's
index function by boolean matrix powers; only used at the modest lengths the retrieval tasks run at.
"""

from __future__ import annotations

import torch

from attention_impls import make_params
from attention_impls.mechanisms import get_mechanism
from attention_impls.params import AttentionParams


def params_of(attention: dict) -> AttentionParams:
    return make_params(attention["mechanism"], **(attention.get("params") or {}))


def one_layer_visible(params: AttentionParams, seq_len: int, num_heads: int, causal: bool,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, N, N) bool on `device`: head h's query p scores key j, straight from the spec's index functions."""
    query = torch.arange(seq_len, device=device)[None, :, None]
    key = torch.arange(seq_len, device=device)[None, None, :]
    head = torch.arange(num_heads, device=device)[:, None, None]
    visible = get_mechanism(params).multiplicity(params, seq_len, num_heads, causal)(query, key, head) > 0
    if causal:
        visible = visible & (key <= query)
    return visible.expand(num_heads, seq_len, seq_len).clone()


def receptive_field(params: AttentionParams, seq_len: int, num_heads: int, depth: int, causal: bool = True,
                    token_shift: bool = False, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, N) bool on the CPU: token j can influence the output at position p through `depth` layers.

    token_shift: each layer's attention input at m also holds position m - 1 (model.TokenShift), so a layer that
    lets p read m also lets it read m - 1. device: where the matrix powers run (a GPU preset's N = 16384 is
    4.4 TFLOP per layer, minutes on a CPU).
    """
    if depth < 1:
        raise ValueError(f"depth={depth} must be >= 1")
    mechanism = get_mechanism(params)
    closed = mechanism.receptive_field(params, seq_len, depth, causal, token_shift)
    if closed is not None:
        return closed
    step = (one_layer_visible(params, seq_len, num_heads, causal, device).any(dim=0)
            | torch.eye(seq_len, dtype=torch.bool, device=device))
    if token_shift:
        step[:, :-1] |= step[:, 1:].clone()  # reading m also reads m - 1
    field = step
    step_f = step.float()
    for _ in range(depth - 1):
        field = (field.float() @ step_f) > 0  # path counts of a bool matrix times one are <= N: exact in float32
    return field.cpu()


def theoretical_reach(params: AttentionParams, seq_len: int, num_heads: int, depth: int, causal: bool = True,
                      token_shift: bool = False, field: torch.Tensor | None = None) -> int:
    """The longest distance p - j over which any token can influence a later position (N - 1 at most).

    field: this configuration's receptive_field when already computed (else computed here, where no closed form
    exists)."""
    closed = get_mechanism(params).reach(params, seq_len, depth, causal, token_shift)
    if closed is not None:
        return closed
    if field is None:
        field = receptive_field(params, seq_len, num_heads, depth, causal, token_shift)
    return longest_distance(field)


def longest_distance(field: torch.Tensor) -> int:
    """The largest p - j with field[p, j] (every row holds its diagonal), without an N x N distance matrix."""
    first = field.to(torch.uint8).argmax(dim=1)  # the earliest position each row can reach
    return int((torch.arange(field.shape[0]) - first).max())


def items_reachable(field: torch.Tensor, query_pos: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """(I,) bool: every source position (-1 = padding) of each item is in its query position's field."""
    rows = field[query_pos]  # (I, N)
    needed = sources.clamp(min=0)
    seen = torch.gather(rows, 1, needed) | (sources < 0)
    return seen.all(dim=1)


def answers_visible(field: torch.Tensor, query_pos: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """(I,) bool: the positions that hold the answer (every source but the first: MQAR's value, passkey's key
    tokens) are in the query's field. An item whose answer is not visible can only be guessed; one whose answer is
    visible but whose key is not can still be picked by elimination among the visible, unclaimed answers."""
    return items_reachable(field, query_pos, sources[:, 1:])


def items_split(visible_HNN: torch.Tensor, query_pos: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """(I,) bool: some head lets the query see the item's first source (MQAR's key token, passkey's marker) but
    not every position that holds its answer: the sparse grid cuts the item in two in that head.

    `visible_HNN` is one layer's visibility per head (one_layer_visible). Such a head matches the key and reads a
    position without the answer, a decoy that competes with the head that does see it: the loss of fine detail a
    dilated grid pays. Measured on a 1-layer dilated [16, 32, 64] / [1, 2, 4] model: 0.999 on unsplit items within
    reach, 0.41 on split ones (2026-12-01). Defined for one layer; stacked layers mix heads between lookups."""
    first = sources[:, 0]
    answer = sources[:, 1:]
    sees_first = visible_HNN[:, query_pos, first]  # (H, I)
    needed = answer.clamp(min=0)
    sees_answer = torch.stack([
        (torch.gather(visible_HNN[h][query_pos], 1, needed) | (answer < 0)).all(dim=1)
        for h in range(visible_HNN.shape[0])])  # (H, I)
    return (sees_first & ~sees_answer).any(dim=0)


def distance_buckets(edges: list[int], longest: int) -> list[tuple[int, int]]:
    """Inclusive (lo, hi) distance buckets covering [edges[0], longest]; edges=[] means 0, 1, 2, 4, 8, ..."""
    if not edges:
        edges = [0, 1]
        while edges[-1] * 2 <= longest:
            edges.append(edges[-1] * 2)
    edges = [e for e in edges if e <= longest]
    return [(lo, (edges[i + 1] - 1) if i + 1 < len(edges) else longest) for i, lo in enumerate(edges)]
