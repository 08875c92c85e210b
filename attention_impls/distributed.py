"""Sequence-parallel LongNet dilated attention, and the dense baseline, over torch.distributed.

Layout. The global sequence of length N is split across the P ranks of a process group into contiguous shards,
rank i holding positions [start_i, start_i + L_i) of q, k and v, each (batch, L_i, heads, head_dim). By default
the shards follow `torch.tensor_split`: the first N mod P ranks hold ceil(N / P) positions, the rest floor(N / P)
(`shard_lengths`, `shard_sequence`). Any other split into non-empty contiguous shards works too: pass
`shard_lengths=[L_0, ..., L_{P-1}]` to the call, or leave it None and the ranks exchange their lengths (one tiny
all-gather per call, counted in `comm.metadata_bytes_sent`).

Algorithm (LongNet, Ding et al. 2023, section 3; semantics exactly ../shared/spec/attention.md):
- A branch (segment w, rate r) cuts the sequence into segments [s*w, (s+1)*w). Each rank attends, for every
  segment that touches its shard and every head offset o, its own taking-part queries to its own taking-part keys
  of that segment ("local part": causal as requested; the local rows are the same positions for q and k, so
  the causal mask is the usual square one). Whole segments inside a shard are batched into one kernel call.
- A segment that crosses a shard boundary also needs the other ranks' taking-part keys. Every rank sends, in one
  all_to_all per call, its taking-part rows of k and v (positions (p mod w) mod r == o, heads o, o + r, ...: the
  sparsified keys, 1/r of the rows and 1/r of the heads) to exactly the ranks that hold taking-part queries of
  the same segment; causal, only to later ranks, since earlier queries never see later keys. Each rank attends
  its queries to the received rows without a mask ("remote part": under causal all of them are earlier).
- All parts are merged by log-sum-exp into one accumulator (kernels.merge_lse_into), which is the spec's
  mixture (sum_i U_i) / (sum_i S_i): a branch's local and remote parts are the split of its softmax sums.
- Backward runs each part's kernel backward with the *merged* (out, lse) (see kernels.py: exact, mixture weights
  included), and returns the gradients of the received rows to their owners with the reverse all_to_all, the
  transpose of the forward exchange (an all-gather's transpose is a reduce-scatter; here each received row has
  exactly one owner, so it is a scatter back plus a local add).
Dense attention is the same thing with one branch (w = N, r = 1): the exchange is an all-gather of whole K/V
(causal: rank i sends only to ranks > i).

Bytes. `comm` counts the payload each rank sends through the collectives: for each destination rank, the bytes
of the rows it sends there (never to itself), summed; `predicted_bytes_sent` gives the same number from the
configuration alone. This is the algorithm's volume (what a direct exchange moves), independent of how the
backend routes it internally.

Failures. The process group's timeout (init_process_group(timeout=...)) bounds every collective. When one
fails, the surviving ranks check in at the rendezvous store and the error names the ranks that did not
(dead, or hung elsewhere) instead of a bare socket error.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence, TypeVar

import torch
import torch.distributed as dist

from .kernels import CpuFlashKernel, LseKernel, MathKernel, XformersKernel, default_scale, merge_lse_into
from .params import DenseParams, DilatedParams, check_dilated_coverage, make_params
from .registry import check_inputs


# ----------------------------------------------------------------------------------------------------------------
# Shards


def shard_lengths(seq_len: int, world_size: int) -> list[int]:
    """Per-rank lengths of the default split (torch.tensor_split's): the first seq_len % world_size ranks get one
    more position. Every shard must be non-empty, so seq_len >= world_size."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len={seq_len!r} must be an int >= 1")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size={world_size!r} must be an int >= 1")
    if seq_len < world_size:
        raise ValueError(f"seq_len={seq_len} is shorter than world_size={world_size}: every rank needs at least "
                         f"one position")
    base, extra = divmod(seq_len, world_size)
    return [base + 1 if rank < extra else base for rank in range(world_size)]


