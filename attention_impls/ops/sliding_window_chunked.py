"""Sliding window in plain PyTorch, query blocks against their key band: memory O(N * window), not O(N^2).

Queries are cut into blocks of `block` rows; block b needs keys [b*block - left, b*block + block - 1 + right],
a band of block + left + right keys. Padding the keys by `left` in front makes that band start at b*block, so
all bands are one strided `unfold` of the padded keys.

Left-only windows (causal, or right = 0) take a faster exact path, `left_band_attention`:
- forward on CPU (`band_forward`): blocks of 32 queries, each against its `left + 32` keys read through an
  overlapping strided view of k and v (no copy), in one call of torch's fused CPU flash kernel with a single band
  mask shared by every block; the queries before `left` see every earlier key and take one causal call.
- backward, and forward elsewhere: with left = k * block, query block b sees its own block causally, k - 1 earlier
  blocks fully, and block b - k where key row >= query row, which is causal once both blocks are read backwards.
  Each part runs in a fused kernel that returns log-sum-exp, merged by log-sum-exp; the backward runs each part's
  kernel backward with the merged (out, lse), which is the exact gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..kernels import CpuFlashKernel, LseKernel, MathKernel, default_scale, merge_lse_into
from ..registry import AttentionBackend, register


# Rows per left-band block: the CPU flash kernel runs causal blocks of 128-256 rows about twice as fast per FLOP as
# 512-row ones, and full (non-causal) blocks faster still (results/perf/NOTES.md), so a window is cut into
# k = left / block blocks with block in this range when left allows; otherwise block = left (k = 1).
LEFT_BAND_BLOCK_RANGE = (128, 256)


def left_band_block(left: int, block_range: tuple[int, int] | None = None) -> int:
    """The largest divisor of `left` in the block range, or `left` itself when none is."""
    low, high = block_range or LEFT_BAND_BLOCK_RANGE
    for block in range(min(high, left), low - 1, -1):
        if left % block == 0:
            return block
    return left


# Query rows per block of the CPU band forward: the flash kernel's smallest query tile (it uses 32-row tiles for
# calls with fewer than 192 queries), so a block's band is left + 32 keys for left + 1 useful ones. The kernel
# skips no tile under a mask, so every query row of a block pays for the whole band: larger blocks waste more
# (results/perf/NOTES.md has the sweep).
BAND_QUERY_BLOCK = 32


def band_mask(block: int, left: int, dtype: torch.dtype) -> torch.Tensor:
    """(block, block + left) additive mask: query row r sees band columns r .. r + left."""
    row = torch.arange(block)[:, None]
    col = torch.arange(block + left)[None, :]
    visible = (col >= row) & (col <= row + left)
    return torch.zeros(visible.shape, dtype=dtype).masked_fill_(~visible, float("-inf"))


def band_forward(q, k, v, left: int, scale: float, block: int | None = None):
    """Window (left, 0) forward on CPU, q, k, v contiguous (B, N, H, D); returns (out, lse (B, H, N)).

    Queries before `left` see every earlier key (one causal call). Query p >= left sees keys p - left .. p, so
    block b of the queries from `left` on sees the block + left keys from b * block: an overlapping strided view.
    """
    batch, seq_len, heads, head_dim = q.shape
    block = block or BAND_QUERY_BLOCK
    kernel = CpuFlashKernel()
    prefix = min(left, seq_len)
    out_prefix, lse_prefix = kernel.forward(q[:, :prefix], k[:, :prefix], v[:, :prefix], True, scale)
    if prefix == seq_len:
        return out_prefix, lse_prefix
    body = seq_len - prefix
    num_blocks = math.ceil(body / block)
    if num_blocks * block != body:  # padded keys lie after every real query, so the band mask hides them
        q, k, v = (F.pad(x, (0, 0, 0, 0, 0, num_blocks * block - body)) for x in (q, k, v))
    span = block + left
    mask = band_mask(block, left, q.dtype)
    out = torch.empty(batch, seq_len, heads, head_dim, dtype=out_prefix.dtype)
    lse = torch.empty(batch, heads, seq_len, dtype=lse_prefix.dtype)
    out[:, :prefix], lse[:, :, :prefix] = out_prefix, lse_prefix
    for b in range(batch):  # one call per batch entry: a band view cannot step across two batch entries
        bands = [x[b].as_strided((num_blocks, span, heads, head_dim),
                                 (block * x.stride(1), x.stride(1), x.stride(2), x.stride(3)),
                                 x[b].storage_offset()) for x in (k, v)]
        queries = q[b, left:].reshape(num_blocks, block, heads, head_dim)
        out_body, lse_body = kernel.forward(queries, *bands, False, scale, mask)
        out[b, prefix:] = out_body.reshape(-1, heads, head_dim)[:body]
        lse[b, :, prefix:] = lse_body.transpose(0, 1).reshape(heads, -1)[:, :body]
    return out, lse


class _LeftBand:
    """Query blocks of `block` rows against key blocks `distance` blocks earlier, as batches of blocks.

    With left = k * block, query row u of block b sees, in key block b - d: row t <= u for d = 0 (causal), every
    row for 0 < d < k (a full square), row t >= u for d = k, which is causal once both blocks are read backwards.
    """

    def __init__(self, batch: int, num_blocks: int, block: int) -> None:
        self.batch, self.num_blocks, self.block = batch, num_blocks, block

    def queries(self, x: torch.Tensor, distance: int, reverse: bool = False) -> torch.Tensor:
        """Blocks distance.. of x: (B * (nb - distance), s, ...); rows reversed when `reverse`."""
        return self._blocks(x[:, distance * self.block :], distance, reverse)

    def keys(self, x: torch.Tensor, distance: int, reverse: bool = False) -> torch.Tensor:
        """Blocks ..nb-1-distance of x, paired with `queries(..., distance)`."""
        return self._blocks(x[:, : (self.num_blocks - distance) * self.block], distance, reverse)

    def _blocks(self, x: torch.Tensor, distance: int, reverse: bool) -> torch.Tensor:
        blocks = x.reshape(self.batch, self.num_blocks - distance, self.block, *x.shape[2:])
        return (blocks.flip(2) if reverse else blocks).reshape(-1, self.block, *x.shape[2:])

    def unbatch(self, x: torch.Tensor, distance: int, reverse: bool = False) -> torch.Tensor:
        """(B * (nb - distance), s, H, D) -> (B, nb - distance, s, H, D), rows back in order."""
        blocks = x.reshape(self.batch, self.num_blocks - distance, self.block, *x.shape[2:])
        return blocks.flip(2) if reverse else blocks

    def lse_queries(self, lse_BHN: torch.Tensor, distance: int, reverse: bool = False) -> torch.Tensor:
        """The queries' lse, (B, H, Np) -> (B * (nb - distance), H, s), rows as in `queries`."""
        b, h, _ = lse_BHN.shape
        blocks = lse_BHN[:, :, distance * self.block :].reshape(b, h, self.num_blocks - distance, self.block)
        blocks = blocks.flip(3) if reverse else blocks
        return blocks.transpose(1, 2).reshape(-1, h, self.block)

    def unbatch_lse(self, lse: torch.Tensor, distance: int, reverse: bool = False) -> torch.Tensor:
        """(B * (nb - distance), H, s) -> (B, H, nb - distance, s), rows back in order."""
        blocks = lse.reshape(self.batch, self.num_blocks - distance, lse.shape[1], self.block).transpose(1, 2)
        return blocks.flip(3) if reverse else blocks

    def parts(self, left: int) -> list[tuple[int, bool]]:
        """(distance, causal) of every part that exists for this many blocks; reversed exactly when distance = k."""
        steps = left // self.block
        return [(d, d in (0, steps)) for d in range(steps + 1) if d < self.num_blocks]


