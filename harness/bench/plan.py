"""What every measuring job plans alike: its variants, its sweep axes and their checks, and a point's columns.

The speed, max_seq_len and distributed jobs read the same `attention` + `variants` and the same `benchmark.*`
axes; each is checked here once, before any work starts, with an error that names the key, the value and what is
allowed. `grid` expands the axes in one order (variant -> dtype -> causal -> pass -> seq_len ascending), and
`point_columns` is the start of every row a point becomes, so the jobs' rows agree column for column.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from omegaconf import DictConfig, OmegaConf

import attention_impls
from attention_impls.mechanisms import get_mechanism
from attention_impls.registry import get_backend_class

from ..config import ConfigError
from ..retrieval.config import MAX_COUNT, MAX_SECONDS
from .measure import DTYPES, PASSES


@dataclass(frozen=True)
class Variant:
    """One attention to measure, as configured: `where` is its config key (attention, variants.<key>)."""

    name: str
    mechanism: str
    backend: str | None
    params: dict
    where: str

    @property
    def spec(self) -> Any:
        return attention_impls.make_params(self.mechanism, **self.params)


def read_variants(cfg: DictConfig) -> list[Variant]:
    """`attention` then every `variants.<key>`, each checked (params, backend name); one listed twice is kept once."""
    nodes = [("attention", cfg.attention)] + [(f"variants.{key}", node) for key, node in cfg.variants.items()]
    variants, seen = [], set()
    for where, node in nodes:
        params = OmegaConf.to_container(node.params, resolve=True)
        try:
            attention_impls.make_params(node.mechanism, **params)
            if node.backend is not None:
                get_backend_class(node.mechanism, node.backend)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{where} ({node.name}): {error}") from None
        identity = json.dumps([node.mechanism, node.backend, params], sort_keys=True)
        if identity not in seen:
            seen.add(identity)
            variants.append(Variant(node.name, node.mechanism, node.backend, params, where))
    return variants




def check_positive(name: str, value: Any, minimum: float = 1, maximum: float = MAX_COUNT) -> None:
    """A count: an int (or a whole float) in [minimum, maximum]."""
    if (value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or not minimum <= value <= maximum):
        raise ConfigError(f"{name}={value} must be >= {minimum:g} and <= {maximum:.0f}")


def check_seconds(name: str, value: Any) -> None:
    """A duration: a finite number of seconds, > 0 and at most MAX_SECONDS."""
    if (value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or not 0 < value <= MAX_SECONDS):
        raise ConfigError(f"{name}={value} must be a finite number of seconds in (0, {MAX_SECONDS:g}] (a week)")


def check_hook(key: str, path: str) -> None:
    """A "module:function" test hook must import and be callable before anything runs."""
    module_name, _, function_name = path.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name, None)
    except ImportError as error:
        raise ConfigError(f"{key}={path!r}: cannot import {module_name!r} ({error})") from None
    if not callable(function):
        raise ConfigError(f"{key}={path!r} must name a function as 'module:function'")


def check_seq_lens(seq_lens: list[Any]) -> list[int]:
    if not seq_lens:
        raise ConfigError("benchmark.seq_lens is empty; give at least one sequence length")
    for seq_len in seq_lens:
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or not 1 <= seq_len <= MAX_COUNT:
            raise ConfigError(f"benchmark.seq_lens: {seq_len!r} must be an int in [1, {MAX_COUNT}]")
    check_distinct("benchmark.seq_lens", seq_lens)
    return sorted(seq_lens)


def check_distinct(name: str, values: list[Any]) -> None:
    """An axis lists each value once: a repeat would measure the same point twice."""
    repeated = sorted({str(v) for v in values if list(values).count(v) > 1})
    if repeated:
        raise ConfigError(f"{name}={list(values)} repeats {', '.join(repeated)}; list each value once")


def check_benchmark(bench: DictConfig, correctness: bool) -> None:
    """The benchmark keys every measuring job shares: shape, repeats, budgets, threads, and the axes dtypes,
    passes and causal (each known and non-empty). `correctness`: the job compares against a reference, so each
    dtype needs its tolerances."""
    for name in ("batch", "heads", "head_dim", "min_repeats", "rounds"):
        check_positive(f"benchmark.{name}", bench[name])
    check_positive("benchmark.warmup", bench.warmup, 0)
    for name in ("min_run_time_s", "timeout_s"):
        check_seconds(f"benchmark.{name}", bench[name])
    if bench.threads is not None:
        check_positive("benchmark.threads", bench.threads, maximum=4096)
    for key, allowed in (("dtypes", DTYPES), ("passes", PASSES)):
        for value in bench[key]:
            if value not in allowed:
                raise ConfigError(f"benchmark.{key}: {value!r} is not known; choose from: {', '.join(allowed)}")
    for key in ("dtypes", "passes", "causal"):
        if len(bench[key]) == 0:
            raise ConfigError(f"benchmark.{key} is empty; give at least one value")
        check_distinct(f"benchmark.{key}", list(bench[key]))
    # the largest input (batch, N, heads, head_dim) must be a size a tensor can have
    elements = bench.batch * max([1, *[n for n in bench.seq_lens if isinstance(n, int)]]) * bench.heads * bench.head_dim
    if elements > 2**62:
        raise ConfigError(f"benchmark.batch={bench.batch} x seq_len x heads={bench.heads} x head_dim={bench.head_dim} "
                          f"is {elements:.3g} elements per input; no tensor holds more than 2^62")
    if correctness:
        for dtype in bench.dtypes:
            for tolerance in ("out_atol", "grad_atol"):
                if dtype not in bench.correctness[tolerance]:
                    raise ConfigError(f"benchmark.correctness.{tolerance} has no entry for dtype {dtype}")


def check_shapes(variant: Variant, seq_lens: list[int], heads: int) -> None:
    """Every sequence length the variant will run at fits its pattern (dilated: every offset covered)."""
    mechanism, spec = get_mechanism(variant.mechanism), variant.spec
    for seq_len in seq_lens:
        try:
            mechanism.check_shape(spec, seq_len, heads)
        except ValueError as error:
            raise ConfigError(f"{variant.name}: seq_len={seq_len}, heads={heads}: {error}") from None


def check_device(name: str, allow_index: bool = True) -> str:
    """benchmark.device -> the device to run on (auto: CUDA when there is one)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name == "cuda" or (allow_index and name.startswith("cuda:")):
        if not torch.cuda.is_available():
            raise ConfigError(f"benchmark.device={name} but CUDA is not available here (torch {torch.__version__}); "
                              f"use benchmark.device=cpu or auto")
        return name
    if not allow_index:
        raise ConfigError(f"benchmark.device={name!r}: the distributed job takes cpu, cuda or auto (each rank uses "
                          f"cuda:<local rank>)")
    raise ConfigError(f"benchmark.device={name!r} is not known; choose one of: cpu, cuda, cuda:<index>, auto")


def grid(variants: list[Variant], bench: DictConfig, seq_lens: list[int]) -> Iterator[tuple[Variant, str, bool, str,
                                                                                             int]]:
    """(variant, dtype, causal, pass, seq_len) in plan order: a ladder of ascending N per variant and setting."""
    for variant in variants:
        for dtype in bench.dtypes:
            for causal in bench.causal:
                for pass_name in bench.passes:
                    for seq_len in sorted(seq_lens):
                        yield variant, dtype, bool(causal), pass_name, int(seq_len)


def point_columns(kind: str, point: Any) -> dict[str, Any]:
    """The columns that say which attention, shape and setting a row measured (speed, max_seq_len and
    distributed points alike: anything with the fields below)."""
    return {
        "kind": kind, "variant": point.variant, "mechanism": point.mechanism,
        "backend_requested": point.backend or "auto", "params": json.dumps(point.params, sort_keys=True),
        "batch": point.batch, "seq_len": point.seq_len, "heads": point.heads, "head_dim": point.head_dim,
        "dtype": point.dtype, "causal": point.causal, "pass": point.pass_name, "device": point.device,
    }