def shard_sequence(x_BNHD: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank `rank`'s shard (B, L_rank, H, D) of a full (B, N, H, D) tensor under the default split (a view)."""
    lengths = shard_lengths(x_BNHD.shape[1], world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, {world_size})")
    start = sum(lengths[:rank])
    return x_BNHD[:, start : start + lengths[rank]]


@dataclass(frozen=True)
class ShardLayout:
    """Contiguous shards of a global sequence: rank i holds [starts[i], starts[i] + lengths[i])."""

    lengths: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.lengths):
            raise ValueError(f"shard_lengths={list(self.lengths)} must be a non-empty list of ints >= 1 "
                             f"(one per rank; every rank holds at least one position)")

    @property
    def world_size(self) -> int:
        return len(self.lengths)

    @property
    def seq_len(self) -> int:
        return sum(self.lengths)

    @functools.cached_property
    def starts(self) -> tuple[int, ...]:
        return tuple(itertools.accumulate(self.lengths, initial=0))[:-1]

    def bounds(self, rank: int) -> tuple[int, int]:
        start = self.starts[rank]
        return start, start + self.lengths[rank]

    def ranks_touching(self, lo: int, hi: int) -> range:
        """Ranks whose shard intersects [lo, hi)."""
        starts = self.starts
        return range(bisect.bisect_right(starts, lo) - 1, bisect.bisect_left(starts, hi))


# ----------------------------------------------------------------------------------------------------------------
# The plan: which rows each rank computes, sends and receives (a pure function of the configuration)


