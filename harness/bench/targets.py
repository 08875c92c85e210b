"""The performance targets, as data: each bounds the ratio of two quantities measured within one run.

A `Measurement` is a function the runner's worker runs (harness.bench.worker: a measurement that hangs or runs
out of memory becomes a row, never a lost run) and that returns rounds of named quantities, taken interleaved
(A B A B ...) so a change of the machine's load hits both sides of a ratio alike. A `Target` names a measurement,
the two quantities whose ratio it bounds, a comparison and a limit; its value is the median of the per-round
ratios, stored with their spread as a `kind=perf_target` row. Adding a target is one `Target(...)` line (and,
for a new quantity, one `measure_*` function with its `Measurement` line).

Runs as a job (`jobs: [targets]`, `shootout experiment=perf_targets`) and as a script (`scripts/perf_targets.py`,
the same code). Timing, memory and the matmul ceiling are the runner's own (harness.bench.measure).
results/perf/NOTES.md holds, per target, what bounds it, what was tried and what was measured.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import attention_impls as ai
from attention_impls.dilated_merge import plan
from attention_impls.kernels import default_scale
from attention_impls.mechanisms import get_mechanism
from attention_impls.ops.dilated_gather import branch_kernel
from attention_impls.registry import PRIORITY
from ..environment import fingerprint
from ..store import ResultsStore, config_hash
from .measure import Timing, _load_hook, matmul_ceiling, peak_memory_bytes, time_call
from .worker import Worker

ROUNDS = 3  # interleaved rounds per ratio; the value reported is the median of the rounds' ratios
DILATED = {"segment_lengths": [2048, 4096, 8192], "dilation_rates": [1, 2, 4]}
PAPER = {"segment_lengths": [2048, 4096, 8192, 16384, 32768], "dilation_rates": [1, 2, 4, 6, 12]}
SMOKE_DILATED = {"segment_lengths": [64, 128, 256], "dilation_rates": [1, 2, 4]}
# Small N: the patterns of a short-context shootout (N = 64..1024), each through backend=None and masked SDPA.
SMALL_N_PARAMS = {"sliding_window": {"window": 64}, "longformer": {"window": 32, "global_tokens": 4},
                  "dilated": {"segment_lengths": [64, 128, 256], "dilation_rates": [1, 2, 4]}}


@dataclass(frozen=True)
class Sizes:
    heads: int = 8
    head_dim: int = 64
    dilated_n: int = 32768
    scaling_small_n: int = 32768
    scaling_large_n: int = 1 << 20
    window: int = 512
    window_n: int = 16384
    pick_n: int = 8192
    flash_n: int = 131072  # the GPU target: dilated against dense flash attention
    small_ns: tuple = (64, 128, 256, 512, 1024)
    small_n_run_time_s: float = 0.3  # per timing: calls of microseconds, thousands per timing
    decode_ns: tuple = (4096, 65536)  # a decoding step against a cache of each length
    min_run_time_s: float = 2.0
    ceiling_size: int = 2048
    dilated: tuple = tuple(DILATED.items())
    paper: tuple = tuple(PAPER.items())


SMOKE = Sizes(heads=2, head_dim=16, dilated_n=1024, scaling_small_n=512, scaling_large_n=2048, window=32,
              window_n=512, pick_n=512, flash_n=1024, small_ns=(64, 128), small_n_run_time_s=0.02,
              decode_ns=(256, 1024), min_run_time_s=0.05, ceiling_size=256,
              dilated=tuple(SMOKE_DILATED.items()), paper=tuple(SMOKE_DILATED.items()))


@dataclass(frozen=True)
class Measurement:
    """What the worker runs: `measure_<function>(bench, **arguments)` -> {"rounds": [...], "facts": {...}}."""

    name: str  # the prefix of its targets' keys
    group: str  # what `targets.only` names
    function: str
    arguments: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Target:
    """measured = median over rounds of round[numerator] / round[denominator]; passed = measured <comparison>
    limit. `detail`: str.format over the quantities' medians (`<name>_ms` for seconds, `<name>_gflops` for FLOP/s,
    `<name>_mib` for bytes) and the measurement's facts. `issue_on`: the device types on which it is one of the
    issues' targets; elsewhere it is a context measurement against the same bar."""

    key: str
    label: str
    measurement: str
    numerator: str
    denominator: str
    comparison: str  # "<=" | ">="
    limit: float
    detail: str = ""
    issue_on: tuple[str, ...] = ("cpu", "cuda")

    def meets(self, value: float) -> bool:
        return value <= self.limit if self.comparison == "<=" else value >= self.limit

    def ratios(self, rounds: list[dict[str, float]]) -> list[float]:
        return [quantities[self.numerator] / quantities[self.denominator] for quantities in rounds]


