"""The performance targets: each a ratio of two quantities measured within one run, against a limit.

A job of the runner (`jobs: [targets]`, `shootout experiment=perf_targets`) and a script
(`python scripts/perf_targets.py`, the same code). Each target is stored as a `kind=perf_target` row with its
measured value, limit, comparison, verdict and, where it was taken over interleaved rounds, the spread of its
per-round ratios. Timing, memory and the matmul ceiling are the runner's own (harness.bench.measure), so the
numbers mean what they mean in a shootout. results/perf/NOTES.md holds what was tried and measured.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import attention_impls as ai
from attention_impls.dilated_merge import plan
from attention_impls.kernels import default_scale
from attention_impls.ops.dilated_gather import branch_kernel
from attention_impls.mechanisms import get_mechanism
from attention_impls.registry import PRIORITY
from ..environment import fingerprint
from ..store import ResultsStore, config_hash
from .measure import Timing, matmul_ceiling, peak_memory_bytes, time_call

DILATED = {"segment_lengths": [2048, 4096, 8192], "dilation_rates": [1, 2, 4]}
PAPER = {"segment_lengths": [2048, 4096, 8192, 16384, 32768], "dilation_rates": [1, 2, 4, 6, 12]}
SMOKE_DILATED = {"segment_lengths": [64, 128, 256], "dilation_rates": [1, 2, 4]}
ALL_TARGETS = ("dilated_gather", "dilated_scaling", "sliding_window", "auto_pick", "dilated_vs_flash")
DEFAULT_TARGETS = ["dilated_gather", "dilated_scaling", "sliding_window", "auto_pick"]  # every device; a GPU adds one
ROUNDS = 3  # interleaved measurement rounds per ratio; the ratio reported is the median of the rounds' ratios


@dataclass
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
    min_run_time_s: float = 2.0
    dilated: dict = None  # type: ignore[assignment]
    paper: dict = None  # type: ignore[assignment]

    def __post_init__(self):
        self.dilated = self.dilated or DILATED
        self.paper = self.paper or PAPER


SMOKE = Sizes(heads=2, head_dim=16, dilated_n=1024, scaling_small_n=512, scaling_large_n=2048, window=32,
              window_n=512, pick_n=512, flash_n=1024, min_run_time_s=0.05, dilated=SMOKE_DILATED, paper=SMOKE_DILATED)


@dataclass
class Rounds:
    """The samples of interleaved measurement rounds, one tuple of quantities per round."""

    samples: list[tuple[float, ...]]

    @property
    def medians(self) -> tuple[float, ...]:
        return tuple(statistics.median(column) for column in zip(*self.samples))

    def column(self, position: int) -> list[float]:
        """One quantity's value in every round, in round order."""
        return [sample[position] for sample in self.samples]


@dataclass
class TargetSettings:
    """What a targets run measures: on which device and dtype, with how many threads, at full or smoke size."""

    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 2
    smoke: bool = False  # tiny shapes: checks that every target runs (the test suite's)
    skip_1m: bool = False  # leave out the 1M-token scaling target (minutes)
    only: tuple[str, ...] = ()  # these targets alone; () = DEFAULT_TARGETS (+ dilated_vs_flash on a GPU / smoke)

    def chosen(self) -> list[str]:
        on_gpu = torch.device(self.device).type == "cuda"
        chosen = list(self.only) or [*DEFAULT_TARGETS, *(["dilated_vs_flash"] if on_gpu or self.smoke else [])]
        return [name for name in chosen if not (self.skip_1m and name == "dilated_scaling")]


