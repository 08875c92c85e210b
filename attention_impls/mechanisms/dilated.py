"""LongNet dilated attention (spec: Dilated): branches (segment length w, dilation rate r); in a branch, a
position takes part when its index within its segment is congruent to the head's offset mod r, and sees the
taking-part keys of its own segment. One softmax over the multiset union of the branches' keys."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .base import IndexFn, Mechanism, check_int, check_scale, compact, suggest
from .dense import _triangle

HEAD_OFFSETS = ("cyclic", "blocked")

# Coverage of a dilated configuration repeats with period lcm(segment_lengths) in position and lcm(rates) in head;
# past this many (position, head) pairs the check is deferred to the first call, where N and H are known.
_MAX_COVERAGE_CHECK = 1 << 24


@dataclass(frozen=True)
class DilatedParams:
    """LongNet branches: (segment_lengths[i], dilation_rates[i]) pairs; head h's offset in a branch of rate r is
    h mod r (`cyclic`, the paper's rule) or h // ceil(H / r) (`blocked`, microsoft/torchscale's code)."""

    segment_lengths: tuple[int, ...]
    dilation_rates: tuple[int, ...]
    scale: float | None = None
    head_offsets: str = "cyclic"

    mechanism = "dilated"

    def branches(self, seq_len: int) -> list[tuple[int, int]]:
        """(segment length clipped to seq_len, rate) per branch."""
        return [(min(w, seq_len), r) for w, r in zip(self.segment_lengths, self.dilation_rates)]

    def offset(self, head, rate: int, num_heads: int | None):
        """Head `head`'s offset in a branch of this rate (ints or integer tensors). `blocked` depends on the head
        count, so it needs num_heads; `cyclic` does not."""
        if self.head_offsets == "cyclic":
            return head % rate
        if num_heads is None:
            raise ValueError("head_offsets='blocked' needs the number of heads (h // ceil(H / r))")
        return head // _heads_per_offset(rate, num_heads)

    def offsets(self, rate: int, num_heads: int) -> range:
        """The offsets some head has in a branch of this rate (fewer than rate when H < rate)."""
        if self.head_offsets == "cyclic":
            return range(min(rate, num_heads))
        return range(-(-num_heads // _heads_per_offset(rate, num_heads)))

    def heads_with_offset(self, offset: int, rate: int, num_heads: int) -> slice:
        """The heads whose offset is `offset`, as a slice of the head axis: every r-th head (cyclic) or one
        contiguous block of ceil(H / r) heads, the last block shorter when r does not divide H (blocked)."""
        if self.head_offsets == "cyclic":
            return slice(offset, None, rate)
        block = _heads_per_offset(rate, num_heads)
        return slice(offset * block, min((offset + 1) * block, num_heads))


def _heads_per_offset(rate: int, num_heads: int) -> int:
    return -(-num_heads // rate)  # ceil(H / r) without floats


def _parse_positive_list(name: str, values: Any) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name}={values!r} must be a non-empty list of positive ints")
    if len(values) == 0:
        raise ValueError(f"{name}={list(values)} must be a non-empty list of positive ints")
    for i, value in enumerate(values):
        check_int(f"{name}[{i}]", value, 1)
    return tuple(int(v) for v in values)


def check_dilated_coverage(params: DilatedParams, num_positions: int, num_heads: int) -> None:
    """Reject a configuration where some (position, head) pair takes part in no branch (spec: Dilated).

    Membership, (p mod w) mod r == offset(h), does not depend on N (clipping a segment to N leaves p mod w
    unchanged for p < N), so checking positions [0, num_positions) and heads [0, num_heads) suffices when
    those are the periods lcm(w) and lcm(r), or the actual N and H. Blocked offsets (h // ceil(H / r)) have no
    period in h: num_heads must be the actual H.
    """
    positions = torch.arange(num_positions)[:, None]
    heads = torch.arange(num_heads)[None, :]
    covered = torch.zeros(num_positions, num_heads, dtype=torch.bool)
    for w, r in zip(params.segment_lengths, params.dilation_rates):
        covered |= (positions % w) % r == params.offset(heads, r, num_heads)
    if not bool(covered.all()):
        position, head = (int(x) for x in (~covered).nonzero()[0])
        rule = "h mod r_i" if params.head_offsets == "cyclic" else f"h // ceil({num_heads} / r_i)"
        raise ValueError(
            f"segment_lengths={list(params.segment_lengths)}, dilation_rates={list(params.dilation_rates)} leave "
            f"position {position} of head {head} in no branch (it takes part in branch i only when "
            f"(p mod w_i) mod r_i == {rule}); add a branch with dilation rate 1"
        )


def dilated_multiplicity(params: DilatedParams, seq_len: int, causal: bool, num_heads: int | None = None) -> IndexFn:
    """How many branches score the pair (p, j) for head h: 0 means masked; c > 0 adds log c to the score.

    num_heads: H, which blocked head offsets (h // ceil(H / r)) need; cyclic ones (h mod r) do not."""
    branches = params.branches(seq_len)
    if params.head_offsets != "cyclic" and num_heads is None:
        raise ValueError(f"head_offsets={params.head_offsets!r}: dilated_multiplicity needs num_heads")

    def multiplicity(query: torch.Tensor, key: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        count = torch.zeros_like(query - key + head, dtype=torch.int32)
        for segment, rate in branches:
            offset = params.offset(head, rate, num_heads)
            same_segment = (query // segment) == (key // segment)
            takes_part = ((query % segment) % rate == offset) & ((key % segment) % rate == offset)
            count = count + (same_segment & takes_part).to(torch.int32)
        if causal:
            count = torch.where(key <= query, count, torch.zeros_like(count))
        return count

    return multiplicity


def _participants(length: int, rate: int, offset: int) -> int:
    """Positions t in [0, length) with t mod rate == offset."""
    return 0 if offset >= length else (length - offset + rate - 1) // rate


def dilated_pairs(seq_len: int, num_heads: int, params: DilatedParams, causal: bool) -> int:
    """Pairs summed over heads and branches; a pair seen by c branches counts c times."""
    total = 0
    for segment, rate in params.branches(seq_len):
        full_segments, tail = divmod(seq_len, segment)
        for head in range(num_heads):
            offset = params.offset(head, rate, num_heads)
            for length, copies in ((segment, full_segments), (tail, 1)):
                n = _participants(length, rate, offset)
                total += copies * (_triangle(n) if causal else n * n)
    return total


def reference_dilated_multiplicity(n: int, num_heads: int, params: DilatedParams, causal: bool,
                                   device=None) -> torch.Tensor:
    """(H, N, N) count of branches in which query p sees key j, straight from the spec's definition."""
    positions = torch.arange(n, device=device)
    return reference_dilated_visible(params, positions, positions, num_heads, causal, n)


def reference_dilated_visible(params: DilatedParams, query_positions: torch.Tensor, key_positions: torch.Tensor,
                              num_heads: int, causal: bool, key_length: int) -> torch.Tensor:
    """(H, L, M) count of branches in which the query at each position sees the key at each position."""
    query, key = query_positions[:, None], key_positions[None, :]
    count = torch.zeros(num_heads, len(query_positions), len(key_positions), dtype=torch.int64,
                        device=query_positions.device)
    for segment, rate in zip(params.segment_lengths, params.dilation_rates):
        segment = min(segment, key_length)
        for head in range(num_heads):
            # spec, "Head offsets": cyclic o = h mod r; blocked o = h // ceil(H / r)
            offset = head % rate if params.head_offsets == "cyclic" else head // math.ceil(num_heads / rate)
            q_part = (query % segment) % rate == offset
            k_part = (key % segment) % rate == offset
            same_segment = query // segment == key // segment
            count[head] += (q_part & k_part & same_segment).long()
    if causal:
        count = count * (key <= query)
    return count


class Dilated(Mechanism):
    name = "dilated"
    allowed_params = ("segment_lengths", "dilation_rates", "scale", "head_offsets")
    per_head = True
    # CPU: gather 348 ms, flex 6020 ms (causal forward, N = 8192; results/perf/NOTES.md). CUDA: expected order.
    priority = {"cpu": ("gather", "flex", "masked_sdpa"), "cuda": ("xformers", "gather", "flex", "masked_sdpa")}
    # In B x H x N^2: masked faster up to 5.9e5 (B=32, H=2: 7.2 vs 7.7 ms at N = 96) and 5.2e5 (B=1, H=8, N = 256),
    # gather from 1.05e6 (B=32, H=2, N = 128) and 2.1e6 (B=1, H=8, N = 512); results/perf/NOTES.md
    small_n_priority = {"cpu": (1 << 20, ("masked_sdpa",))}
    small_n_by = "scores"
    example_params = {"segment_lengths": [64, 128, 256], "dilation_rates": [1, 2, 4]}
    config_params = {"segment_lengths": [512, 1024, 2048], "dilation_rates": [1, 2, 4]}

    def make_params(self, **params: Any) -> DilatedParams:
        self.check_unknown(params)
        scale = check_scale(params.get("scale"))
        for required in ("segment_lengths", "dilation_rates"):
            if required not in params:
                raise TypeError(f"dilated attention needs {required}=[...] (e.g. segment_lengths=[2048, 4096], "
                                f"dilation_rates=[1, 2])")
        segment_lengths = _parse_positive_list("segment_lengths", params["segment_lengths"])
        dilation_rates = _parse_positive_list("dilation_rates", params["dilation_rates"])
        if len(segment_lengths) != len(dilation_rates):
            raise ValueError(
                f"segment_lengths={list(segment_lengths)} and dilation_rates={list(dilation_rates)} must have "
                f"the same length (one rate per segment length), got {len(segment_lengths)} and "
                f"{len(dilation_rates)}")
        head_offsets = params.get("head_offsets", "cyclic")
        if not isinstance(head_offsets, str) or head_offsets not in HEAD_OFFSETS:
            hint = suggest(head_offsets, HEAD_OFFSETS) if isinstance(head_offsets, str) else ""
            raise ValueError(f"head_offsets={head_offsets!r} is not known{hint}; choose one of {list(HEAD_OFFSETS)} "
                             "(cyclic: h mod r, the paper's; blocked: h // ceil(H / r), microsoft/torchscale's)")
        dilated = DilatedParams(segment_lengths, dilation_rates, scale=scale, head_offsets=head_offsets)
        period_positions = math.lcm(*segment_lengths)
        period_heads = math.lcm(*dilation_rates)
        # Blocked offsets depend on H, known only at the first call; cyclic ones repeat with period lcm(r).
        if head_offsets == "cyclic" and period_positions * period_heads <= _MAX_COVERAGE_CHECK:
            check_dilated_coverage(dilated, period_positions, period_heads)
        return dilated

    def check_shape(self, params: DilatedParams, seq_len: int, num_heads: int) -> None:
        check_dilated_coverage(params, seq_len, num_heads)

    def multiplicity(self, params: DilatedParams, seq_len, num_heads, causal) -> IndexFn:
        return dilated_multiplicity(params, seq_len, causal, num_heads)

    def pairs(self, params: DilatedParams, seq_len, num_heads, causal) -> int:
        return dilated_pairs(seq_len, num_heads, params, causal)

    def reference_visible(self, params, query_positions, key_positions, num_heads, causal, key_length):
        return reference_dilated_visible(params, query_positions, key_positions, num_heads, causal, key_length)

    def key_range(self, params, first_query, last_query, key_length, causal):
        # a query sees keys of its own segment only, in every branch (segments clip to the key length)
        segments = [min(segment, key_length) for segment in params.segment_lengths]
        low = min(first_query // segment * segment for segment in segments)
        high = max((last_query // segment + 1) * segment for segment in segments)
        return low, min(high, last_query + 1) if causal else high

    def visible_keys(self, params, query_position, key_length, num_heads, causal):
        heads = []
        for head in range(num_heads):
            keys = [torch.arange(seen.start, seen.stop, seen.step)
                    for taking, seen in self.visible_branches(params, query_position, key_length, num_heads, causal)
                    if head in range(num_heads)[taking]]
            heads.append(torch.cat(keys) if keys else torch.zeros(0, dtype=torch.long))
        return heads

    def visible_branches(self, params: DilatedParams, query_position: int, key_length: int, num_heads: int,
                         causal: bool) -> list[tuple[slice, range]]:
        """Per branch in which the query takes part: (the heads that take part, the key positions they see).
        In each branch the query takes part for the heads whose offset is its own residue; those heads see its
        segment's keys of that residue (up to the query when causal), every r-th position: one strided slice of
        a cache, which is how a decoding step reads them."""
        position, seen = query_position, []
        for segment, rate in params.branches(key_length):
            start = position // segment * segment
            residue = (position - start) % rate
            if residue not in params.offsets(rate, num_heads):
                continue  # no head has this offset (H < r)
            end = min(start + segment, key_length, position + 1 if causal else key_length)
            if start + residue < end:
                seen.append((params.heads_with_offset(residue, rate, num_heads), range(start + residue, end, rate)))
        return seen

    def picture_size(self, params: DilatedParams, num_heads):
        # cyclic: heads h and h + lcm(r) see the same keys; blocked: every head may differ
        distinct = math.lcm(*params.dilation_rates) if params.head_offsets == "cyclic" or num_heads is None \
            else num_heads
        return distinct, 2 * max(params.segment_lengths)

    def label(self, values: dict[str, Any]) -> str:
        if values.get("head_offsets") == "cyclic":
            values.pop("head_offsets")  # the default: naming it would split one pattern into two labels
        parts = []
        if "segment_lengths" in values:
            parts.append(f"w={compact(values.pop('segment_lengths'))}")
        if "dilation_rates" in values:
            parts.append(f"r={compact(values.pop('dilation_rates'))}")
        return " ".join(parts)

    def size(self, values: dict[str, Any]) -> list[float]:
        return [float(v) for key in ("segment_lengths", "dilation_rates")
                for v in (values.get(key) if isinstance(values.get(key), (list, tuple)) else [])]

    def param_strategy(self):
        from hypothesis import strategies as st

        @st.composite
        def dilated_params(draw):
            count = draw(st.integers(1, 3))
            segments = draw(st.lists(st.integers(1, 40), min_size=count, max_size=count))
            rates = draw(st.lists(st.integers(1, 6), min_size=count - 1, max_size=count - 1))
            rates.insert(draw(st.integers(0, count - 1)), 1)  # a rate-1 branch covers every (position, head)
            return {"segment_lengths": segments, "dilation_rates": rates}

        return dilated_params()


MECHANISM = Dilated()