_WINDOWS = [(causal, grad) for causal in (True, False) for grad in (False, True)]


def _window_name(causal: bool, grad: bool) -> str:
    return f"sliding_window.{'causal' if causal else 'bidirectional'}.{'forward_backward' if grad else 'forward'}"


MEASUREMENTS: tuple[Measurement, ...] = (
    Measurement("dilated_gather", "dilated_gather", "gather_forward"),
    Measurement("dilated_gather.profile", "dilated_gather", "gather_profile"),
    Measurement("dilated_gather.memory", "dilated_gather", "gather_memory"),
    Measurement("dilated_gather.forward_backward", "dilated_gather", "gather_forward_backward"),
    Measurement("dilated_scaling", "dilated_scaling", "paper_scaling"),
    *(Measurement(_window_name(causal, grad), "sliding_window", "window_against_dense",
                  (("causal", causal), ("grad", grad))) for causal, grad in _WINDOWS),
    *(Measurement(f"auto_pick.{mechanism}", "auto_pick", "auto_pick", (("mechanism", mechanism),))
      for mechanism in ai.MECHANISMS),
    Measurement("dilated_vs_flash", "dilated_vs_flash", "dilated_against_flash"),
    *(Measurement(f"small_n.{mechanism}", "small_n", "small_n", (("mechanism", mechanism),))
      for mechanism in SMALL_N_PARAMS),
    Measurement("decode", "decode", "decode"),
)

