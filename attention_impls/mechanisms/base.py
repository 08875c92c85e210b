"""What a mechanism is: one object that owns everything about one attention pattern.

A mechanism module (dense.py, sliding_window.py, dilated.py, ...) holds its parameters and their validation, its
visibility rule as an index function of (query, key, head) with multiplicity, its exact pair count (the FLOP
model), its reach, its float64 reference written from the spec, its label for reports and the parameter strategy
its tests draw from. Everything else in the project (the registry, FLOP counting, the probe's and retrieval's
reach, plots, palette, tests) asks the mechanism instead of branching on its name.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Callable, ClassVar, Sequence

import torch

IndexFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# ---- validation helpers shared by every mechanism's make_params -------------------------------------------------

def suggest(value: str, choices: Sequence[str]) -> str:
    """A ' (did you mean ...?)' hint for a misspelt name, or ''."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


# A larger scale turns any non-zero score into an overflow (float32's range ends at 3.4e38): every row NaN.
MAX_SCALE = 1e30


def check_scale(scale: Any) -> float | None:
    """A build-time or per-call scale: positive, finite, below MAX_SCALE; None means 1/sqrt(head_dim)."""
    if scale is None:
        return None
    if (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale)
            or not 0 < scale < MAX_SCALE):
        raise ValueError(f"scale={scale!r} must be a positive finite number below {MAX_SCALE:g}, or None for "
                         f"1/sqrt(head_dim)")
    return float(scale)


def check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}={value!r} must be an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}={value!r} must be >= {minimum}")
    return value


def parse_window(window: Any) -> tuple[int, int]:
    """`window=W` (W keys each side) or `[left, right]` (inclusive, flash-attn's window_size) as (left, right)."""
    if isinstance(window, bool):
        raise TypeError(f"window={window!r} must be an int >= 0 or a pair [left, right] of ints >= 0")
    if isinstance(window, int):
        check_int("window", window, 0)
        return window, window
    if isinstance(window, Sequence) and not isinstance(window, str) and len(window) == 2:
        left = check_int("window[0] (left)", window[0], 0)
        right = check_int("window[1] (right)", window[1], 0)
        return left, right
    raise TypeError(f"window={window!r} must be an int >= 0 or a pair [left, right] of ints >= 0")


def compact(value: Any) -> str:
    """A parameter value for a label: lists without spaces ('[256,512]')."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(compact(v) for v in value) + "]"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # JSON read back may hold 256.0
    return str(value)


# ---- float64 reference helpers (the spec's "materialise scores, mask, softmax") -------------------------------

def reference_scores(q: torch.Tensor, k: torch.Tensor, scale: float | None) -> torch.Tensor:
    """(B, H, L, M) float64 scores q.k * scale (1/sqrt(head_dim) by default)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return torch.einsum("bphd,bjhd->bhpj", q.double(), k.double()) * scale


