"""What runs inside the worker for one point: correctness gate, first call, memory, then timing.

Everything here is plain functions of a `Point`, so the worker process and `isolation=inline` run the same code.
Order per point, and why:
  1. the correctness gate at a small shape (cached per variant, dtype, causal, pass): a wrong kernel is not timed;
  2. the first call at the real shape, timed alone: for compiled backends this is the compile (+ autotune) time,
     reported as compile_s and never mixed into the latency samples; its output is checked for NaN/Inf;
  3. `warmup` more untimed calls;
  4. one call for peak memory above the inputs (its own call, so the timing loop carries no instrumentation);
  5. torch.utils.benchmark.Timer.blocked_autorange until `min_run_time_s`, topped up to `min_repeats` blocks.
`time_point` repeats steps 3 and 5 alone: the runner's later rounds of a point (harness/bench/sweep.py times
the variants of one N in interleaved rounds, A B C A B C, so each ratio compares moments close together).
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils import benchmark as torch_benchmark

import attention_impls

TIMING_METHOD = "torch.utils.benchmark.Timer.blocked_autorange"
CPU_MEMORY_METHOD = "cpu: VmHWM - VmRSS after inputs (malloc_trim, clear_refs=5 resets the high-water mark)"
CUDA_MEMORY_METHOD = "cuda: max_memory_allocated - memory_allocated after inputs (peak stats reset)"
NOISY_IQR_FRACTION = 0.1  # torch.utils.benchmark warns above this IQR / median

DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# decode: one query at position N - 1 against N cached keys (a KV-cache decoding step), forward only
PASSES = ("forward", "forward_backward", "decode")


@dataclass
class Point:
    """One measurement: a variant at one shape, dtype, causal mode and pass, and how to measure it."""

    variant: str
    mechanism: str
    backend: str | None  # as requested; None = picked automatically
    params: dict[str, Any]
    batch: int
    seq_len: int
    heads: int
    head_dim: int
    dtype: str
    causal: bool
    pass_name: str  # "forward" | "forward_backward" | "decode" (the row's `pass` column)
    device: str
    seed: int = 0
    warmup: int = 2
    min_run_time_s: float = 0.2
    min_repeats: int = 5
    threads: int | None = None
    gate: dict[str, Any] = field(default_factory=dict)  # CorrectnessConfig as a dict; {} = no gate
    fault_hook: str | None = None

    @property
    def backward(self) -> bool:
        return self.pass_name == "forward_backward"

    def call_options(self, seq_len: int) -> dict[str, Any]:
        """The attention call's arguments beyond q, k, v: causal, and for a decoding step the query's position."""
        options: dict[str, Any] = {"causal": self.causal}
        if self.pass_name == "decode":
            options["query_offset"] = seq_len - 1
        return options

    def identity(self) -> dict[str, Any]:
        """What makes two points the same measurement (hashed into config_hash for resume)."""
        identity = asdict(self)
        identity.pop("fault_hook")  # a test hook does not change what is being measured
        return {"kind": "speed", **identity}


class Outcome(Exception):
    """A point that ended early with a status other than ok (wrong, nan, unsupported)."""

    def __init__(self, status: str, reason: str, **columns: Any) -> None:
        super().__init__(reason)
        self.status, self.reason, self.columns = status, reason, columns


def classify_exception(error: BaseException) -> tuple[str, str]:
    """(status, reason) for an exception raised while measuring: out-of-memory, or an error."""
    text = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    message = str(error).lower()
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(error, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)
    ):
        return "oom", text
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f" (at {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno})" if tb is not None else ""
    return "error", text + where


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _inputs(point: Point, batch: int, seq_len: int, device: torch.device, seed: int):
    """q, k, v (batch, seq, heads, head_dim) and grad_out, drawn in float32 then cast (same values per dtype)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, seq_len, point.heads, point.head_dim)
    dtype = DTYPES[point.dtype]
    q, k, v, grad_out = (torch.randn(shape, generator=generator).to(device=device, dtype=dtype) for _ in range(4))
    if point.pass_name == "decode":  # the last query only, against every key: one decoding step
        q, grad_out = q[:, -1:].contiguous(), grad_out[:, -1:].contiguous()
    if point.backward:
        for tensor in (q, k, v):
            tensor.requires_grad_(True)
    return q, k, v, grad_out