_ROUNDS_NOTE = "medians of {rounds} interleaved rounds"
TARGETS: tuple[Target, ...] = (
    Target("dilated_gather.overhead", "dilated gather: time / bare sum of branch kernels", "dilated_gather",
           "forward_s", "bare_s", "<=", 1.05,
           "N={seq_len}, forward {forward_s_ms:.1f} ms, bare kernels {bare_s_ms:.1f} ms (" + _ROUNDS_NOTE + ")"),
    Target("dilated_gather.efficiency", "dilated gather: useful FLOP/s / matmul ceiling", "dilated_gather",
           "flops_per_s", "ceiling_flops_per_s", ">=", 0.80,
           "{flops_per_s_gflops:.1f} GFLOP/s useful, ceiling {ceiling_flops_per_s_gflops:.1f} GFLOP/s re-measured "
           "each round; the bare branch kernels alone: {bare_flops_per_s_gflops:.1f} GFLOP/s"),
    Target("dilated_gather.outside_kernel",
           "dilated gather: share of forward time outside the attention kernel (profiler)",
           "dilated_gather.profile", "outside_s", "total_s", "<=", 0.05,
           "{outside_s_ms:.1f} of {total_s_ms:.1f} ms self CPU time outside the kernel"),
    Target("dilated_gather.memory", "dilated gather: peak memory above inputs / output size", "dilated_gather.memory",
           "peak_bytes", "output_bytes", "<=", 3.0,
           "{peak_bytes_mib:.0f} MiB above inputs, output {output_bytes_mib:.0f} MiB; {mem_method}"),
    Target("dilated_gather.forward_backward", "dilated gather: forward+backward / forward",
           "dilated_gather.forward_backward", "forward_backward_s", "forward_s", "<=", 3.5,
           "fwd+bwd {forward_backward_s_ms:.1f} ms, fwd {forward_s_ms:.1f} ms (" + _ROUNDS_NOTE + "); the bare "
           "branch kernels' own fwd+bwd {bare_forward_backward_s_ms:.1f} ms, fwd {bare_forward_s_ms:.1f} ms"),
    Target("dilated_gather.forward_backward_vs_bare",
           "dilated gather: its forward+backward / forward over the bare kernels' own", "dilated_gather.forward_backward",
           "backward_ratio", "bare_backward_ratio", "<=", 1.05,
           "{backward_ratio:.3f} against the kernels' {bare_backward_ratio:.3f} (" + _ROUNDS_NOTE + ")"),
    Target("dilated_scaling.per_token", "dilated paper config: time per token at N={large_n} / at N={small_n}",
           "dilated_scaling", "large_per_token_s", "small_per_token_s", "<=", 1.10,
           "N={large_n}: {large_us}; each between N={small_n} at {small_us} us/token; ratio to each bracket's mean"),
    *(Target(_window_name(causal, grad), f"sliding window ({{backend}}) "
             f"{'causal' if causal else '[{window}, {window}] non-causal (not an issue target)'} useful FLOP/s / "
             f"dense SDPA's, {'forward+backward' if grad else 'forward'}", _window_name(causal, grad),
             "window_flops_per_s", "dense_flops_per_s", ">=", 0.60,
             "window {window} N={seq_len}: {window_flops_per_s_gflops:.1f} vs {dense_flops_per_s_gflops:.1f} "
             "GFLOP/s (" + _ROUNDS_NOTE + ")", issue_on=("cpu", "cuda") if causal else ())
      for causal, grad in _WINDOWS),
    *(Target(f"auto_pick.{mechanism}", f"backend=None for {mechanism}: picked time / fastest time",
             f"auto_pick.{mechanism}", "picked_s", "fastest_s", "<=", 1.10,
             "picked {picked}; causal forward N={seq_len}: {listing}") for mechanism in ai.MECHANISMS),
    Target("dilated_vs_flash.flops", "dilated ({backend}) useful FLOP/s / dense flash attention's, N={seq_len}",
           "dilated_vs_flash", "dilated_flops_per_s", "dense_flops_per_s", ">=", 0.70,
           "forward, not causal: {dilated_flops_per_s_gflops:.1f} vs {dense_flops_per_s_gflops:.1f} GFLOP/s ("
           + _ROUNDS_NOTE + ")", issue_on=("cuda",)),
    *(Target(f"small_n.{mechanism}", f"{mechanism} at small N: backend=None time / masked SDPA's, the worst N and pass",
             f"small_n.{mechanism}", "worst_ratio", "one", "<=", 1.0,
             "N={small_ns}, forward and forward+backward, causal; picked/masked per point: {listing}")
      for mechanism in SMALL_N_PARAMS),
    Target("decode.window_flat", "decode, sliding window {window}: step time at N={large_n} / at N={small_n}",
           "decode", "window_large_s", "window_small_s", "<=", 1.5,
           "{window_large_s_ms:.3f} vs {window_small_s_ms:.3f} ms (" + _ROUNDS_NOTE + ")"),
    Target("decode.dilated_follows_keys", "decode, dilated paper config: step-time growth / visible-key growth, "
           "N={small_n} to {large_n}", "decode", "dilated_growth", "keys_growth", "<=", 1.0,
           "{dilated_small_s_ms:.3f} -> {dilated_large_s_ms:.3f} ms while the visible keys grow {keys_small} -> "
           "{keys_large} (" + _ROUNDS_NOTE + ")"),
    Target("decode.window_vs_sdpa", "decode at N={large_n}: sliding window {window} / SDPA over the full cache",
           "decode", "window_large_s", "dense_large_s", "<=", 1.0,
           "{window_large_s_ms:.3f} vs {dense_large_s_ms:.3f} ms"),
    Target("decode.dilated_vs_sdpa", "decode at N={large_n}: dilated paper config / SDPA over the full cache",
           "decode", "dilated_large_s", "dense_large_s", "<=", 1.0,
           "{dilated_large_s_ms:.3f} vs {dense_large_s_ms:.3f} ms"),
)
GROUPS = tuple(dict.fromkeys(m.group for m in MEASUREMENTS))
DEFAULT_GROUPS = [g for g in GROUPS if g != "dilated_vs_flash"]  # every device; a GPU adds dilated_vs_flash


@dataclass(frozen=True)
class TargetSettings:
    """What a targets run measures: on which device and dtype, with how many threads, at full or smoke size."""

    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 2
    smoke: bool = False  # tiny shapes: checks that every target runs (the test suite's)
    skip_1m: bool = False  # leave out the 1M-token scaling target (minutes)
    only: tuple[str, ...] = ()  # these groups alone; () = DEFAULT_GROUPS (+ dilated_vs_flash on a GPU / smoke)
    timeout_s: float = 3600.0  # per measurement, in the worker (the 1M-token scaling run takes minutes)
    isolation: str = "process"  # the worker: process, or inline (debugging, tests that patch a measurement)
    fault_hook: str | None = None  # tests: "module:function" called with the measurement's name before it runs

    def chosen(self) -> list[str]:
        on_gpu = torch.device(self.device).type == "cuda"
        chosen = list(self.only) or [*DEFAULT_GROUPS, *(["dilated_vs_flash"] if on_gpu or self.smoke else [])]
        return [name for name in chosen if not (self.skip_1m and name == "dilated_scaling")]

    def sizes(self) -> Sizes:
        return SMOKE if self.smoke else Sizes()


# ---- in the worker: the measurements -------------------------------------------------------------------------