def reference_attend(scores: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax over keys, then the weighted sum of values; every row must see at least one key."""
    weights = torch.softmax(scores, dim=-1)
    return torch.einsum("bhpj,bjhd->bphd", weights, v.double())


def causal_mask(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    p = torch.arange(n, device=device)
    return p[None, :] <= p[:, None]  # [query, key]: key <= query


# ---- the mechanism ------------------------------------------------------------------------------------------

class Mechanism:
    """One attention pattern. Subclasses set the ClassVars and implement the methods marked 'required'."""

    name: ClassVar[str]
    allowed_params: ClassVar[tuple[str, ...]]
    # Does the pattern differ between heads? (pictures then show each head; the probe checks each)
    per_head: ClassVar[bool] = False
    # backend=None tries these, per device type, fastest first (measured: results/perf/NOTES.md); a device
    # missing here tries every registered backend but the reference, in registration order.
    priority: ClassVar[dict[str, tuple[str, ...]]] = {}
    # Up to a size (inclusive), these backends go first on that device: for short sequences one masked call wins.
    # The size is `small_n_size`: N, or B x H x N^2 where the fast backends' cost per call does not grow with the
    # batch while a masked call's does (the crossover then moves with B and H: results/perf/NOTES.md).
    small_n_priority: ClassVar[dict[str, tuple[int, tuple[str, ...]]]] = {}
    small_n_by: ClassVar[str] = "seq_len"  # "seq_len" or "scores" (B x H x N^2)
    # A small configuration for demos and checks (python -m attention_impls.demo)
    example_params: ClassVar[dict[str, Any]] = {}
    # The parameters of the `attention=<mechanism>_<backend>` config nodes (harness/config.py registers one
    # per backend from the registry); a sweep overrides them with attention.params.<key>=...
    config_params: ClassVar[dict[str, Any]] = {}

    def small_n_size(self, seq_len: int, batch_heads: int | None, query_len: int | None = None) -> int | None:
        """What small_n_priority bounds for a call with seq_len keys, batch x heads and query_len queries (None:
        not known): N, or the scores a masked call computes, B x H x N^2. Only whole-sequence calls were measured:
        a query block or a decoding step (query_len != seq_len) reads the keys in its reach, so it is never small."""
        if query_len is not None and query_len != seq_len:
            return None
        if self.small_n_by == "seq_len":
            return seq_len
        return None if batch_heads is None else batch_heads * seq_len * seq_len

    def make_params(self, **params: Any):
        """required: validate user parameters (each error names the value and what is allowed)."""
        raise NotImplementedError

    def check_unknown(self, params: dict[str, Any]) -> None:
        for name in params:
            if name not in self.allowed_params:
                raise TypeError(f"{self.name} attention got an unexpected parameter {name!r}"
                                f"{suggest(name, self.allowed_params)}; allowed: {list(self.allowed_params)}")

    def check_shape(self, params, seq_len: int, num_heads: int) -> None:
        """Raise ValueError when these parameters cannot run at this (N, H) (a pattern that leaves a query
        nothing to see, say); called once per shape before the first kernel runs."""

    def multiplicity(self, params, seq_len: int, num_heads: int, causal: bool) -> IndexFn:
        """required: how many times query p scores key j in head h (0 = never; c > 1 adds log c), causality
        included, as broadcasting integer-tensor arithmetic (FlexAttention's mask_mod and score_mod use it)."""
        raise NotImplementedError

    def pairs(self, params, seq_len: int, num_heads: int, causal: bool) -> int:
        """required: (query, key) pairs scored for one batch element, summed over heads, in closed form (a pair
        scored c times counts c times): the spec's FLOP model, never an N x N mask."""
        raise NotImplementedError

    def reference_visible(self, params, query_positions: torch.Tensor, key_positions: torch.Tensor,
                          num_heads: int, causal: bool, key_length: int) -> torch.Tensor:
        """required: (H, L, M) int64 count of how many times the query at each position scores the key at each
        position, straight from the spec's words and written apart from `multiplicity`, so that each checks the
        other. Positions may be any ints (a query block, a left-padded sequence's negative positions); lengths
        the spec clips to N are clipped to `key_length`."""
        raise NotImplementedError

    def reference_multiplicity(self, params, seq_len: int, num_heads: int, causal: bool,
                               device: torch.device | str | None = None) -> torch.Tensor:
        """(H, N, N) int64 multiplicity of the plain call: positions 0..N-1 for queries and keys."""
        positions = torch.arange(seq_len, device=device)
        return self.reference_visible(params, positions, positions, num_heads, causal, seq_len)

    def reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params, causal: bool) -> torch.Tensor:
        """The float64 oracle of the plain call (positions 0..N-1, nothing padded)."""
        from ..call import make_call

        return self.reference_call(q, k, v, params, make_call(q, k, v, causal=causal))

    def reference_count(self, q: torch.Tensor, k: torch.Tensor, params, call) -> torch.Tensor:
        """(B or 1, H, L, M) int64: how many times each query scores each key in this call (positions, padding
        and a boolean attn_mask applied)."""
        query_len, num_heads, key_len = q.shape[1], q.shape[2], k.shape[1]
        if call.query_offset is None:
            if self.name != "dense":
                raise ValueError(f"{self.name} attention of {query_len} queries against {key_len} keys needs "
                                 f"query_offset= (the position of the first query): the spec defines attention "
                                 f"between unrelated sequences for dense only")
            count = torch.ones(1, num_heads, query_len, key_len, dtype=torch.int64, device=q.device)
        else:
            query_positions, key_positions = call.positions(q.device)
            count = torch.stack([self.reference_visible(params, query_row, key_row, num_heads, call.causal,
                                                        call.key_length)
                                 for query_row, key_row in zip(query_positions, key_positions)])
        seen = call.key_seen(q.device)
        if seen is not None:
            count = count * seen[:, None, None, :]
        if call.attn_mask is not None and call.attn_mask.dtype == torch.bool:
            count = count * call.attn_mask
        return count

    def non_finite_reach(self, params, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         call) -> torch.Tensor | None:
        """(B, L, H) bool: the queries whose output a NaN or Inf among the inputs reaches by the spec (a query of
        its own, or a key or value it sees), or None when every input is finite. Visibility is read one column
        per non-finite key, never as an L x M matrix."""
        bad_queries = ~torch.isfinite(q).all(-1)
        bad_keys = ~(torch.isfinite(k).all(-1) & torch.isfinite(v).all(-1))  # (B, M, H_kv)
        if not bad_queries.any() and not bad_keys.any():
            return None
        reached = bad_queries.clone()
        num_heads, group = q.shape[2], q.shape[2] // k.shape[2]
        seen = call.key_seen(q.device)
        if call.query_offset is not None:
            query_positions, key_positions = call.positions(q.device)
        for b in range(q.shape[0]):
            columns = bad_keys[b].any(-1).nonzero().flatten()
            if seen is not None:
                columns = columns[seen[b if seen.shape[0] > 1 else 0, columns]]
            for chunk in columns.split(256):
                if call.query_offset is None:  # unrelated sequences (dense only): every query sees every key
                    sees = torch.ones(num_heads, q.shape[1], len(chunk), dtype=torch.bool, device=q.device)
                else:
                    row = b if query_positions.shape[0] > 1 else 0
                    sees = self.reference_visible(params, query_positions[row], key_positions[row][chunk],
                                                  num_heads, call.causal, call.key_length) > 0
                if call.attn_mask is not None and call.attn_mask.dtype == torch.bool:
                    mask = call.attn_mask.expand(q.shape[0], num_heads, q.shape[1], k.shape[1])
                    sees = sees & mask[b][:, :, chunk]
                bad = bad_keys[b, chunk].repeat_interleave(group, dim=1).T  # (H, chunk): query head h uses h // group
                reached[b] |= (sees & bad[:, None, :]).any(-1).T
        return reached

    def reference_weights(self, q: torch.Tensor, k: torch.Tensor, params, call) -> torch.Tensor:
        """(B, H, L, M) float64 attention weights of a call, before dropout: one softmax over the multiset of keys
        each query sees (a key seen c times adds log c); a query that sees nothing has weights 0."""
        count = self.reference_count(q, k, params, call)
        visible = count > 0
        k = k.repeat_interleave(q.shape[2] // k.shape[2], dim=2)  # grouped heads: h uses h // (H / H_kv)
        scale = call.scale if call.scale is not None else params.scale
        scores = reference_scores(q, k, scale)
        if call.attn_mask is not None and call.attn_mask.dtype != torch.bool:
            scores = scores + call.attn_mask.double()
        logits = torch.where(visible, scores + torch.log(count.clamp(min=1).double()), float("-inf"))
        sees_any = visible.any(-1, keepdim=True)
        weights = torch.softmax(torch.where(sees_any, logits, 0.0), dim=-1) * sees_any
        return torch.where(visible, weights, 0.0)

    def reference_call(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params, call,
                       dropout_keep: torch.Tensor | None = None) -> torch.Tensor:
        """The float64 oracle of any call (attention_impls.call.Call): the weights above, dropout as
        `dropout_keep` (B, H, L, M) bool with 1 / (1 - p), then the values. Visible pairs are selected before
        anything multiplies, so a non-finite key or value reaches exactly the queries that see it."""
        weights = self.reference_weights(q, k, params, call)
        visible = self.reference_count(q, k, params, call) > 0
        if dropout_keep is not None:
            weights = weights * dropout_keep / (1.0 - call.dropout_p)
        values = v.repeat_interleave(q.shape[2] // v.shape[2], dim=2).double()
        finite = torch.isfinite(values)
        out = torch.einsum("bhpj,bjhd->bphd", weights, torch.where(finite, values, 0.0))
        for b, j, h in (~finite).any(-1).nonzero().tolist():  # a non-finite value: added where it is seen only
            seen_by = visible[b if visible.shape[0] > 1 else 0, h, :, j]
            out[b, seen_by, h] = out[b, seen_by, h] + weights[b, h, seen_by, j, None] * values[b, j, h]
        return out.to(q.dtype)

    def key_range(self, params, first_query: int, last_query: int, key_length: int,
                  causal: bool) -> tuple[int, int] | None:
        """[lo, hi): the key positions any query at positions first_query..last_query can see, where the pattern
        bounds them (a window, a segment), or None. A decoding step then reads these keys only, so its cost follows
        the keys the pattern lets it see, not the cache's length."""
        return None

    def visible_keys(self, params, query_position: int, key_length: int, num_heads: int,
                     causal: bool) -> list[torch.Tensor] | None:
        """Per head, the key positions one query sees, each repeated as often as the pattern scores it (its
        multiplicity), in closed form; or None. A decoding step then attends to exactly these keys."""
        return None

    def reach(self, params, seq_len: int, depth: int, causal: bool, token_shift: bool) -> int | None:
        """The longest distance p - j over which a token can influence a later position through `depth` layers,
        in closed form, or None: then it is read off the receptive field, built from `multiplicity`."""
        return None

    def receptive_field(self, params, seq_len: int, depth: int, causal: bool,
                        token_shift: bool) -> torch.Tensor | None:
        """(N, N) bool field in closed form where one exists (else None: matrix powers of one layer's field)."""
        return None

    def picture_size(self, params, num_heads: int | None) -> tuple[int, int]:
        """(how many heads differ, how many positions show the pattern) for the pattern pictures; num_heads is
        the configuration's H where known."""
        return 1, 32

    def label(self, values: dict[str, Any]) -> str:
        """Short parameter text for reports ('w=256'); pops the keys it names, so the rest are appended as
        key=value."""
        return ""

    def size(self, values: dict[str, Any]) -> list[float]:
        """Numbers that order variants of this mechanism in tables and legends, smaller first."""
        return []

    def param_strategy(self):
        """required: a hypothesis strategy of valid parameter dicts, for the backend-against-reference tests."""
        raise NotImplementedError