class Targets:
    def __init__(self, args: TargetSettings, sizes: Sizes, store: ResultsStore) -> None:
        self.args, self.sizes = args, sizes
        self.device = torch.device(args.device)
        self.dtype = getattr(torch, args.dtype)
        self.store = store
        self.env = fingerprint(args.device)
        self.results: list[dict[str, Any]] = []
        ceiling = matmul_ceiling(args.device, args.dtype, size=2048 if not args.smoke else 256,
                                 min_run_time_s=1.0 if not args.smoke else 0.05)
        self.ceiling = ceiling["matmul_peak_flops_per_s"]
        print(f"matmul ceiling: {self.ceiling / 1e9:.1f} GFLOP/s ({ceiling['matmul_method']})")

    def inputs(self, seq_len: int, requires_grad: bool = False, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        shape = (1, seq_len, self.sizes.heads, self.sizes.head_dim)
        return [torch.randn(shape, generator=generator).to(self.device, self.dtype).requires_grad_(requires_grad)
                for _ in range(4)]

    def time(self, call: Callable[[], Any], grad: bool = False) -> Timing:
        with torch.inference_mode(not grad):
            call()  # warm-up (and compile)
            return time_call(call, self.sizes.min_run_time_s, min_repeats=3)

    def ceiling_now(self) -> float:
        """The matmul ceiling re-measured now: the shared machine's speed drifts between minutes."""
        size = 2048 if not self.args.smoke else 256
        return matmul_ceiling(self.args.device, self.args.dtype, size=size,
                              min_run_time_s=0.5 if not self.args.smoke else 0.05)["matmul_peak_flops_per_s"]

    def rounds(self, measure: Callable[[], tuple[float, ...]], count: int = ROUNDS) -> Rounds:
        """Interleaved rounds of `measure()`: a load change hits every quantity of a round alike, and a ratio of
        two quantities taken in the same round is what the targets compare (as the median over rounds)."""
        return Rounds([measure() for _ in range(count)])

    def record(self, key: str, target: str, measured: float, limit: float, higher_is_better: bool, detail: str,
               issue_target: bool = True, rounds: Sequence[float] | None = None, **columns: Any) -> None:
        """`key`: the target's stable name, `<method>.<measurement>` (the report keeps the newest row per key,
        whatever its `target` label said then). `issue_target=False`: measured against a bar for context, not one
        of the issue's targets. `rounds`: the
        measured ratio in each round (`measured` is their median); its spread says whether a verdict is clear of
        the machine's noise or straddles the limit."""
        def meets(value: float) -> bool:
            return value >= limit if higher_is_better else value <= limit

        passed, sign = meets(measured), ">=" if higher_is_better else "<="
        spread = ""
        if rounds:
            columns.update(round_min=min(rounds), round_max=max(rounds), round_count=len(rounds),
                           rounds_passed=sum(map(meets, rounds)))
            spread = (f"; rounds {min(rounds):.3f}-{max(rounds):.3f}, "
                      f"{columns['rounds_passed']} of {len(rounds)} meet it")
        print(f"{'PASS' if passed else 'FAIL'}  {target}: measured {measured:.3f}, target {sign} {limit}{spread}  "
              f"({detail})")
        self._keep({"status": "ok", "target_key": key, "target": target, "measured": measured, "limit": limit,
                    "comparison": sign, "passed": passed, "issue_target": issue_target, "detail": detail, **columns})

    def record_error(self, name: str, error: Exception) -> None:
        """A target that raised: a row with status=error and the reason, never a lost run."""
        reason = f"{type(error).__name__}: {' '.join(str(error).split())}"
        print(f"ERROR {name}: {reason}")
        self._keep({"status": "error", "reason": reason, "target_key": name, "target": name, "measured": float("nan"),
                    "passed": False, "issue_target": True})

    def _keep(self, columns: dict[str, Any]) -> None:
        row = {"kind": "perf_target", **columns, "device": self.args.device, "dtype": self.args.dtype,
               "smoke": self.args.smoke, "matmul_peak_flops_per_s": self.ceiling, **self.env}
        row["config_hash"] = config_hash({"target": columns["target"], "smoke": self.args.smoke,
                                          "device": self.args.device, "dtype": self.args.dtype,
                                          "run": self.store.job_id})
        self.results.append(row)
        self.store.append(row)

    # -- target 1: the gather backend against its own kernels --------------------------------------------------
    def dilated_gather(self) -> None:
        sizes, n = self.sizes, self.sizes.dilated_n
        attn = ai.build("dilated", "gather", **sizes.dilated)
        q, k, v, grad_out = self.inputs(n)
        kernel = branch_kernel(q)  # the one the backend calls for these inputs
        scale = default_scale(sizes.head_dim, None)
        gathered = [[piece.gather(x) for x in (q, k, v)] for piece in plan(attn.params, n, sizes.heads)]

        def bare() -> None:
            for branch in gathered:
                kernel.forward(*branch, False, scale)

        def forward() -> None:
            attn(q, k, v)

        flops = ai.useful_flops(attn.params, 1, n, sizes.heads, sizes.head_dim, causal=False)

        def one_round() -> tuple[float, ...]:
            t_forward, t_bare = self.time(forward).median_s, self.time(bare).median_s
            ceiling = self.ceiling_now()
            return t_forward / t_bare, flops / t_forward / ceiling, t_forward, t_bare, ceiling, flops / t_bare / ceiling

        forward_rounds = self.rounds(one_round)
        overhead, efficiency, t_forward, t_bare, ceiling, bare_efficiency = forward_rounds.medians
        self.record("dilated_gather.overhead", "dilated gather: time / bare sum of branch kernels", overhead, 1.05,
                    False, f"N={n}, forward {t_forward * 1e3:.1f} ms, bare kernels {t_bare * 1e3:.1f} ms "
                    f"(medians of {ROUNDS} interleaved rounds)", rounds=forward_rounds.column(0), seq_len=n,
                    latency_median_s=t_forward)
        self.record("dilated_gather.efficiency", "dilated gather: useful FLOP/s / matmul ceiling", efficiency, 0.80,
                    True, f"{flops / t_forward / 1e9:.1f} GFLOP/s useful, ceiling {ceiling / 1e9:.1f} GFLOP/s "
                    f"re-measured each round; the bare branch kernels alone: {bare_efficiency:.3f} of the ceiling",
                    rounds=forward_rounds.column(1), seq_len=n, flops_per_s=flops / t_forward)
        # The same overhead seen from inside one call, which load drift cannot tilt: torch.profiler's self time
        # of everything that is not the attention kernel, over the whole call.
        with torch.inference_mode(), torch.profiler.profile() as profile:
            forward()
        events = profile.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        in_kernel = sum(e.self_cpu_time_total for e in events if "scaled_dot_product" in e.key
                        or "flash_attention" in e.key or "efficient_attention" in e.key or e.key == "aten::bmm")
        self.record("dilated_gather.outside_kernel",
                    "dilated gather: share of forward time outside the attention kernel (profiler)",
                    1.0 - in_kernel / total, 0.05, False,
                    f"{(total - in_kernel) / 1e3:.1f} of {total / 1e3:.1f} ms self CPU time outside the kernel",
                    seq_len=n)
        del gathered
        with torch.inference_mode():
            peak, method = peak_memory_bytes(forward, self.device)
        output_bytes = q.numel() * q.element_size()
        self.record("dilated_gather.memory", "dilated gather: peak memory above inputs / output size",
                    peak / output_bytes, 3.0, False,
                    f"{peak / 2**20:.0f} MiB above inputs, output {output_bytes / 2**20:.0f} MiB; {method}",
                    seq_len=n, peak_mem_bytes=peak, mem_method=method)

        q, k, v = (x.detach().requires_grad_() for x in (q, k, v))

        def forward_backward() -> None:
            torch.autograd.grad(attn(q, k, v), (q, k, v), grad_out)

        # The floor under this ratio: the same kernels' own forward+backward over their forward, on the gathered
        # branches, in the same round.
        branches = [[piece.gather(x.detach()) for x in (q, k, v, grad_out)] for piece in
                    plan(attn.params, n, sizes.heads)]

        def bare_kernels(backward: bool) -> Callable[[], None]:
            def run() -> None:
                for branch_q, branch_k, branch_v, branch_grad in branches:
                    out, lse = kernel.forward(branch_q, branch_k, branch_v, False, scale)
                    if backward:
                        kernel.backward(branch_grad, branch_q, branch_k, branch_v, out, lse, False, scale)
            return run

        def both_round() -> tuple[float, ...]:
            t_both = self.time(forward_backward, grad=True).median_s
            t_forward = self.time(forward).median_s
            t_bare_both = self.time(bare_kernels(backward=True)).median_s
            t_bare = self.time(bare_kernels(backward=False)).median_s
            return t_both / t_forward, t_both, t_forward, t_bare_both / t_bare

        both_rounds = self.rounds(both_round)
        ratio, t_both, t_forward, bare_ratio = both_rounds.medians
        del branches
        self.record("dilated_gather.forward_backward", "dilated gather: forward+backward / forward", ratio, 3.5, False,
                    f"fwd+bwd {t_both * 1e3:.1f} ms, fwd {t_forward * 1e3:.1f} ms (medians of {ROUNDS} rounds); "
                    f"the bare branch kernels' own fwd+bwd / fwd: {bare_ratio:.3f} (rounds "
                    f"{min(both_rounds.column(3)):.3f}-{max(both_rounds.column(3)):.3f})",
                    rounds=both_rounds.column(0), seq_len=n)

    # -- target 2: linear scaling of the paper's configuration -------------------------------------------------
    def dilated_scaling(self) -> None:
        sizes = self.sizes
        attn = ai.build("dilated", "gather", **sizes.paper)
        small, large = sizes.scaling_small_n, sizes.scaling_large_n
        # This machine's speed drifts by 10-20 % within minutes, as long as one large call. Each large call is
        # bracketed by timings of the small size just before and after it and compared with their mean, which
        # cancels drift that is linear over the bracket; two brackets in a row, their median reported with their
        # range. (Comparing with the faster of the two small timings was biased high: 1.130 in a run where the
        # bracket mean gave 1.066. Taking time per token in units of a matmul ceiling measured around each run
        # made the two small timings of one run disagree more, 0.918 against 0.950 raw: results/perf/NOTES.md.)
        small_inputs, large_inputs = self.inputs(small)[:3], self.inputs(large)[:3]

        def per_token(n: int, inputs: list[torch.Tensor]) -> float:
            with torch.inference_mode():
                if n == large:  # one call at 1M is minutes: the timer's calibration call, then one timed call
                    timing = time_call(lambda: attn(*inputs), min_run_time_s=0.0, min_repeats=1)
                else:
                    timing = self.time(lambda: attn(*inputs))
            print(f"  dilated paper config N={n}: {timing.median_s:.2f} s, "
                  f"{timing.median_s / n * 1e6:.2f} us/token")
            return timing.median_s / n

        small_times, large_times = [per_token(small, small_inputs)], []
        for _ in range(2):
            large_times.append(per_token(large, large_inputs))
            small_times.append(per_token(small, small_inputs))
        ratios = [at_large / ((before + after) / 2)
                  for at_large, before, after in zip(large_times, small_times, small_times[1:])]
        self.record("dilated_scaling.per_token", f"dilated paper config: time per token at N={large} / at N={small}",
                    statistics.median(ratios), 1.10, False,
                    f"N={large}: {', '.join(f'{t * 1e6:.2f}' for t in large_times)} us/token, each between N={small} "
                    f"at {', '.join(f'{t * 1e6:.2f}' for t in small_times)} us/token; ratio to each bracket's mean",
                    rounds=ratios, seq_len=large)

    # -- target 3: sliding window against dense SDPA ------------------------------------------------------------
    def sliding_window(self) -> None:
        # The issue's target is the causal window; the bidirectional one (left = right = window, the same bar, no
        # target of the issue) shows the backend is as fast for encoders.
        for causal in (True, False):
            self._sliding_window(causal)

    def _sliding_window(self, causal: bool) -> None:
        sizes, n = self.sizes, self.sizes.window_n
        window = ai.build("sliding_window", PRIORITY[("sliding_window", self.device.type)][0], window=sizes.window)
        dense = ai.build("dense", "sdpa")
        for grad in (False, True):
            q, k, v, grad_out = self.inputs(n, requires_grad=grad)

            def run(attn):
                if grad:
                    return lambda: torch.autograd.grad(attn(q, k, v, causal=causal), (q, k, v), grad_out)
                return lambda: attn(q, k, v, causal=causal)

            def one_round() -> tuple[float, ...]:
                rates = []
                for attn in (window, dense):
                    seconds = self.time(run(attn), grad=grad).median_s
                    rates.append(ai.useful_flops(attn.params, 1, n, sizes.heads, sizes.head_dim, causal, grad)
                                 / seconds)
                return rates[0] / rates[1], rates[0], rates[1]

            window_rounds = self.rounds(one_round)
            ratio, window_rate, dense_rate = window_rounds.medians
            label = "forward+backward" if grad else "forward"
            shape = "causal" if causal else f"[{sizes.window}, {sizes.window}] non-causal (not an issue target)"
            key = f"sliding_window.{'causal' if causal else 'bidirectional'}.{label.replace('+', '_')}"
            self.record(key, f"sliding window ({window.backend}) {shape} useful FLOP/s / dense SDPA's, {label}", ratio,
                        0.60, True, f"window {sizes.window} N={n}: {window_rate / 1e9:.1f} vs "
                                    f"{dense_rate / 1e9:.1f} GFLOP/s (medians of {ROUNDS} rounds)",
                        issue_target=causal, rounds=window_rounds.column(0), seq_len=n)

    # -- target 4: backend=None picks the fastest ----------------------------------------------------------------
    def auto_pick(self) -> None:
        sizes, n = self.sizes, self.sizes.pick_n
        sized = {"sliding_window": {"window": sizes.window}, "dilated": sizes.dilated}
        params = {m: sized.get(m, get_mechanism(m).example_params) for m in ai.MECHANISMS}
        q, k, v, _ = self.inputs(n)
        for mechanism in ai.MECHANISMS:
            times = {}
            for info in ai.backends(mechanism):
                cls = ai.registry.REGISTRY[mechanism][info.name]
                if info.name == "reference" or cls.not_supported_reasons(self.device, self.dtype, True, False):
                    continue
                if self.args.smoke and cls.needs_compile:
                    continue  # compiling is seconds per shape: the smoke run only checks the script works
                attn = ai.build(mechanism, info.name, **params[mechanism])
                times[info.name] = self.time(lambda: attn(q, k, v, causal=True)).median_s
            picked = ai.build(mechanism, **params[mechanism])
            with torch.inference_mode():
                picked(q, k, v, causal=True)
            fastest = min(times, key=times.get)
            listing = ", ".join(f"{name} {t * 1e3:.1f} ms" for name, t in sorted(times.items(), key=lambda x: x[1]))
            self.record(f"auto_pick.{mechanism}", f"backend=None for {mechanism}: picked time / fastest time",
                        times[picked.backend] / times[fastest], 1.0 + 0.1, False,
                        f"picked {picked.backend}; causal forward N={n}: {listing}", seq_len=n)

    # -- target 5 (GPU): the dilated backend a user gets against dense flash attention --------------------------
    def dilated_vs_flash(self) -> None:
        """On a GPU an issue target; elsewhere (the smoke run on CPU) a context measurement."""
        sizes, n = self.sizes, self.sizes.flash_n
        dilated = ai.build("dilated", **sizes.dilated)  # backend=None: the pick for this device and dtype
        dense = ai.build("dense", "sdpa")
        q, k, v, _ = self.inputs(n)

        def dense_flash() -> torch.Tensor:
            # torch's flash kernel itself, not whichever SDPA kernel torch would pick for these inputs
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return dense(q, k, v)

        def one_round() -> tuple[float, ...]:
            rates = []
            for attn, call in ((dilated, lambda: dilated(q, k, v)), (dense, dense_flash)):
                seconds = self.time(call).median_s
                rates.append(ai.useful_flops(attn.params, 1, n, sizes.heads, sizes.head_dim, False) / seconds)
            return rates[0] / rates[1], rates[0], rates[1]

        flash_rounds = self.rounds(one_round)
        ratio, dilated_rate, dense_rate = flash_rounds.medians
        self.record("dilated_vs_flash.flops", f"dilated ({dilated.backend}) useful FLOP/s / dense flash attention's, "
                    f"N={n}", ratio, 0.70, True,
                    f"forward, not causal: {dilated_rate / 1e9:.1f} vs {dense_rate / 1e9:.1f} GFLOP/s "
                    f"(medians of {ROUNDS} rounds)", issue_target=self.device.type == "cuda",
                    rounds=flash_rounds.column(0), seq_len=n)


def run_targets(settings: TargetSettings, store: ResultsStore) -> tuple[list[dict[str, Any]], list[str]]:
    """Measure the chosen targets into `store`: (their rows, the names of targets that raised). A target that
    raises becomes a status=error row; the others still run."""
    torch.set_num_threads(settings.threads)
    targets = Targets(settings, SMOKE if settings.smoke else Sizes(), store)
    failed = []
    for name in settings.chosen():
        try:
            getattr(targets, name)()
        except Exception as error:  # noqa: BLE001 - one broken target (a kernel's first run on a new device) must
            failed.append(name)     # not lose the rest
            targets.record_error(name, error)
    return targets.results, failed


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

    section = cfg.targets
    only = tuple(section.only)
    unknown = [name for name in only if name not in ALL_TARGETS]
    if unknown:
        raise ConfigError(f"targets.only={list(only)}: {unknown} not known; choose from: {', '.join(ALL_TARGETS)}")
    if section.dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"targets.dtype={section.dtype!r} must be one of: float32, bfloat16, float16")
    device = str(section.device)
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise ConfigError(f"targets.device={device!r} must be cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"targets.device={device}: this machine has no CUDA device")
    if isinstance(section.threads, bool) or int(section.threads) < 1:
        raise ConfigError(f"targets.threads={section.threads!r} must be an int >= 1")
    if check_only:
        return None
    settings = TargetSettings(device=device, dtype=section.dtype, threads=int(section.threads),
                              smoke=bool(section.smoke), skip_1m=bool(section.skip_1m), only=only)
    rows, failed = run_targets(settings, store)
    print(summary(rows) + (f"; targets that raised (status=error rows): {', '.join(failed)}" if failed else ""))
    return pd.DataFrame(rows)