class Bench:
    """What every measurement uses: inputs, a timer, the matmul ceiling, on the run's device and dtype."""

    def __init__(self, settings: TargetSettings) -> None:
        torch.set_num_threads(settings.threads)
        self.settings, self.sizes = settings, settings.sizes()
        self.device, self.dtype = torch.device(settings.device), getattr(torch, settings.dtype)

    def inputs(self, seq_len: int, requires_grad: bool = False, seed: int = 0) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        shape = (1, seq_len, self.sizes.heads, self.sizes.head_dim)
        return [torch.randn(shape, generator=generator).to(self.device, self.dtype).requires_grad_(requires_grad)
                for _ in range(4)]

    def time(self, call: Callable[[], Any], grad: bool = False) -> Timing:
        with torch.inference_mode(not grad):
            call()  # warm-up (and compile)
            return time_call(call, self.sizes.min_run_time_s, min_repeats=3)

    def seconds(self, call: Callable[[], Any], grad: bool = False, min_run_time_s: float | None = None) -> float:
        if min_run_time_s is None:
            return self.time(call, grad).median_s
        with torch.inference_mode(not grad):
            call()
            return time_call(call, min_run_time_s, min_repeats=3).median_s

    def ceiling(self, min_run_time_s: float = 0.5) -> float:
        """The matmul ceiling measured now: the shared machine's speed drifts between minutes."""
        run_time = min_run_time_s if not self.settings.smoke else 0.05
        return matmul_ceiling(self.settings.device, self.settings.dtype, size=self.sizes.ceiling_size,
                              min_run_time_s=run_time)["matmul_peak_flops_per_s"]

    def flops(self, attn: Any, seq_len: int, causal: bool, backward: bool = False) -> float:
        return ai.useful_flops(attn.params, 1, seq_len, self.sizes.heads, self.sizes.head_dim, causal, backward)

    def dilated(self, backend: str | None = "gather") -> Any:
        return ai.build("dilated", backend, **dict(self.sizes.dilated))


def run_measurement(settings: TargetSettings, name: str) -> dict[str, Any]:
    """The worker's entry point: run measurement `name` at the settings' sizes."""
    measurement = next(m for m in MEASUREMENTS if m.name == name)
    function = getattr(sys.modules[__name__], f"measure_{measurement.function}")
    if settings.fault_hook:
        _load_hook(settings.fault_hook)(name)
    return function(Bench(settings), **dict(measurement.arguments))


def _gathered_branches(attn: Any, tensors: list[torch.Tensor], heads: int) -> list[list[torch.Tensor]]:
    """The bound's input: each branch's rows, gathered before the clock starts, contiguous head by head
    ((N / w, H_offset, w / r, D) underneath, the layout torch's CPU flash kernel runs fastest on: 1.16x faster
    than the rows of all heads together, results/perf/NOTES.md), one kernel call per (segment length, rate,
    head offset). Until 2026-12-03 the bound took the backend's own row-major gathers, which flattered it."""
    return [[piece.gather(x, head_major=True) for x in tensors] for piece in plan(attn.params, tensors[0].shape[1],
                                                                                   heads)]


def measure_gather_forward(bench: Bench) -> dict[str, Any]:
    n = bench.sizes.dilated_n
    attn = bench.dilated()
    q, k, v, _ = bench.inputs(n)
    kernel, scale = branch_kernel(q), default_scale(bench.sizes.head_dim, None)
    branches = _gathered_branches(attn, [q, k, v], bench.sizes.heads)
    flops = bench.flops(attn, n, causal=False)

    def bare() -> None:
        for branch in branches:
            kernel.forward(*branch, False, scale)

    rounds = []
    for _ in range(ROUNDS):
        forward_s, bare_s = bench.seconds(lambda: attn(q, k, v)), bench.seconds(bare)
        rounds.append(dict(forward_s=forward_s, bare_s=bare_s, flops_per_s=flops / forward_s,
                           bare_flops_per_s=flops / bare_s, ceiling_flops_per_s=bench.ceiling()))
    return {"rounds": rounds, "facts": {"seq_len": n}}


def measure_gather_profile(bench: Bench) -> dict[str, Any]:
    """The overhead seen from inside one call, which load drift cannot tilt: torch.profiler's self time of
    everything that is not the attention kernel, over the whole call."""
    n = bench.sizes.dilated_n
    attn = bench.dilated()
    q, k, v, _ = bench.inputs(n)
    with torch.inference_mode():
        attn(q, k, v)
        with torch.profiler.profile() as profile:
            attn(q, k, v)
    events = profile.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    in_kernel = sum(e.self_cpu_time_total for e in events if "scaled_dot_product" in e.key
                    or "flash_attention" in e.key or "efficient_attention" in e.key or e.key == "aten::bmm")
    return {"rounds": [dict(outside_s=(total - in_kernel) / 1e6, total_s=total / 1e6)], "facts": {"seq_len": n}}