def _load_hook(path: str) -> Callable[[Point, Any], Any]:
    module_name, _, function_name = path.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


def build_attention(point: Point):
    backend = point.backend
    if backend is None:  # the backend this point's own shape gets: the gate, at its smaller shape, checks that one
        decode = point.pass_name == "decode"
        backend = attention_impls.build(point.mechanism, None, **point.params).resolve(
            torch.device(point.device), DTYPES[point.dtype], point.causal, point.backward, point.head_dim,
            point.seq_len, features=frozenset({"decode"}) if decode else frozenset(),
            batch_heads=point.batch * point.heads, query_len=1 if decode else point.seq_len)
    attn = attention_impls.build(point.mechanism, backend, **point.params)
    if point.fault_hook:
        attn = _load_hook(point.fault_hook)(point, attn)
    return attn


def _run_once(attn, q, k, v, grad_out, point: Point) -> list[torch.Tensor]:
    """Output, and with backward the gradients of (q, k, v) for grad_out: what a gate or NaN check inspects."""
    options = point.call_options(k.shape[1])
    if not point.backward:
        with torch.inference_mode():
            return [attn(q, k, v, **options)]
    out = attn(q, k, v, **options)
    return [out.detach(), *torch.autograd.grad(out, (q, k, v), grad_out)]


def _nonfinite(tensors: list[torch.Tensor]) -> str | None:
    names = ["output", "dq", "dk", "dv"]
    bad = [names[i] for i, t in enumerate(tensors) if not bool(torch.isfinite(t).all())]
    return ", ".join(bad) if bad else None


_gate_cache: dict[str, dict[str, Any]] = {}


def correctness_gate(point: Point, attn, device: torch.device) -> dict[str, Any]:
    """Compare with the float64 reference at the gate shape; raise Outcome(wrong | nan) when it fails."""
    if not point.gate.get("enabled", False):
        return {"max_abs_err": math.nan, "max_abs_grad_err": math.nan, "gate_seq_len": 0}
    key = repr((point.variant, point.mechanism, point.backend, sorted(point.params.items()), point.dtype,
                point.causal, point.pass_name, point.heads, point.head_dim, point.device, point.gate, point.fault_hook))
    if key not in _gate_cache:
        _gate_cache[key] = _gate(point, attn, device)
    result = _gate_cache[key]
    if result["status"] != "ok":
        raise Outcome(result["status"], result["reason"], **result["columns"])
    return result["columns"]


def _gate(point: Point, attn, device: torch.device) -> dict[str, Any]:
    seq_len, batch = point.gate["seq_len"], point.gate["batch"]
    q, k, v, grad_out = _inputs(point, batch, seq_len, device, seed=point.seed + 1)
    got = _run_once(attn, q, k, v, grad_out, point)
    reference = attention_impls.build(point.mechanism, "reference", **point.params)
    q64, k64, v64 = (t.detach().double().requires_grad_(point.backward) for t in (q, k, v))
    expected_out = reference(q64, k64, v64, **point.call_options(seq_len))
    expected = [expected_out.detach()]
    if point.backward:
        expected += list(torch.autograd.grad(expected_out, (q64, k64, v64), grad_out.double()))
    errors = [(g.double() - e).abs().max().item() for g, e in zip(got, expected)]
    columns = {"max_abs_err": errors[0], "max_abs_grad_err": max(errors[1:]) if point.backward else math.nan,
               "gate_seq_len": seq_len}
    shape = f"(batch={batch}, seq_len={seq_len}, heads={point.heads}, head_dim={point.head_dim})"
    if (bad := _nonfinite(got)) is not None:
        return {"status": "nan", "reason": f"NaN/Inf in {bad} at the correctness shape {shape}", "columns": columns}
    out_atol, grad_atol = point.gate["out_atol"][point.dtype], point.gate["grad_atol"][point.dtype]
    if errors[0] > out_atol:
        return {"status": "wrong", "columns": columns,
                "reason": f"output differs from the float64 reference by {errors[0]:.3g} > atol {out_atol:g} "
                          f"at {shape}"}
    if point.backward and max(errors[1:]) > grad_atol:
        worst = ["dq", "dk", "dv"][errors[1:].index(max(errors[1:]))]
        return {"status": "wrong", "columns": columns,
                "reason": f"{worst} differs from the float64 reference by {max(errors[1:]):.3g} > atol "
                          f"{grad_atol:g} at {shape}"}
    return {"status": "ok", "reason": "", "columns": columns}