def _left_band_forward(q, k, v, left: int, block: int, scale: float, kernel: LseKernel):
    """q, k, v padded to whole blocks; returns (out (B, Np, H, D) in the accumulator dtype, lse (B, H, Np))."""
    batch, padded_len, heads, head_dim = q.shape
    band = _LeftBand(batch, padded_len // block, block)
    acc_dtype = torch.promote_types(q.dtype, torch.float32)
    steps = left // block
    out = lse = None
    for distance, causal in band.parts(left):
        reverse = distance == steps and distance > 0
        out_part, lse_part = kernel.forward(band.queries(q, distance, reverse), band.keys(k, distance, reverse),
                                            band.keys(v, distance, reverse), causal, scale)
        if distance == 0:  # every query's own block: the first writer of every row
            out = out_part.reshape(batch, padded_len, heads, head_dim).to(acc_dtype)
            lse = band.unbatch_lse(lse_part, 0).reshape(batch, heads, padded_len).to(acc_dtype)
            continue
        merge_lse_into(out[:, distance * block :].view(batch, -1, block, heads, head_dim),
                       lse[:, :, distance * block :].view(batch, heads, -1, block),
                       band.unbatch(out_part, distance, reverse),
                       band.unbatch_lse(lse_part, distance, reverse).to(acc_dtype))
    return out, lse


def _left_band_backward(grad_out, q, k, v, out, lse, left: int, block: int, scale: float, kernel: LseKernel):
    batch, padded_len, heads, head_dim = q.shape
    band = _LeftBand(batch, padded_len // block, block)
    lse = lse if q.dtype == torch.float64 else lse.float()
    acc_dtype = torch.promote_types(q.dtype, torch.float32)
    steps = left // block
    grad_q = grad_k = grad_v = None
    for distance, causal in band.parts(left):
        reverse = distance == steps and distance > 0
        dq, dk, dv = kernel.backward(
            band.queries(grad_out, distance, reverse), band.queries(q, distance, reverse),
            band.keys(k, distance, reverse), band.keys(v, distance, reverse), band.queries(out, distance, reverse),
            band.lse_queries(lse, distance, reverse), causal, scale)
        if distance == 0:
            grad_q, grad_k, grad_v = (g.reshape(batch, padded_len, heads, head_dim).to(acc_dtype)
                                      for g in (dq, dk, dv))
            continue
        span = padded_len - distance * block
        grad_q[:, distance * block :] += band.unbatch(dq, distance, reverse).reshape(batch, span, heads, head_dim)
        grad_k[:, :span] += band.unbatch(dk, distance, reverse).reshape(batch, span, heads, head_dim)
        grad_v[:, :span] += band.unbatch(dv, distance, reverse).reshape(batch, span, heads, head_dim)
    return grad_q, grad_k, grad_v


def _pad_rows(x: torch.Tensor, rows: int, dim: int = 1) -> torch.Tensor:
    if rows == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim) + [0, rows]
    return F.pad(x, pad)


class _LeftBandFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, left: int, block: int, scale: float, kernel: LseKernel):
        seq_len = q.shape[1]
        q, k, v = (x.contiguous() for x in (q, k, v))
        if isinstance(kernel, CpuFlashKernel):
            out, lse = band_forward(q, k, v, left, scale)
        else:
            # Padding sits after every real position: causal real queries never see it, and the parts at
            # distance >= 1 only read keys from blocks that are entirely real. Padded query rows are dropped.
            rows = math.ceil(seq_len / block) * block - seq_len
            out, lse = _left_band_forward(*(_pad_rows(x, rows) for x in (q, k, v)), left, block, scale, kernel)
            out, lse = out[:, :seq_len].to(q.dtype), lse[:, :, :seq_len]
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.left, ctx.block, ctx.scale, ctx.kernel = left, block, scale, kernel
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        seq_len = q.shape[1]
        rows = math.ceil(seq_len / ctx.block) * ctx.block - seq_len
        # padded query rows have zero grad_out (and out), so they add nothing to any gradient
        padded = [_pad_rows(x, rows).contiguous() for x in (grad_out, q, k, v, out)]
        grads = _left_band_backward(*padded, _pad_rows(lse, rows, dim=2), ctx.left, ctx.block, ctx.scale,
                                    ctx.kernel)
        return tuple(g[:, :seq_len].to(q.dtype) for g in grads) + (None, None, None, None)