def measure_gather_memory(bench: Bench) -> dict[str, Any]:
    n = bench.sizes.dilated_n
    attn = bench.dilated()
    q, k, v, _ = bench.inputs(n)
    with torch.inference_mode():
        attn(q, k, v)
        peak, method = peak_memory_bytes(lambda: attn(q, k, v), bench.device)
    output_bytes = q.numel() * q.element_size()
    return {"rounds": [dict(peak_bytes=peak, output_bytes=output_bytes)],
            "facts": {"seq_len": n, "mem_method": method, "peak_mem_bytes": peak}}


def measure_gather_forward_backward(bench: Bench) -> dict[str, Any]:
    """forward+backward over forward, with the floor under that ratio: the same kernels' own forward+backward
    over their forward, on the gathered branches, in the same round."""
    n = bench.sizes.dilated_n
    attn = bench.dilated()
    q, k, v, grad_out = bench.inputs(n, requires_grad=True)
    kernel, scale = branch_kernel(q), default_scale(bench.sizes.head_dim, None)
    branches = _gathered_branches(attn, [x.detach() for x in (q, k, v, grad_out)], bench.sizes.heads)

    def forward_backward() -> None:
        torch.autograd.grad(attn(q, k, v), (q, k, v), grad_out)

    def bare_kernels(backward: bool) -> Callable[[], None]:
        def run() -> None:
            for branch_q, branch_k, branch_v, branch_grad in branches:
                out, lse = kernel.forward(branch_q, branch_k, branch_v, False, scale)
                if backward:
                    kernel.backward(branch_grad, branch_q, branch_k, branch_v, out, lse, False, scale)
        return run

    rounds = [dict(forward_backward_s=bench.seconds(forward_backward, grad=True),
                   forward_s=bench.seconds(lambda: attn(q, k, v)),
                   bare_forward_backward_s=bench.seconds(bare_kernels(backward=True)),
                   bare_forward_s=bench.seconds(bare_kernels(backward=False))) for _ in range(ROUNDS)]
    for times in rounds:  # the ratio, and the floor the kernels' own backward puts under it, in the same round
        times.update(backward_ratio=times["forward_backward_s"] / times["forward_s"],
                     bare_backward_ratio=times["bare_forward_backward_s"] / times["bare_forward_s"])
    return {"rounds": rounds, "facts": {"seq_len": n}}


def measure_small_n(bench: Bench, mechanism: str) -> dict[str, Any]:
    """backend=None against masked SDPA (the pattern's plain baseline) at each small N, forward and
    forward+backward, causal; where backend=None picks masked SDPA, that one timing serves both sides."""
    params, sizes = SMALL_N_PARAMS[mechanism], bench.sizes
    points = []
    for seq_len in sizes.small_ns:
        for grad in (False, True):
            q, k, v, grad_out = bench.inputs(seq_len, requires_grad=grad)
            picked = ai.build(mechanism, None, **params)
            name = picked.resolve(q.device, q.dtype, True, grad, q.shape[-1], seq_len,
                                  batch_heads=q.shape[0] * q.shape[2])
            masked = ai.build(mechanism, "masked_sdpa", **params)

            def call(attn, q=q, k=k, v=v, grad_out=grad_out, grad=grad):
                if grad:
                    return lambda: torch.autograd.grad(attn(q, k, v, causal=True), (q, k, v), grad_out)
                return lambda: attn(q, k, v, causal=True)
            points.append((seq_len, grad, name, call(picked), call(masked)))
    rounds, listing = [], {}
    for _ in range(ROUNDS):
        ratios = []
        for seq_len, grad, name, picked_call, masked_call in points:
            masked_s = bench.seconds(masked_call, grad, sizes.small_n_run_time_s)
            picked_s = masked_s if name == "masked_sdpa" else bench.seconds(picked_call, grad,
                                                                            sizes.small_n_run_time_s)
            ratios.append(picked_s / masked_s)
            listing.setdefault((seq_len, grad, name), []).append(picked_s / masked_s)
        rounds.append(dict(worst_ratio=max(ratios), one=1.0))
    text = ", ".join(f"{n}{' fwd+bwd' if g else ''} {name} {statistics.median(r):.2f}"
                     for (n, g, name), r in listing.items())
    return {"rounds": rounds, "facts": {"small_ns": list(sizes.small_ns), "listing": text}}