# ---- memory -------------------------------------------------------------------------------------------------

def _proc_status_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise OSError(f"{field_name} not in /proc/self/status")


def _release_free_memory() -> None:
    """Hand freed heap pages back to the OS, so the peak RSS of the next call counts its own allocations
    (glibc otherwise keeps freed chunks mapped and a reused worker would under-report)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def cpu_memory_supported() -> str | None:
    """None when the CPU method works here, else why not."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _proc_status_kib("VmHWM")
        return None
    except OSError as error:
        return f"cannot reset the RSS high-water mark: {error}"


def peak_memory_bytes(call: Callable[[], Any], device: torch.device) -> tuple[float, str]:
    """Peak memory of one call above what was allocated before it (inputs included in the baseline).

    The call is always made, measured or not: the ranks of a distributed point wait for its collectives."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        call()
        _sync(device)
        return float(torch.cuda.max_memory_allocated(device) - baseline), CUDA_MEMORY_METHOD
    if (why_not := cpu_memory_supported()) is not None:
        call()
        return math.nan, f"not measured: {why_not}"
    _release_free_memory()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    baseline_kib = _proc_status_kib("VmRSS")
    call()
    peak_kib = _proc_status_kib("VmHWM")
    return float(max(peak_kib - baseline_kib, 0) * 1024), CPU_MEMORY_METHOD


# ---- timing -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Timing:
    """One timed measurement: its raw samples (seconds per call, one per timed block), how many calls each block
    timed, and how the samples were taken. Statistics are torch.utils.benchmark.Measurement's, so every job (speed,
    max_seq_len, distributed, the performance targets) reports the same median and IQR of the same kind of sample."""

    samples_s: tuple[float, ...]
    calls_per_sample: int = 1
    method: str = TIMING_METHOD

    @property
    def _measurement(self) -> torch_benchmark.Measurement:
        return torch_benchmark.Measurement(number_per_run=1, raw_times=list(self.samples_s),
                                           task_spec=torch_benchmark.TaskSpec(stmt="", setup=""))

    @property
    def median_s(self) -> float:
        return self._measurement.median

    @property
    def iqr_s(self) -> float:
        return self._measurement.iqr

    @property
    def min_s(self) -> float:
        return min(self.samples_s)

    @property
    def count(self) -> int:
        return len(self.samples_s)

    @property
    def noisy(self) -> bool:
        """torch.utils.benchmark's own warning threshold: IQR above NOISY_IQR_FRACTION of the median."""
        measurement = self._measurement
        return bool(measurement.iqr > NOISY_IQR_FRACTION * measurement.median)

    def columns(self) -> dict[str, Any]:
        """The latency columns of a result row."""
        measurement = self._measurement
        return {
            "latency_median_s": measurement.median,
            "latency_iqr_s": measurement.iqr,
            "latency_min_s": self.min_s,
            "latency_mean_s": measurement.mean,
            "latency_count": self.count,
            "calls_per_sample": self.calls_per_sample,
            "latency_times_s": list(self.samples_s),
            "noisy": bool(measurement.iqr > NOISY_IQR_FRACTION * measurement.median),
            "timing_method": self.method,
        }


def time_call(call: Callable[[], Any], min_run_time_s: float, min_repeats: int, label: str = "") -> Timing:
    """blocked_autorange until min_run_time_s, then more blocks of the same size until min_repeats blocks.

    Timer synchronises CUDA around each block; the block size is chosen so the timer's own overhead is < 0.1 %.
    """
    timer = torch_benchmark.Timer(stmt="call()", globals={"call": call}, label=label,
                                  num_threads=torch.get_num_threads())
    measurement = timer.blocked_autorange(min_run_time=min_run_time_s)
    raw_times = list(measurement.raw_times)
    while len(raw_times) < min_repeats:
        raw_times.extend(timer.timeit(measurement.number_per_run).raw_times)
    measurement = torch_benchmark.Measurement(number_per_run=measurement.number_per_run, raw_times=raw_times,
                                              task_spec=measurement.task_spec)
    return Timing(tuple(measurement.times), measurement.number_per_run)


