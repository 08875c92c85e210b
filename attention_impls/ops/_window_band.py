"""Sliding-window attention for any window (left, right) through torch's fused CPU flash kernel and a band mask.

Query p sees keys p - left .. p + right. An interior block of `block` queries starting at s sees the
span = block + left + right keys starting at s - left, under the same (block, span) mask for every block, so all
interior blocks run as one kernel call whose keys and values are an overlapping strided view of k and v (the
kernel reads them through their strides; nothing is copied). Queries near either end, whose band would leave the
sequence, run in chunks of `EDGE_ROWS` with masks of their own.

The kernel skips no tile under a mask, so a block pays for its whole band: the work executed is
span / (left + right + 1) times the useful work, which favours small blocks; the kernel's 32-row query tile is the
smallest it takes (results/perf/NOTES.md has the sweep). The backward uses larger blocks, where the kernel's
backward runs faster per FLOP, and sums each block's key and value gradients back over the overlapping bands.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kernels import CpuFlashKernel, LseFunction

FORWARD_BLOCK = 32  # queries per interior block in the forward: the kernel's smallest query tile
# Queries per interior block in the backward, by window width (left + right + 1): (widest window, block).
# A block pays for its whole band, block + width - 1 keys, and the kernel's backward runs larger query tiles
# faster per FLOP (192 rows is the fewest that get 64-row tiles): wide windows favour large blocks, narrow ones
# small blocks, where the band is mostly waste (window 8: 32-row blocks ran 2.4x faster than 192; NOTES.md).
BACKWARD_BLOCKS = ((64, 32), (192, 64), (384, 128))
WIDE_BACKWARD_BLOCK = 192
EDGE_ROWS = 256  # queries per edge chunk: bounds an edge mask at EDGE_ROWS x (EDGE_ROWS + left + right)
# interior queries per backward call: the kernel returns (zero-filled) key and value gradients per band, 3.7x the
# group's rows for window 512; ~14 MB at 2048 rows, which the allocator hands back call after call, where 8192 rows
# (a fresh 60 MB each) ran the backward 10-15 % slower (results/perf/NOTES.md)
BACKWARD_GROUP_ROWS = 2048


@dataclass(frozen=True)
class Band:
    """Which queries of a sequence run as interior blocks, and which as edge chunks."""

    seq_len: int
    left: int
    right: int
    block: int

    @property
    def span(self) -> int:
        return self.block + self.left + self.right

    @property
    def num_blocks(self) -> int:
        """Interior blocks cover queries left .. left + num_blocks * block: every key they see exists."""
        return max(0, (self.seq_len - self.left - self.right) // self.block)

    @property
    def interior(self) -> tuple[int, int]:
        if self.num_blocks == 0:
            return 0, 0
        return self.left, self.left + self.num_blocks * self.block

    def edges(self) -> list[tuple[int, int]]:
        """(first query, end) of every edge chunk."""
        start, stop = self.interior
        ranges = [(0, start), (stop, self.seq_len)] if stop else [(0, self.seq_len)]
        return [(first, min(first + EDGE_ROWS, end)) for begin, end in ranges for first in range(begin, end, EDGE_ROWS)]

    def keys(self, first: int, end: int) -> tuple[int, int]:
        """The keys queries first .. end - 1 can see."""
        return max(0, first - self.left), min(self.seq_len, end + self.right)

    def mask(self, first: int, end: int, key_first: int, key_end: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive (queries, keys) mask: 0 where p - left <= j <= p + right, -inf elsewhere."""
        offset = torch.arange(key_first, key_end)[None, :] - torch.arange(first, end)[:, None]  # j - p
        visible = (offset >= -self.left) & (offset <= self.right)
        return torch.zeros(visible.shape, dtype=dtype).masked_fill_(~visible, float("-inf"))

    def interior_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """The mask every interior block shares: block starting at s against keys from s - left."""
        return self.mask(self.left, self.left + self.block, 0, self.span, dtype)

    def executed_pairs(self) -> int:
        """(query, key) pairs the kernel scores, per batch entry and head."""
        edges = sum((end - first) * (key_end - key_first)
                    for first, end in self.edges() for key_first, key_end in [self.keys(first, end)])
        return edges + self.num_blocks * self.block * self.span


def backward_block(left: int, right: int) -> int:
    """Queries per interior block in the backward of a window that sees keys p - left .. p + right."""
    width = left + right + 1
    return next((block for widest, block in BACKWARD_BLOCKS if width <= widest), WIDE_BACKWARD_BLOCK)


def _windows(x: torch.Tensor, count: int, rows: int, step: int) -> torch.Tensor:
    """`count` windows of `rows` rows of x (L, ...), one every `step` rows: a strided view, overlapping when
    rows > step."""
    return x.as_strided((count, rows, *x.shape[1:]), (step * x.stride(0), *x.stride()), x.storage_offset())