@dataclass(frozen=True)
class _Run:
    """Taking-part rows of one branch offset in a rank's shard: segments [start, start + num_segments * length)
    of the local tensor, rows row_offset::rate of each, heads head_offset::rate.

    dilated_merge.Piece ties the row offset to the head offset; a segment cut by a shard boundary needs them apart
    (its local part starts mid-segment), hence this variant.
    """

    start: int
    num_segments: int
    length: int
    row_offset: int
    head_offset: int
    rate: int

    @property
    def rows(self) -> int:
        """Taking-part rows per segment."""
        return -(-(self.length - self.row_offset) // self.rate)

    def view(self, x_BLHD: torch.Tensor) -> torch.Tensor:
        """Strided view (B, num_segments, rows, Hs, D) of a contiguous (B, L, H, D) tensor."""
        b, _, h, d = x_BLHD.shape
        span = x_BLHD[:, self.start : self.start + self.num_segments * self.length]
        return span.view(b, self.num_segments, self.length, h, d)[:, :, self.row_offset :: self.rate,
                                                                   self.head_offset :: self.rate]

    def lse_view(self, lse_BHL: torch.Tensor) -> torch.Tensor:
        """Strided view (B, Hs, num_segments, rows) of a contiguous (B, H, L) tensor."""
        span = lse_BHL[:, self.head_offset :: self.rate, self.start : self.start + self.num_segments * self.length]
        return span.unflatten(2, (self.num_segments, self.length))[..., self.row_offset :: self.rate]

    def gather(self, x_BLHD: torch.Tensor) -> torch.Tensor:
        """(B * num_segments, rows, Hs, D) contiguous copy: one kernel batch entry per segment."""
        piece = self.view(x_BLHD)
        return piece.reshape(-1, *piece.shape[2:])

    def gather_lse(self, lse_BHL: torch.Tensor) -> torch.Tensor:
        piece = self.lse_view(lse_BHL)  # (B, Hs, S, m)
        return piece.transpose(1, 2).reshape(-1, piece.shape[1], piece.shape[3])  # (B * S, Hs, m)

    def unbatch(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """(B * S, m, Hs, D) -> (B, S, m, Hs, D), matching `view`."""
        return x.reshape(batch, self.num_segments, *x.shape[1:])

    def unbatch_lse(self, lse: torch.Tensor, batch: int) -> torch.Tensor:
        """(B * S, Hs, m) -> (B, Hs, S, m), matching `lse_view`."""
        return lse.reshape(batch, self.num_segments, *lse.shape[1:]).transpose(1, 2)


@dataclass(frozen=True)
class _Block:
    """Rows of k and v in a flat exchange buffer: (2, B, rows, heads, D) at offset * 2*B*D elements."""

    offset: int  # in row-heads (rows * heads); a buffer's element offset is offset * 2 * B * D
    rows: int
    heads: int

    def view(self, flat: torch.Tensor, batch: int, head_dim: int) -> torch.Tensor:
        unit = 2 * batch * head_dim
        size = self.rows * self.heads * unit
        return flat[self.offset * unit : self.offset * unit + size].view(2, batch, self.rows, self.heads, head_dim)


@dataclass(frozen=True)
class _Remote:
    """Local queries `run` (one segment) attended to other ranks' rows of the same segment, received in `blocks`
    (in sender rank order)."""

    run: _Run
    blocks: tuple[_Block, ...]


@dataclass(frozen=True)
class _Plan:
    local_runs: tuple[_Run, ...]
    sends: tuple[tuple[_Run, _Block], ...]  # my rows, and where they go in the send buffer (destination order)
    remotes: tuple[_Remote, ...]
    send_counts: tuple[int, ...]  # row-heads per destination rank
    recv_counts: tuple[int, ...]  # row-heads per source rank
    any_exchange: bool  # does any rank of the group send anything (then every rank joins the all_to_all)


def _rows_in(lo: int, hi: int, segment_start: int, rate: int, offset: int) -> tuple[int, int]:
    """(row_offset, count) of taking-part positions p in [lo, hi) of a segment: (p - segment_start) % rate == offset."""
    row_offset = (offset - (lo - segment_start)) % rate
    count = max(0, -(-(hi - lo - row_offset) // rate))
    return row_offset, count


def build_plan(params: DilatedParams, layout: ShardLayout, num_heads: int, causal: bool, rank: int) -> _Plan:
    """Every rank builds the same global picture and keeps its own part, so sends and receives pair up."""
    seq_len, world = layout.seq_len, layout.world_size
    my_lo, my_hi = layout.bounds(rank)
    local_runs: list[_Run] = []
    send_items: list[list[tuple[_Run, int, int]]] = [[] for _ in range(world)]  # per destination: run, rows, heads
    recv_items: list[list[tuple[int, int, int]]] = [[] for _ in range(world)]  # per source: remote index, rows, heads
    remote_runs: list[_Run] = []
    any_exchange = False

    for segment, rate in params.branches(seq_len):
        offsets = range(min(rate, num_heads))
        # Local parts: whole segments inside my shard batched in one run, the (at most two) others one run each.
        first_whole, end_whole = -(-my_lo // segment), my_hi // segment
        for offset in offsets:
            if end_whole > first_whole and offset < segment:  # rate > w leaves offsets >= w empty
                local_runs.append(_Run(first_whole * segment - my_lo, end_whole - first_whole, segment, offset,
                                       offset, rate))
        for s in sorted({my_lo // segment, (my_hi - 1) // segment}):
            if first_whole <= s < end_whole:
                continue
            lo, hi = max(my_lo, s * segment), min(my_hi, (s + 1) * segment)
            for offset in offsets:
                row_offset, count = _rows_in(lo, hi, s * segment, rate, offset)
                if count:
                    local_runs.append(_Run(lo - my_lo, 1, hi - lo, row_offset, offset, rate))

        # Exchanges: segments that contain a shard boundary, in increasing segment order (the same on every rank).
        crossing = sorted({start // segment for start in layout.starts[1:] if start % segment})
        for s in crossing:
            seg_lo, seg_hi = s * segment, min((s + 1) * segment, seq_len)
            touching = layout.ranks_touching(seg_lo, seg_hi)
            for offset in offsets:
                heads = len(range(offset, num_heads, rate))
                rows = {}
                for other in touching:
                    lo, hi = max(layout.starts[other], seg_lo), min(layout.starts[other] + layout.lengths[other],
                                                                   seg_hi)
                    rows[other] = _rows_in(lo, hi, seg_lo, rate, offset) + (lo,)
                holders = [r for r in touching if rows[r][1] > 0]
                if len(holders) < 2:
                    continue
                any_exchange = True
                if rank not in holders:
                    continue
                row_offset, count, lo = rows[rank]
                mine = _Run(lo - my_lo, 1, min(my_hi, seg_hi) - lo, row_offset, offset, rate)
                remote_index = len(remote_runs)
                senders = [r for r in holders if r != rank and (not causal or r < rank)]
                if senders:
                    remote_runs.append(mine)
                    for sender in senders:
                        recv_items[sender].append((remote_index, rows[sender][1], heads))
                for receiver in holders:
                    if receiver != rank and (not causal or receiver > rank):
                        send_items[receiver].append((mine, count, heads))

    sends, send_counts = [], []
    offset = 0
    for items in send_items:
        start = offset
        for run, rows, heads in items:
            sends.append((run, _Block(offset, rows, heads)))
            offset += rows * heads
        send_counts.append(offset - start)
    blocks: list[list[_Block]] = [[] for _ in remote_runs]
    recv_counts = []
    offset = 0
    for items in recv_items:  # source rank order, so each remote's blocks are in rank order too
        start = offset
        for remote_index, rows, heads in items:
            blocks[remote_index].append(_Block(offset, rows, heads))
            offset += rows * heads
        recv_counts.append(offset - start)
    remotes = tuple(_Remote(run, tuple(b)) for run, b in zip(remote_runs, blocks))
    return _Plan(tuple(local_runs), tuple(sends), remotes, tuple(send_counts), tuple(recv_counts), any_exchange)


# ----------------------------------------------------------------------------------------------------------------
# Predicted communication volume, from the configuration alone


@dataclass(frozen=True)
class CommVolume:
    """Bytes one rank sends: forward (its sparsified k, v rows) and backward (gradients of rows it received)."""

    forward: int
    backward: int


def _participants_between(lo: int, hi: int, rate: int, offset: int) -> int:
    """Segment-relative positions t in [lo, hi) with t mod rate == offset."""
    def below(n: int) -> int:  # t in [0, n)
        return 0 if n <= offset else (n - offset + rate - 1) // rate
    return below(hi) - below(lo)


def predicted_bytes_sent(
    params: DilatedParams | DenseParams,
    *,
    rank: int,
    shard_lengths: Sequence[int],
    batch: int,
    num_heads: int,
    head_dim: int,
    causal: bool,
    dtype: torch.dtype = torch.float32,
) -> CommVolume:
    """Bytes rank `rank` sends per call, forward and backward, for the algorithm in this module's docstring.

    Dense (one branch w = N, r = 1): forward 2*B*L_rank*H*D*e to each of the other P - 1 ranks (causal: only to
    the P - 1 - rank later ones); backward returns the gradients of the rows it received: 2*B*H*D*e times
    (N - L_rank) (causal: the positions before its shard).

    Dilated: for each branch (w, r) and each segment s that contains a shard boundary, let n_i(s, h) be the number
    of positions of rank i's shard in segment s taking part for head h, (p mod w) mod r == h mod r. Rank i sends
    2*B*D*e * n_i(s, h) to every other rank j with n_j(s, h) > 0 (causal: j > i), summed over s and h; in backward
    it sends 2*B*D*e * n_j(s, h) back to every such sender j. Segments inside one shard send nothing, so the volume
    shrinks as 1/r: roughly 2*B*H*D*e*(L/r)*(P-1) per branch whose segments span all ranks (vs. L for dense).
    """
    layout = ShardLayout(tuple(shard_lengths))
    if not 0 <= rank < layout.world_size:
        raise ValueError(f"rank={rank} must be in [0, {layout.world_size})")
    element = torch.empty((), dtype=dtype).element_size()
    unit = 2 * batch * head_dim * element  # one row of k and one of v, for one head
    seq_len, starts = layout.seq_len, layout.starts
    if isinstance(params, DenseParams):
        length, start = layout.lengths[rank], starts[rank]
        receivers = layout.world_size - 1 - rank if causal else layout.world_size - 1
        received = start if causal else seq_len - length
        return CommVolume(unit * num_heads * length * receivers, unit * num_heads * received)

    forward = backward = 0
    for segment, rate in params.branches(seq_len):
        crossing = sorted({start // segment for start in starts[1:] if start % segment})
        for s in crossing:
            seg_lo, seg_hi = s * segment, min((s + 1) * segment, seq_len)
            touching = layout.ranks_touching(seg_lo, seg_hi)
            if rank not in touching:
                continue
            for head in range(num_heads):
                counts = {}
                for i in touching:
                    lo = max(starts[i], seg_lo) - seg_lo
                    hi = min(starts[i] + layout.lengths[i], seg_hi) - seg_lo
                    counts[i] = _participants_between(lo, hi, rate, head % rate)
                if counts[rank] == 0:
                    continue
                for other, count in counts.items():
                    if other == rank or count == 0:
                        continue
                    if not causal or other > rank:
                        forward += unit * counts[rank]
                    if not causal or other < rank:
                        backward += unit * count
    return CommVolume(forward, backward)


# ----------------------------------------------------------------------------------------------------------------
# Communication: instrumented, bounded, and explicit about who failed


@dataclass
class CommStats:
    """What this rank's attention calls sent and received, in bytes (reset with `reset()`)."""

    forward_bytes_sent: int = 0
    forward_bytes_received: int = 0
    backward_bytes_sent: int = 0
    backward_bytes_received: int = 0
    metadata_bytes_sent: int = 0  # shard-length exchange, only when shard_lengths is not given
    collectives: int = 0

    def reset(self) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, 0)


class PeerFailureError(RuntimeError):
    """A collective failed or timed out; the message names the ranks that did not check in afterwards."""

    def __init__(self, message: str, missing_ranks: list[int]) -> None:
        super().__init__(message)
        self.missing_ranks = missing_ranks


_instances = itertools.count()
T = TypeVar("T")


@dataclass
class _Communicator:
    group: dist.ProcessGroup | None
    stats: CommStats
    store: dist.Store | None
    health_timeout_s: float
    tag: int = field(default_factory=lambda: next(_instances))
    calls: int = 0

    @property
    def rank(self) -> int:
        return dist.get_rank(self.group)

    @property
    def world_size(self) -> int:
        return dist.get_world_size(self.group)

    def _global_rank(self, group_rank: int) -> int:
        return group_rank if self.group is None else dist.get_global_rank(self.group, group_rank)

    def exchange(self, send: torch.Tensor, send_counts: list[int], recv_counts: list[int], what: str) -> torch.Tensor:
        """all_to_all_single of flat buffers; counts are in elements."""
        recv = send.new_empty(sum(recv_counts))
        self._run(what, lambda: dist.all_to_all_single(recv, send, recv_counts, send_counts, group=self.group))
        element = send.element_size()
        me = self.rank
        sent = element * sum(n for rank, n in enumerate(send_counts) if rank != me)
        received = element * sum(n for rank, n in enumerate(recv_counts) if rank != me)
        if what == "forward":
            self.stats.forward_bytes_sent += sent
            self.stats.forward_bytes_received += received
        else:
            self.stats.backward_bytes_sent += sent
            self.stats.backward_bytes_received += received
        return recv

    def all_lengths(self, local_length: int, device: torch.device) -> list[int]:
        mine = torch.tensor([local_length], dtype=torch.int64, device=device)
        gathered = [torch.empty_like(mine) for _ in range(self.world_size)]
        self._run("shard-length all_gather", lambda: dist.all_gather(gathered, mine, group=self.group))
        self.stats.metadata_bytes_sent += mine.element_size() * (self.world_size - 1)
        return [int(t.item()) for t in gathered]

    def _run(self, what: str, collective: Callable[[], T]) -> T:
        self.calls += 1
        self.stats.collectives += 1
        try:
            return collective()
        except RuntimeError as error:  # gloo and NCCL raise DistBackendError (a RuntimeError) on a dead/hung peer
            raise self._diagnose(what, error) from error

    def _diagnose(self, what: str, error: RuntimeError) -> PeerFailureError:
        """Check in at the store and wait a bounded time for the others: who does not show up is dead or hung."""
        me = self._global_rank(self.rank)
        group_ranks = [self._global_rank(r) for r in range(self.world_size)]
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        store = self.store
        if store is None:
            try:  # the store init_process_group rendezvoused through (no public accessor exists)
                store = dist.distributed_c10d._get_default_store()
            except Exception:  # noqa: BLE001 - any failure here just means we cannot name the rank
                store = None
        if store is None:
            return PeerFailureError(f"rank {me}: {what} collective over ranks {group_ranks} failed ({first_line}); "
                                    f"no rendezvous store to find which rank is missing", [])
        prefix = f"attention_shootout/health/{self.tag}/{self.calls}"
        missing: list[int] | None = None  # as of the last poll that reached the store
        try:
            store.set(f"{prefix}/{me}", "alive")
            deadline = time.monotonic() + self.health_timeout_s
            while True:
                missing = [r for r in group_ranks if not store.check([f"{prefix}/{r}"])]
                if not missing or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        except RuntimeError as store_error:
            if missing is None:
                return PeerFailureError(
                    f"rank {me}: {what} collective over ranks {group_ranks} failed ({first_line}), and the "
                    f"rendezvous store is unreachable too ({str(store_error).strip().splitlines()[0]}); the store "
                    f"lives in rank 0's process unless torchrun hosts it, so rank 0 has probably died",
                    [group_ranks[0]])
            # The store's host left while we waited (it gave up first): the last poll still tells who was missing.
        if missing:
            names = ", ".join(str(r) for r in missing)
            return PeerFailureError(
                f"rank {me}: {what} collective over ranks {group_ranks} failed ({first_line}); rank(s) {names} "
                f"did not check in within {self.health_timeout_s:g} s afterwards: dead, or hung outside the "
                f"collective", missing)
        return PeerFailureError(
            f"rank {me}: {what} collective over ranks {group_ranks} failed ({first_line}); every rank is alive, "
            f"so the ranks disagree about the call (different shapes, configurations or call order?)", [])


_guards: dict[object, _Communicator] = {}


def guarded_collective(what: str, collective: Callable[[], T], group: dist.ProcessGroup | None = None,
                       health_timeout_s: float = 10.0) -> T:
    """Run `collective()` (e.g. lambda: dist.barrier()); if it fails, raise PeerFailureError naming the ranks of
    `group` that are dead or hung. Every rank must make the same sequence of guarded calls (as for any
    collective): the check-in keys are numbered by call."""
    if group not in _guards:
        _guards[group] = _Communicator(group, CommStats(), None, health_timeout_s)
    return _guards[group]._run(what, collective)


# ----------------------------------------------------------------------------------------------------------------
# Forward and backward


def _unit(batch: int, head_dim: int) -> int:
    return 2 * batch * head_dim


def _pack_sends(plan: _Plan, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    batch, _, _, head_dim = k.shape
    total = sum(plan.send_counts) * _unit(batch, head_dim)
    send = k.new_empty(total)
    for run, block in plan.sends:
        kv = block.view(send, batch, head_dim)  # (2, B, rows, Hs, D)
        kv[0].copy_(run.view(k)[:, 0])
        kv[1].copy_(run.view(v)[:, 0])
    return send


def _remote_kv(remote: _Remote, recv: torch.Tensor, batch: int, head_dim: int) -> torch.Tensor:
    """(2, B, rows from every sender, Hs, D)."""
    blocks = [block.view(recv, batch, head_dim) for block in remote.blocks]
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=2)


class _SequenceParallelFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, plan: _Plan, comm: _Communicator, kernel: LseKernel, causal: bool, scale: float):
        q, k, v = (t.contiguous() for t in (q, k, v))
        batch, _, num_heads, head_dim = q.shape
        unit = _unit(batch, head_dim)
        recv = q.new_empty(0)
        if plan.any_exchange:  # a group-wide fact: either every rank joins the all_to_all or none does
            send = _pack_sends(plan, k, v)
            recv = comm.exchange(send, [n * unit for n in plan.send_counts], [n * unit for n in plan.recv_counts],
                                 "forward")

        acc_dtype = torch.promote_types(q.dtype, torch.float32)
        out_acc = torch.zeros(q.shape, dtype=acc_dtype, device=q.device)
        lse_acc = torch.full((batch, num_heads, q.shape[1]), float("-inf"), dtype=acc_dtype, device=q.device)
        for run in plan.local_runs:
            out_part, lse_part = kernel.forward(run.gather(q), run.gather(k), run.gather(v), causal, scale)
            merge_lse_into(run.view(out_acc), run.lse_view(lse_acc), run.unbatch(out_part, batch),
                        run.unbatch_lse(lse_part.to(acc_dtype), batch))
        for remote in plan.remotes:
            run = remote.run
            kv = _remote_kv(remote, recv, batch, head_dim)
            out_part, lse_part = kernel.forward(run.gather(q), kv[0], kv[1], False, scale)
            merge_lse_into(run.view(out_acc), run.lse_view(lse_acc), run.unbatch(out_part, batch),
                        run.unbatch_lse(lse_part.to(acc_dtype), batch))
        out = out_acc.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse_acc, recv)
        ctx.plan, ctx.comm, ctx.kernel, ctx.causal, ctx.scale = plan, comm, kernel, causal, scale
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k, v, out, lse, recv = ctx.saved_tensors
        plan, comm, kernel, causal, scale = ctx.plan, ctx.comm, ctx.kernel, ctx.causal, ctx.scale
        grad_out = grad_out.contiguous()
        batch, _, _, head_dim = q.shape
        unit = _unit(batch, head_dim)
        acc_dtype = torch.promote_types(q.dtype, torch.float32)
        dq, dk, dv = (torch.zeros(q.shape, dtype=acc_dtype, device=q.device) for _ in range(3))
        lse_kernel = lse if q.dtype == torch.float64 else lse.float()

        for run in plan.local_runs:
            parts = kernel.backward(run.gather(grad_out), run.gather(q), run.gather(k), run.gather(v),
                                    run.gather(out), run.gather_lse(lse_kernel), causal, scale)
            for total, part in zip((dq, dk, dv), parts):
                run.view(total).add_(run.unbatch(part, batch))

        grad_send = q.new_empty(recv.numel())  # laid out like the forward's receive buffer, going back
        for remote in plan.remotes:
            run = remote.run
            kv = _remote_kv(remote, recv, batch, head_dim)
            dq_part, dk_remote, dv_remote = kernel.backward(
                run.gather(grad_out), run.gather(q), kv[0], kv[1], run.gather(out), run.gather_lse(lse_kernel),
                False, scale,
            )
            run.view(dq).add_(run.unbatch(dq_part, batch))
            row = 0
            for block in remote.blocks:
                grads = block.view(grad_send, batch, head_dim)
                grads[0].copy_(dk_remote[:, row : row + block.rows])
                grads[1].copy_(dv_remote[:, row : row + block.rows])
                row += block.rows

        if plan.any_exchange:
            grad_recv = comm.exchange(grad_send, [n * unit for n in plan.recv_counts],
                                      [n * unit for n in plan.send_counts], "backward")
            for run, block in plan.sends:
                grads = block.view(grad_recv, batch, head_dim)
                run.view(dk)[:, 0].add_(grads[0])
                run.view(dv)[:, 0].add_(grads[1])
        return dq.to(q.dtype), dk.to(q.dtype), dv.to(q.dtype), None, None, None, None, None


# ----------------------------------------------------------------------------------------------------------------
# Public modules


def default_kernel(device: torch.device, dtype: torch.dtype) -> LseKernel:
    """torch's fused flash kernel on CPU; xformers on CUDA when it loads and takes the dtype; else plain math."""
    if device.type == "cpu":
        return CpuFlashKernel()
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16, torch.float32):
        from .ops._optional import xformers_unavailable_reason

        if xformers_unavailable_reason() is None:
            return XformersKernel()
    return MathKernel()


class _SequenceParallelAttention(torch.nn.Module):
    def __init__(self, group: dist.ProcessGroup | None, kernel: LseKernel | None, store: dist.Store | None,
                 health_timeout_s: float) -> None:
        super().__init__()
        if not (isinstance(health_timeout_s, (int, float)) and health_timeout_s > 0):
            raise ValueError(f"health_timeout_s={health_timeout_s!r} must be a positive number of seconds")
        self.group = group
        self.kernel = kernel
        self.comm = CommStats()
        self._communicator = _Communicator(group, self.comm, store, float(health_timeout_s))
        self._plans: dict[tuple, _Plan] = {}
        self.kernel_name: str | None = None

    def _params(self, seq_len: int, num_heads: int) -> DilatedParams:
        raise NotImplementedError

    def reset_comm_stats(self) -> None:
        self.comm.reset()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                shard_lengths: Sequence[int] | None = None) -> torch.Tensor:
        """q, k, v: this rank's shard (batch, L_rank, heads, head_dim); returns this rank's shard of the output."""
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialized: call torch.distributed.init_process_group(...) "
                               "first (under torchrun: init_process_group(backend, timeout=...) reads the env)")
        check_inputs(q, k, v)
        if not isinstance(causal, bool):
            raise TypeError(f"causal={causal!r} must be a bool")
        comm = self._communicator
        rank, world = comm.rank, comm.world_size
        local_len = q.shape[1]
        if shard_lengths is None:
            lengths = comm.all_lengths(local_len, q.device)
        else:
            lengths = list(shard_lengths)
            if len(lengths) != world:
                raise ValueError(f"shard_lengths={lengths} has {len(lengths)} entries; the group has {world} ranks")
        layout = ShardLayout(tuple(lengths))
        if layout.lengths[rank] != local_len:
            raise ValueError(f"rank {rank} holds {local_len} positions but shard_lengths={lengths} says "
                             f"{layout.lengths[rank]}")
        num_heads = q.shape[2]
        params = self._params(layout.seq_len, num_heads)
        key = (layout, num_heads, causal, rank)
        if key not in self._plans:
            self._plans[key] = build_plan(params, layout, num_heads, causal, rank)
        kernel = self.kernel if self.kernel is not None else default_kernel(q.device, q.dtype)
        self.kernel_name = kernel.name
        scale = default_scale(q.shape[3], params.scale)
        return _SequenceParallelFunction.apply(q, k, v, self._plans[key], comm, kernel, causal, scale)


class DistributedDilatedAttention(_SequenceParallelAttention):
    """LongNet dilated attention with the sequence split across the ranks of `group` (default: the world).

        attn = DistributedDilatedAttention([2048, 4096, 8192], [1, 2, 4])
        out_local = attn(q_local, k_local, v_local, causal=True)   # (B, L_rank, H, D) each
        attn.comm.forward_bytes_sent                                # bytes this rank sent

    Each rank's output (and dq, dk, dv) equals the matching slice of the single-process attention
    `attention_impls.build("dilated", ...)` on the concatenated sequence.
    """

    def __init__(
        self,
        segment_lengths: Sequence[int],
        dilation_rates: Sequence[int],
        scale: float | None = None,
        group: dist.ProcessGroup | None = None,
        kernel: LseKernel | None = None,
        store: dist.Store | None = None,
        health_timeout_s: float = 10.0,
    ) -> None:
        super().__init__(group, kernel, store, health_timeout_s)
        self.params = make_params("dilated", segment_lengths=segment_lengths, dilation_rates=dilation_rates,
                                  scale=scale)
        self._coverage_checked: set[tuple[int, int]] = set()

    def extra_repr(self) -> str:
        return f"params={self.params}"

    def _params(self, seq_len: int, num_heads: int) -> DilatedParams:
        if (seq_len, num_heads) not in self._coverage_checked:
            # Membership repeats with period lcm(w) in position and lcm(r) in head (params.check_dilated_coverage).
            positions = min(seq_len, math.lcm(*self.params.segment_lengths))
            heads = min(num_heads, math.lcm(*self.params.dilation_rates))
            check_dilated_coverage(self.params, positions, heads)
            self._coverage_checked.add((seq_len, num_heads))
        return self.params


class DistributedDenseAttention(_SequenceParallelAttention):
    """Dense attention with the sequence split across ranks: whole K/V all-gathered (causal: to later ranks only).

    The baseline LongNet's scaling is compared against; internally one dilated branch (w = N, r = 1).
    """

    def __init__(
        self,
        scale: float | None = None,
        group: dist.ProcessGroup | None = None,
        kernel: LseKernel | None = None,
        store: dist.Store | None = None,
        health_timeout_s: float = 10.0,
    ) -> None:
        super().__init__(group, kernel, store, health_timeout_s)
        self.params = make_params("dense", scale=scale)

    def _params(self, seq_len: int, num_heads: int) -> DilatedParams:
        return DilatedParams((seq_len,), (1,), scale=self.params.scale)