def measure_decode(bench: Bench) -> dict[str, Any]:
    """One decoding step (a query at N - 1 against N cached keys, causal) at a short and a long cache: the
    window's and the paper configuration's time, and SDPA's over the whole long cache."""
    sizes = bench.sizes
    small, large = sizes.decode_ns
    paper = dict(sizes.paper)
    steppers = {"window": ai.build("sliding_window", None, window=sizes.window),
                "dilated": ai.build("dilated", None, **paper), "dense": ai.build("dense", "sdpa")}
    query = bench.inputs(1, seed=1)[0]
    caches = {n: bench.inputs(n)[1:3] for n in (small, large)}
    visible = get_mechanism("dilated")
    keys = {n: sum(len(head) for head in visible.visible_keys(visible.make_params(**paper), n - 1, n,
                                                               sizes.heads, True)) for n in (small, large)}

    def step(name: str, seq_len: int) -> Callable[[], Any]:
        k, v = caches[seq_len]
        return lambda: steppers[name](query, k, v, causal=True, query_offset=seq_len - 1)

    rounds = []
    for _ in range(ROUNDS):
        times = {f"{name}_{size}_s": bench.seconds(step(name, n)) for name in ("window", "dilated")
                 for size, n in (("small", small), ("large", large))}
        times["dense_large_s"] = bench.seconds(step("dense", large))
        rounds.append(dict(times, dilated_growth=times["dilated_large_s"] / times["dilated_small_s"],
                           keys_growth=keys[large] / keys[small]))
    return {"rounds": rounds, "facts": {"small_n": small, "large_n": large, "window": sizes.window,
                                        "keys_small": keys[small], "keys_large": keys[large]}}


def measure_paper_scaling(bench: Bench) -> dict[str, Any]:
    """Time per token of the paper's configuration at 1M tokens against 32K.

    This machine's speed drifts by 10-20 % within minutes, as long as one large call. Each large call is
    bracketed by timings of the small size just before and after it and compared with their mean, which cancels
    drift that is linear over the bracket; two brackets in a row. (Comparing with the faster of the two small
    timings was biased high: 1.130 in a run where the bracket mean gave 1.066. Time per token in units of a
    matmul ceiling measured around each run made the two small timings of one run disagree more, 0.918 against
    0.950 raw: results/perf/NOTES.md.)"""
    sizes = bench.sizes
    attn = ai.build("dilated", "gather", **dict(sizes.paper))
    small, large = sizes.scaling_small_n, sizes.scaling_large_n
    inputs = {small: bench.inputs(small)[:3], large: bench.inputs(large)[:3]}

    def per_token(n: int) -> float:
        with torch.inference_mode():
            if n == large:  # one call at 1M is minutes: the timer's calibration call, then one timed call
                seconds = time_call(lambda: attn(*inputs[n]), min_run_time_s=0.0, min_repeats=1).median_s
            else:
                seconds = bench.seconds(lambda: attn(*inputs[n]))
        print(f"  dilated paper config N={n}: {seconds:.2f} s, {seconds / n * 1e6:.2f} us/token", flush=True)
        return seconds / n

    small_times, large_times = [per_token(small)], []
    for _ in range(2):
        large_times.append(per_token(large))
        small_times.append(per_token(small))
    rounds = [dict(large_per_token_s=at_large, small_per_token_s=(before + after) / 2)
              for at_large, before, after in zip(large_times, small_times, small_times[1:])]
    return {"rounds": rounds, "facts": {
        "seq_len": large, "large_n": large, "small_n": small,
        "large_us": ", ".join(f"{t * 1e6:.2f}" for t in large_times) + " us/token",
        "small_us": ", ".join(f"{t * 1e6:.2f}" for t in small_times)}}


def measure_window_against_dense(bench: Bench, causal: bool, grad: bool) -> dict[str, Any]:
    """The issue's target is the causal window; the bidirectional one (left = right = window, the same bar)
    shows the backend is as fast for encoders."""
    sizes, n = bench.sizes, bench.sizes.window_n
    window = ai.build("sliding_window", PRIORITY[("sliding_window", bench.device.type)][0], window=sizes.window)
    dense = ai.build("dense", "sdpa")
    q, k, v, grad_out = bench.inputs(n, requires_grad=grad)

    def rate(attn: Any) -> float:
        if grad:
            call = lambda: torch.autograd.grad(attn(q, k, v, causal=causal), (q, k, v), grad_out)  # noqa: E731
        else:
            call = lambda: attn(q, k, v, causal=causal)  # noqa: E731
        return bench.flops(attn, n, causal, grad) / bench.seconds(call, grad=grad)

    rounds = [dict(window_flops_per_s=rate(window), dense_flops_per_s=rate(dense)) for _ in range(ROUNDS)]
    return {"rounds": rounds, "facts": {"seq_len": n, "window": sizes.window, "backend": window.backend}}