def band_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, left: int, right: int, scale: float,
                 block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k, v contiguous (B, N, H, D) on CPU; returns (out (B, N, H, D), lse (B, H, N))."""
    batch, seq_len, heads, head_dim = q.shape
    band = Band(seq_len, left, right, block or FORWARD_BLOCK)
    kernel = CpuFlashKernel()
    out = torch.empty_like(q)
    lse = torch.empty(batch, heads, seq_len, dtype=torch.promote_types(q.dtype, torch.float32))
    for first, end in band.edges():
        key_first, key_end = band.keys(first, end)
        out[:, first:end], lse[:, :, first:end] = kernel.forward(
            q[:, first:end], k[:, key_first:key_end], v[:, key_first:key_end], False, scale,
            band.mask(first, end, key_first, key_end, q.dtype))
    start, stop = band.interior
    if band.num_blocks:
        mask = band.interior_mask(q.dtype)
        for b in range(batch):  # a strided band view cannot step from one batch entry into the next
            keys, values = (_windows(x[b], band.num_blocks, band.span, band.block) for x in (k, v))
            queries = q[b, start:stop].view(band.num_blocks, band.block, heads, head_dim)
            out_blocks, lse_blocks = kernel.forward(queries, keys, values, False, scale, mask)
            out[b, start:stop] = out_blocks.reshape(-1, heads, head_dim)
            lse[b, :, start:stop] = lse_blocks.transpose(0, 1).reshape(heads, -1)
    return out, lse


def band_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                  lse: torch.Tensor, left: int, right: int, scale: float,
                  block: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients from the (out, lse) of the whole window, all (B, N, H, D) contiguous; float32 accumulation."""
    batch, seq_len, heads, head_dim = q.shape
    band = Band(seq_len, left, right, block or backward_block(left, right))
    kernel = CpuFlashKernel()
    acc_dtype = torch.promote_types(q.dtype, torch.float32)
    grad_q = torch.empty(q.shape, dtype=acc_dtype)
    grad_k, grad_v = (torch.zeros(q.shape, dtype=acc_dtype) for _ in range(2))
    for first, end in band.edges():
        key_first, key_end = band.keys(first, end)
        dq, dk, dv = kernel.backward(
            grad_out[:, first:end], q[:, first:end], k[:, key_first:key_end], v[:, key_first:key_end],
            out[:, first:end], lse[:, :, first:end], False, scale, band.mask(first, end, key_first, key_end, q.dtype))
        grad_q[:, first:end] = dq
        grad_k[:, key_first:key_end] += dk
        grad_v[:, key_first:key_end] += dv
    if band.num_blocks:
        mask = band.interior_mask(q.dtype)
        group = max(1, BACKWARD_GROUP_ROWS // band.block)
        for b in range(batch):
            for first_block in range(0, band.num_blocks, group):
                count = min(group, band.num_blocks - first_block)
                first = band.left + first_block * band.block  # first query; its keys start at first - left
                rows = slice(first, first + count * band.block)

                def blocks(x):
                    return x[b, rows].view(count, band.block, heads, head_dim)

                keys, values = (_windows(x[b, first - band.left:], count, band.span, band.block) for x in (k, v))
                lse_blocks = lse[b, :, rows].view(heads, count, band.block).transpose(0, 1)
                dq, dk, dv = kernel.backward(blocks(grad_out), blocks(q), keys, values, blocks(out), lse_blocks,
                                             False, scale, mask)
                grad_q[b, rows] = dq.reshape(-1, heads, head_dim)
                for total, per_band in ((grad_k, dk), (grad_v, dv)):
                    _add_bands(total[b, first - band.left:], per_band, band.block)
    return grad_q, grad_k, grad_v


def _add_bands(total: torch.Tensor, per_band: torch.Tensor, step: int) -> None:
    """total[i * step + j] += per_band[i, j] for bands that overlap: in slices of `step` band rows, which do not."""
    count, span = per_band.shape[:2]
    for offset in range(0, span, step):
        rows = min(step, span - offset)
        _windows(total[offset:], count, rows, step).add_(per_band[:, offset : offset + rows])


def band_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, left: int, right: int,
                   scale: float) -> torch.Tensor:
    """Exact sliding-window attention on CPU, (batch, seq, heads, head_dim): query p sees keys p - left .. p + right
    that exist; windows wider than the sequence are fine (there are no interior blocks then, only edge chunks)."""
    if q.device.type != "cpu":
        raise ValueError(f"the band path runs torch's CPU flash kernel; got tensors on {q.device}")
    return LseFunction.apply(q, k, v, band_forward, band_backward, {"left": left, "right": right, "scale": scale})