def latency_columns(times: list[float], calls_per_sample: int) -> dict[str, Any]:
    """The latency columns of a row from its samples (seconds per call; e.g. the pooled samples of its rounds)."""
    return Timing(tuple(times), calls_per_sample).columns()


def measure_point(point: Point) -> dict[str, Any]:
    """Run one point; returns the measured columns with status and reason (never raises for a point's failure)."""
    if point.threads is not None:
        torch.set_num_threads(point.threads)
    device = torch.device(point.device)
    columns: dict[str, Any] = {"threads": torch.get_num_threads()}
    try:
        attn = build_attention(point)
        columns.update(correctness_gate(point, attn, device))
        q, k, v, grad_out = _inputs(point, point.batch, point.seq_len, device, seed=point.seed)

        start = time.perf_counter()
        first = _run_once(attn, q, k, v, grad_out, point)
        _sync(device)
        columns["first_call_s"] = time.perf_counter() - start
        columns["backend"] = getattr(attn, "backend", None) or point.backend  # a fault hook may wrap attn
        backend_cls = attention_impls.registry.REGISTRY[point.mechanism][columns["backend"]]
        columns["compile_s"] = columns["first_call_s"] if backend_cls.needs_compile else 0.0
        if (bad := _nonfinite(first)) is not None:
            raise Outcome("nan", f"NaN/Inf in {bad} at seq_len={point.seq_len}")
        del first

        call = _timed_call(point, attn, q, k, v, grad_out)
        # inference_mode is thread-local state, so it covers the Timer's loop too.
        with torch.inference_mode(not point.backward):
            for _ in range(point.warmup):
                call()
            _sync(device)
            columns["peak_mem_bytes"], columns["mem_method"] = peak_memory_bytes(call, device)
            columns.update(time_call(call, point.min_run_time_s, point.min_repeats, label=point.variant).columns())
        columns.update(status="ok", reason="")
    except Outcome as outcome:
        columns.update(outcome.columns, status=outcome.status, reason=outcome.reason)
    except Exception as error:  # noqa: BLE001 - the point fails alone; status and reason name the exception
        status, reason = classify_exception(error)
        columns.update(status=status, reason=reason)
    return columns


def _timed_call(point: Point, attn, q, k, v, grad_out) -> Callable[[], None]:
    options = point.call_options(k.shape[1])
    if point.backward:
        def call() -> None:
            out = attn(q, k, v, **options)
            torch.autograd.grad(out, (q, k, v), grad_out)
    else:
        def call() -> None:
            attn(q, k, v, **options)
    return call


def time_point(point: Point) -> dict[str, Any]:
    """Another round of a point that measure_point already ran ok: warmup, then timing only (no gate, no first
    call, no memory). Returns the timing columns with status and reason."""
    if point.threads is not None:
        torch.set_num_threads(point.threads)
    device = torch.device(point.device)
    try:
        attn = build_attention(point)
        q, k, v, grad_out = _inputs(point, point.batch, point.seq_len, device, seed=point.seed)
        call = _timed_call(point, attn, q, k, v, grad_out)
        with torch.inference_mode(not point.backward):
            for _ in range(max(1, point.warmup)):  # inputs and caches are new in this call
                call()
            _sync(device)
            return {**time_call(call, point.min_run_time_s, point.min_repeats, label=point.variant).columns(),
                    "status": "ok", "reason": ""}
    except Exception as error:  # noqa: BLE001 - a failing round fails the point, with its reason
        status, reason = classify_exception(error)
        return {"status": status, "reason": reason}


def matmul_ceiling(device: str, dtype: str, size: int, min_run_time_s: float,
                   threads: int | None = None) -> dict[str, Any]:
    """Achieved FLOP/s of a (size x size) @ (size x size) GEMM: this machine's matrix-multiply ceiling."""
    if threads is not None:
        torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device=device, dtype=DTYPES[dtype]) for _ in range(2))
    timing = time_call(lambda: torch.mm(a, b), min_run_time_s, min_repeats=3, label="matmul ceiling")
    # A ceiling is the best the machine did, so the fastest sample, not the median (which load inflates).
    return {"matmul_peak_flops_per_s": 2.0 * size**3 / timing.min_s,
            "matmul_method": f"torch.mm {size}x{size} {dtype}, fastest of {timing.count} "
                             f"{TIMING_METHOD} samples, {torch.get_num_threads()} threads"}
