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


def check_scale(scale: Any) -> float | None:
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale={scale!r} must be a positive finite number, or None for 1/sqrt(head_dim)")
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
    """(B, H, N, N) float64 scores q.k * scale (1/sqrt(head_dim) by default)."""
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
    # Up to N (inclusive), these backends go first on that device: at short sequences one masked call wins.
    small_n_priority: ClassVar[dict[str, tuple[int, tuple[str, ...]]]] = {}
    # A small configuration for demos and checks (python -m attention_impls.demo)
    example_params: ClassVar[dict[str, Any]] = {}
    # The parameters of the `attention=<mechanism>_<backend>` config nodes (harness/config.py registers one
    # per backend from the registry); a sweep overrides them with attention.params.<key>=...
    config_params: ClassVar[dict[str, Any]] = {}

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

    def reference_multiplicity(self, params, seq_len: int, num_heads: int, causal: bool,
                               device: torch.device | str | None = None) -> torch.Tensor:
        """required: (H, N, N) int64 multiplicity straight from the spec's words, written apart from
        `multiplicity` so that each checks the other."""
        raise NotImplementedError

    def reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params, causal: bool) -> torch.Tensor:
        """The float64 oracle: one softmax over the multiset of seen keys (a key seen c times adds log c)."""
        count = self.reference_multiplicity(params, q.shape[1], q.shape[2], causal, q.device).double()
        scores = reference_scores(q, k, params.scale) + torch.log(count)[None]  # log 0 = -inf: never seen
        return reference_attend(scores, v).to(q.dtype)

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