def left_band_attention(q, k, v, left: int, scale: float, block: int | None = None) -> torch.Tensor:
    """Exact sliding-window attention for windows (left, 0), left >= 1; (batch, seq, heads, head_dim)."""
    kernel = CpuFlashKernel() if q.device.type == "cpu" else MathKernel()
    block = left_band_block(left) if block is None else block
    if left % block:
        raise ValueError(f"block={block} must divide left={left}")
    return _LeftBandFunction.apply(q, k, v, left, block, scale, kernel)


def block_size(left: int, right: int, seq_len: int) -> int:
    # Rows per block trade wasted scores (the band is block + left + right wide for block + ... useful) against
    # matmul size; about half the window keeps the waste near 1.5x with matmuls still >= 64 wide.
    return max(1, min(seq_len, max(64, (left + right + 1) // 2)))


@register
class SlidingWindowChunked(AttentionBackend):
    mechanism = "sliding_window"
    name = "chunked"
    description = "pure PyTorch, query blocks x key bands; O(N * window) memory, backward everywhere"
    dtypes = frozenset({torch.float64, torch.float32, torch.float16, torch.bfloat16})

    def _geometry(self, seq_len: int, causal: bool) -> tuple[int, int, int, int]:
        left, right = self.params.window(causal)
        left, right = min(left, seq_len - 1), min(right, seq_len - 1)  # a wider window sees nothing more
        block = block_size(left, right, seq_len)
        return left, right, block, math.ceil(seq_len / block)

    def forward(self, q, k, v, causal):
        batch, seq_len, heads, head_dim = q.shape
        left, right, block, num_blocks = self._geometry(seq_len, causal)
        if right == 0 and left >= 1:
            return left_band_attention(q, k, v, left, default_scale(head_dim, self.params.scale))
        padded_len = num_blocks * block
        span = block + left + right
        compute = torch.promote_types(q.dtype, torch.float32)

        q_blocks = F.pad(q, (0, 0, 0, 0, 0, padded_len - seq_len)).view(batch, num_blocks, block, heads, head_dim)
        # keys padded by `left` in front and enough behind that every band has `span` rows
        pad_kv = (0, 0, 0, 0, left, padded_len - seq_len + right)
        k_bands = F.pad(k, pad_kv).unfold(1, span, block)  # (B, num_blocks, H, D, span)
        v_bands = F.pad(v, pad_kv).unfold(1, span, block)

        scale = default_scale(head_dim, self.params.scale)
        scores = torch.einsum("bnqhd,bnhds->bnhqs", q_blocks.to(compute), k_bands.to(compute)) * scale

        row = torch.arange(block, device=q.device)[:, None]  # query p = b*block + row
        col = torch.arange(span, device=q.device)[None, :]  # key j = b*block - left + col
        band = (col - row >= 0) & (col - row <= left + right)  # p - left <= j <= p + right
        key_pos = torch.arange(num_blocks, device=q.device)[:, None] * block - left + col  # (num_blocks, span)
        visible = band[None] & ((key_pos >= 0) & (key_pos < seq_len))[:, None, :]  # (num_blocks, block, span)
        # a finite fill, not -inf: padded query rows see no key, and must give finite (discarded) values
        scores = scores.masked_fill(~visible[None, :, None], torch.finfo(compute).min)
        weights = torch.softmax(scores, dim=-1)
        out = torch.einsum("bnhqs,bnhds->bnqhd", weights, v_bands.to(compute))
        return out.reshape(batch, padded_len, heads, head_dim)[:, :seq_len].to(q.dtype)

    def executed_pairs(self, seq_len, num_heads, causal):
        left, right, block, num_blocks = self._geometry(seq_len, causal)
        if right == 0 and left >= 1:  # the CPU forward (`band_forward`): a causal prefix, then whole bands
            prefix = min(left, seq_len)
            body_blocks = math.ceil((seq_len - prefix) / BAND_QUERY_BLOCK)
            return num_heads * (prefix * (prefix + 1) // 2
                                + body_blocks * BAND_QUERY_BLOCK * (BAND_QUERY_BLOCK + left))
        return num_heads * num_blocks * block * (block + left + right)
