"""LongNet dilated attention as gathered branches merged by log-sum-exp, exact under autograd.

For branch (segment w, rate r) and head offset o, the taking-part positions of each segment are a strided
slice: segment s, positions s*w + o, s*w + o + r, ..., and the heads with offset o are a slice too (o, o + r, ...
for cyclic offsets; one contiguous block for blocked ones). So a branch "piece" is a strided view of
(batch, seq, heads, head_dim). Full segments are batched in one kernel call; the short last segment
(if any) is its own call, so no padding exists and none needs masking.

Forward merges pieces online, in place, into one float32 accumulator: (out, lse) <- logaddexp-merge. Backward
calls each piece's kernel backward with the *merged* (out, lse) gathered to that piece (see kernels.py), and
scatter-adds dq, dk, dv. Nothing of size (N x branches) is ever held.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .kernels import LseFunction, LseKernel, default_scale, merge_lse_into
from .params import DilatedParams


@dataclass(frozen=True)
class Piece:
    """Segments [start, start + num_segments * length), rows offset::rate of each, the heads with that offset."""

    start: int
    num_segments: int
    length: int
    offset: int
    rate: int
    branch: int = 0  # index of the (segment, rate) pair; pieces of one branch never overlap
    heads: slice | None = None  # None: offset::rate (cyclic offsets)

    def _heads(self) -> slice:
        return slice(self.offset, None, self.rate) if self.heads is None else self.heads

    def view(self, x_BNHD: torch.Tensor) -> torch.Tensor:
        """Strided view (B, num_segments, m, Hs, D) of a contiguous (B, N, H, D) tensor."""
        b, _, h, d = x_BNHD.shape
        span = x_BNHD[:, self.start : self.start + self.num_segments * self.length]
        return span.view(b, self.num_segments, self.length, h, d)[:, :, self.offset :: self.rate, self._heads()]

    def lse_view(self, lse_BHN: torch.Tensor) -> torch.Tensor:
        """Strided view (B, Hs, num_segments, m) of a contiguous (B, H, N) tensor."""
        b, h, _ = lse_BHN.shape
        span = lse_BHN[:, self._heads(), self.start : self.start + self.num_segments * self.length]
        return span.unflatten(2, (self.num_segments, self.length))[..., self.offset :: self.rate]

    def gather(self, x_BNHD: torch.Tensor, head_major: bool = False) -> torch.Tensor:
        """(B * num_segments, m, Hs, D): one kernel batch entry per segment. head_major: a copy laid out
        (B * S, Hs, m, D) underneath (returned as its transposed view), so that a kernel working head by head reads
        each head's rows contiguously (torch's CPU flash kernel: 1.16x faster than on rows of all heads); else
        row-major, a view where the rows are contiguous already (rate 1, every head)."""
        piece = self.view(x_BNHD)
        if not head_major:
            return piece.reshape(-1, *piece.shape[2:])
        batch, segments, rows, heads, dim = piece.shape
        out = torch.empty(batch * segments, heads, rows, dim, dtype=x_BNHD.dtype, device=x_BNHD.device)
        out.view(batch, segments, heads, rows, dim).copy_(piece.transpose(2, 3))
        return out.transpose(1, 2)

    def split(self, max_segments: int) -> list["Piece"]:
        """This piece as pieces of at most max_segments segments each (the same rows, heads and branch)."""
        return [Piece(self.start + first * self.length, min(max_segments, self.num_segments - first), self.length,
                      self.offset, self.rate, self.branch, self.heads)
                for first in range(0, self.num_segments, max_segments)]

    def gather_lse(self, lse_BHN: torch.Tensor) -> torch.Tensor:
        piece = self.lse_view(lse_BHN)  # (B, Hs, S, m)
        return piece.transpose(1, 2).reshape(-1, piece.shape[1], piece.shape[3])  # (B * S, Hs, m)

    def unbatch(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """(B * S, m, Hs, D) -> (B, S, m, Hs, D), matching `view`."""
        return x.reshape(batch, self.num_segments, *x.shape[1:])

    def unbatch_lse(self, lse: torch.Tensor, batch: int) -> torch.Tensor:
        """(B * S, Hs, m) -> (B, Hs, S, m), matching `lse_view`."""
        return lse.reshape(batch, self.num_segments, *lse.shape[1:]).transpose(1, 2)


def kernel_pieces(params: DilatedParams, seq_len: int, num_heads: int, head_major: bool) -> list[Piece]:
    """The plan as the kernel calls take it. Head-major gathers copy every branch, rate 1 too, so each call
    holds at most 1/8 of the sequence's rows of all heads (the copies stay small next to the output), and never
    less than 2^15 rows x heads (short sequences: more calls would cost more than the memory they save)."""
    if not head_major:
        return plan(params, seq_len, num_heads)
    budget = max(seq_len * num_heads // 8, 1 << 15)  # rows x heads one call may gather
    pieces = []
    for piece in plan(params, seq_len, num_heads):
        heads = len(range(num_heads)[piece._heads()])
        per_segment = max(1, len(range(piece.offset, piece.length, piece.rate)) * heads)
        pieces.extend(piece.split(max(1, budget // per_segment)))
    return pieces


def plan(params: DilatedParams, seq_len: int, num_heads: int) -> list[Piece]:
    pieces = []
    for branch, (segment, rate) in enumerate(params.branches(seq_len)):
        full_segments, tail = divmod(seq_len, segment)
        for offset in params.offsets(rate, num_heads):
            heads = params.heads_with_offset(offset, rate, num_heads)
            if full_segments and offset < segment:
                pieces.append(Piece(0, full_segments, segment, offset, rate, branch, heads))
            if tail > offset:
                pieces.append(Piece(full_segments * segment, 1, tail, offset, rate, branch, heads))
    return pieces


def dilated_forward(q, k, v, params: DilatedParams, kernel: LseKernel, causal: bool):
    """Returns (out in q.dtype, lse (B, H, N) float32)."""
    batch, seq_len, num_heads, head_dim = q.shape
    scale = default_scale(head_dim, params.scale)
    acc_dtype = torch.promote_types(q.dtype, torch.float32)
    lse_shape = (batch, num_heads, seq_len)
    if params.dilation_rates[0] == 1:  # the first branch writes every (position, head): nothing to initialise
        out_acc = torch.empty(q.shape, dtype=acc_dtype, device=q.device)
        lse_acc = torch.empty(lse_shape, dtype=acc_dtype, device=q.device)
    else:
        out_acc = torch.zeros(q.shape, dtype=acc_dtype, device=q.device)
        lse_acc = torch.full(lse_shape, float("-inf"), dtype=acc_dtype, device=q.device)
    head_major = getattr(kernel, "head_major", False)
    for piece in kernel_pieces(params, seq_len, num_heads, head_major):
        out_part, lse_part = kernel.forward(*(piece.gather(x, head_major) for x in (q, k, v)), causal, scale)
        out_part, lse_part = piece.unbatch(out_part, batch), piece.unbatch_lse(lse_part, batch)
        if piece.branch == 0:  # first writer of its positions: a merge with "nothing yet" is a copy
            piece.view(out_acc).copy_(out_part)
            piece.lse_view(lse_acc).copy_(lse_part)
        else:
            merge_lse_into(piece.view(out_acc), piece.lse_view(lse_acc), out_part, lse_part.to(acc_dtype))
    return out_acc.to(q.dtype), lse_acc


def dilated_backward(grad_out, q, k, v, out, lse, params: DilatedParams, kernel: LseKernel, causal: bool):
    batch, seq_len, num_heads, head_dim = q.shape
    scale = default_scale(head_dim, params.scale)
    acc_dtype = torch.promote_types(q.dtype, torch.float32)
    first_covers_all = params.dilation_rates[0] == 1  # as in forward: the first branch writes everything
    allocate = torch.empty if first_covers_all else torch.zeros
    grads = [allocate(q.shape, dtype=acc_dtype, device=q.device) for _ in range(3)]
    lse_kernel = lse if q.dtype == torch.float64 else lse.float()
    head_major = getattr(kernel, "head_major", False)
    for piece in kernel_pieces(params, seq_len, num_heads, head_major):
        piece_grads = kernel.backward(*(piece.gather(x, head_major) for x in (grad_out, q, k, v, out)),
                                      piece.gather_lse(lse_kernel), causal, scale)
        for total, part in zip(grads, piece_grads):
            if first_covers_all and piece.branch == 0:
                piece.view(total).copy_(piece.unbatch(part, batch))
            else:
                piece.view(total).add_(piece.unbatch(part, batch))
    return tuple(g.to(q.dtype) for g in grads)


def dilated_attention(q, k, v, params: DilatedParams, kernel: LseKernel, causal: bool) -> torch.Tensor:
    return LseFunction.apply(q, k, v, dilated_forward, dilated_backward,
                             {"params": params, "kernel": kernel, "causal": causal})