def measure_auto_pick(bench: Bench, mechanism: str) -> dict[str, Any]:
    """Every backend that takes a causal forward here, timed, against the one backend=None picks."""
    sizes, n = bench.sizes, bench.sizes.pick_n
    sized = {"sliding_window": {"window": sizes.window}, "dilated": dict(sizes.dilated)}
    params = sized.get(mechanism, get_mechanism(mechanism).example_params)
    q, k, v, _ = bench.inputs(n)
    times = {}
    for info in ai.backends(mechanism):
        cls = ai.registry.REGISTRY[mechanism][info.name]
        if info.name == "reference" or cls.not_supported_reasons(bench.device, bench.dtype, True, False):
            continue
        if bench.settings.smoke and cls.needs_compile:
            continue  # compiling is seconds per shape: the smoke run only checks the targets run
        attn = ai.build(mechanism, info.name, **params)
        times[info.name] = bench.seconds(lambda: attn(q, k, v, causal=True))
    picked = ai.build(mechanism, **params)
    with torch.inference_mode():
        picked(q, k, v, causal=True)
    listing = ", ".join(f"{name} {t * 1e3:.1f} ms" for name, t in sorted(times.items(), key=lambda x: x[1]))
    return {"rounds": [dict(picked_s=times[picked.backend], fastest_s=min(times.values()))],
            "facts": {"seq_len": n, "picked": picked.backend, "listing": listing}}


def measure_dilated_against_flash(bench: Bench) -> dict[str, Any]:
    """The dilated backend a user gets (backend=None) against torch's flash kernel itself, not whichever SDPA
    kernel torch would pick for these inputs."""
    n = bench.sizes.flash_n
    dilated, dense = bench.dilated(backend=None), ai.build("dense", "sdpa")
    q, k, v, _ = bench.inputs(n)

    def dense_flash() -> torch.Tensor:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return dense(q, k, v)

    rounds = [dict(dilated_flops_per_s=bench.flops(dilated, n, False) / bench.seconds(lambda: dilated(q, k, v)),
                   dense_flops_per_s=bench.flops(dense, n, False) / bench.seconds(dense_flash))
              for _ in range(ROUNDS)]
    return {"rounds": rounds, "facts": {"seq_len": n, "backend": dilated.backend}}


# ---- in the runner: targets from measurements ---------------------------------------------------------------

def _detail_values(medians: dict[str, float], facts: dict[str, Any], rounds: int) -> dict[str, Any]:
    values: dict[str, Any] = {"rounds": rounds, **facts, **medians}
    for name, value in medians.items():
        if name.endswith("_s"):
            values[f"{name}_ms"] = value * 1e3
        if name.endswith("flops_per_s"):
            values[f"{name}_gflops"] = value / 1e9
        if name.endswith("_bytes"):
            values[f"{name}_mib"] = value / 2**20
    return values


class Recorder:
    """Turns a measurement's rounds into one row per target: printed as measured / limit / verdict, stored."""

    def __init__(self, settings: TargetSettings, store: ResultsStore, ceiling: dict[str, Any]) -> None:
        self.settings, self.store = settings, store
        self.ceiling = ceiling.get("matmul_peak_flops_per_s", float("nan"))
        self.env = fingerprint(settings.device)
        self.device_type = torch.device(settings.device).type
        self.rows: list[dict[str, Any]] = []

    def measured(self, target: Target, result: dict[str, Any]) -> None:
        rounds, facts = result["rounds"], result["facts"]
        ratios = target.ratios(rounds)
        measured = statistics.median(ratios)
        medians = {name: statistics.median(r[name] for r in rounds) for name in rounds[0]}
        values = _detail_values(medians, facts, len(rounds))
        label, detail = target.label.format(**values), target.detail.format(**values)
        passed = target.meets(measured)
        columns: dict[str, Any] = {}
        spread = ""
        if len(ratios) > 1:
            columns.update(round_min=min(ratios), round_max=max(ratios), round_count=len(ratios),
                           rounds_passed=sum(map(target.meets, ratios)))
            spread = f"; rounds {min(ratios):.3f}-{max(ratios):.3f}, {columns['rounds_passed']} of {len(ratios)} meet it"
        print(f"{'PASS' if passed else 'FAIL'}  {label}: measured {measured:.3f}, target {target.comparison} "
              f"{target.limit}{spread}  ({detail})", flush=True)
        facts = {name: value for name, value in facts.items() if name in ("seq_len", "mem_method", "peak_mem_bytes")}
        self._keep(target, label, {"status": "ok", "measured": measured, "passed": passed, "detail": detail,
                                   "numerator": target.numerator, "denominator": target.denominator,
                                   "quantities": json.dumps(medians), **facts, **columns})

    def failed(self, target: Target, result: dict[str, Any]) -> None:
        """A measurement that raised, ran out of memory or time: a row with its status and reason."""
        print(f"{result['status'].upper()} {target.key}: {result['reason']}", flush=True)
        self._keep(target, target.key, {"status": result["status"], "reason": result["reason"],
                                        "measured": float("nan"), "passed": False})

    def _keep(self, target: Target, label: str, columns: dict[str, Any]) -> None:
        settings = self.settings
        row = {"kind": "perf_target", "target_key": target.key, "target": label, "measurement": target.measurement,
               "limit": target.limit, "comparison": target.comparison,
               "issue_target": self.device_type in target.issue_on, **columns, "device": settings.device,
               "dtype": settings.dtype, "smoke": settings.smoke, "matmul_peak_flops_per_s": self.ceiling, **self.env}
        row["config_hash"] = config_hash({"target": target.key, "smoke": settings.smoke, "device": settings.device,
                                          "dtype": settings.dtype, "run": self.store.job_id})
        self.rows.append(row)
        self.store.append(row)


def run_targets(settings: TargetSettings, store: ResultsStore) -> tuple[list[dict[str, Any]], list[str]]:
    """Measure the chosen targets into `store`: (their rows, the measurements that failed). Each measurement runs
    in the worker; one that fails becomes status rows for its targets and the others still run."""
    chosen = settings.chosen()
    failed = []
    with Worker(settings.isolation) as worker:
        ceiling = worker.run("matmul_ceiling", dict(device=settings.device, dtype=settings.dtype,
                                                    size=settings.sizes().ceiling_size,
                                                    min_run_time_s=1.0 if not settings.smoke else 0.05,
                                                    threads=settings.threads), timeout_s=settings.timeout_s)
        if "matmul_peak_flops_per_s" in ceiling:
            print(f"matmul ceiling: {ceiling['matmul_peak_flops_per_s'] / 1e9:.1f} GFLOP/s "
                  f"({ceiling['matmul_method']})", flush=True)
        recorder = Recorder(settings, store, ceiling)
        for measurement in [m for m in MEASUREMENTS if m.group in chosen]:
            result = worker.run("run_measurement", dict(settings=settings, name=measurement.name),
                                timeout_s=settings.timeout_s)
            if "status" in result:
                failed.append(measurement.name)
            for target in [t for t in TARGETS if t.measurement == measurement.name]:
                (recorder.failed if "status" in result else recorder.measured)(target, result)
    return recorder.rows, failed


def summary(rows: list[dict[str, Any]]) -> str:
    issue = [r for r in rows if r["issue_target"]]
    context = [r for r in rows if not r["issue_target"]]
    text = f"{sum(bool(r['passed']) for r in issue)} of {len(issue)} issue targets met"
    if context:
        text += f"; {sum(bool(r['passed']) for r in context)} of {len(context)} context measurements above their bar"
    return text


def run_targets_job(cfg, store: ResultsStore | None = None, logger: Any = None, check_only: bool = False):
    """The runner's `targets` job: cfg.targets says what to measure; rows go to the run's store."""
    import pandas as pd

    from ..config import ConfigError
    from .plan import check_hook, check_positive, check_seconds

    section = cfg.targets
    only = tuple(section.only)
    unknown = [name for name in only if name not in GROUPS]
    if unknown:
        raise ConfigError(f"targets.only={list(only)}: {unknown} not known; choose from: {', '.join(GROUPS)}")
    if section.dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"targets.dtype={section.dtype!r} must be one of: float32, bfloat16, float16")
    device = str(section.device)
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise ConfigError(f"targets.device={device!r} must be cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"targets.device={device}: this machine has no CUDA device")
    check_positive("targets.threads", section.threads, maximum=4096)
    check_seconds("targets.timeout_s", section.timeout_s)
    if section.fault_hook:
        check_hook("targets.fault_hook", section.fault_hook)
    if check_only:
        return None
    settings = TargetSettings(device=device, dtype=section.dtype, threads=int(section.threads),
                              smoke=bool(section.smoke), skip_1m=bool(section.skip_1m), only=only,
                              timeout_s=float(section.timeout_s), fault_hook=section.fault_hook)
    rows, failed = run_targets(settings, store)
    print(summary(rows) + (f"; measurements that failed (status rows): {', '.join(failed)}" if failed else ""))
    return pd.DataFrame(rows)
