"""Sequence-parallel attention benchmark: per-rank latency, peak memory, and bytes sent vs. the spec's prediction.

Launch one process per device with torchrun (see docs/distributed.md):

    torchrun --nproc-per-node 4 scripts/bench_distributed.py \\
        --mechanisms dilated dense --seq-lens 8192 16384 32768 \\
        --segment-lengths 2048 4096 8192 --dilation-rates 1 2 4 --heads 8 --head-dim 64 --causal --backward

Every rank writes its own rows (kind="distributed", one row per point and rank) to its own part file of
results/<experiment>/parts/<run>-rank<r>.parquet; rank 0 consolidates at the end. A point already recorded as ok
by every rank is skipped on rerun (resume). Per point and rank, in order:
  1. optional correctness gate (seq_len <= --check-max-seq-len): every rank builds the same full q, k, v, runs the
     single-process attention, and compares its output shard (max_abs_err; status "wrong" above tolerance);
  2. --warmup untimed calls; one call with the bytes counters reset (bytes_sent_*), compared with
     attention_impls.distributed.predicted_bytes_sent (bytes_match); one call for peak memory;
  3. --repeats samples of --calls-per-sample calls each, every sample started after a barrier (not timed), so all
     ranks time the same collectives. blocked_autorange is not used: it picks the number of calls per rank, and
     ranks that disagree on how many collectives to run deadlock. Median and IQR come from
     torch.utils.benchmark.Measurement over the raw samples.
Any failure is fatal for the run: the failing rank records an "error"/"oom" row and exits non-zero; the others
fail in their next collective with a message naming it (attention_impls.distributed.PeerFailureError), record
that, and exit; torchrun then stops the job. Part files are written atomically, so the store stays readable.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import math
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch.utils import benchmark as torch_benchmark

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import attention_impls  # noqa: E402
from attention_impls.distributed import (  # noqa: E402
    DistributedDenseAttention,
    DistributedDilatedAttention,
    PeerFailureError,
    guarded_collective,
    predicted_bytes_sent,
    shard_lengths,
)
from harness.environment import fingerprint  # noqa: E402
from harness.store import ResultsStore, config_hash, default_job_id  # noqa: E402

DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Max |distributed - single process| with unit-variance inputs: the two differ only in summation order.
CHECK_TOLERANCE = {"float64": 1e-10, "float32": 1e-4, "float16": 3e-2, "bfloat16": 3e-2}
TIMING_METHOD = "barrier, then perf_counter around calls_per_sample calls (device synchronised), per rank"
CPU_MEMORY_METHOD = "cpu: VmHWM - VmRSS before the call (malloc_trim, clear_refs=5 resets the high-water mark)"
CUDA_MEMORY_METHOD = "cuda: max_memory_allocated - memory_allocated before the call (peak stats reset)"
NOISY_IQR_FRACTION = 0.1
KIND = "distributed"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--mechanisms", nargs="+", default=["dilated", "dense"], choices=["dilated", "dense"])
    parser.add_argument("--seq-lens", nargs="+", type=int, required=True, help="total (global) sequence lengths")
    parser.add_argument("--segment-lengths", nargs="+", type=int, default=[2048, 4096, 8192, 16384, 32768])
    parser.add_argument("--dilation-rates", nargs="+", type=int, default=[1, 2, 4, 6, 12])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--backward", action="store_true", help="time forward + backward (default: forward only)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (each rank uses cuda:LOCAL_RANK)")
    parser.add_argument("--dist-backend", default="auto", help="auto (nccl on cuda, gloo on cpu), gloo or nccl")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per rank (default: cores / ranks "
                        "on this node, on CPU)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10, help="timed samples per point")
    parser.add_argument("--calls-per-sample", type=int, default=1)
    parser.add_argument("--check-max-seq-len", type=int, default=4096,
                        help="correctness gate against the single-process attention up to this seq_len (0: off)")
    parser.add_argument("--timeout-s", type=float, default=300.0,
                        help="process-group timeout: the longest any rank waits in one collective")
    parser.add_argument("--results", default="results", help="results store root")
    parser.add_argument("--experiment", default="distributed")
    parser.add_argument("--job-id", default=None, help="part-file prefix shared by the ranks (default: from rank 0)")
    parser.add_argument("--no-resume", action="store_true", help="measure points already recorded too")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    _validate(parser, args)
    return args


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every bad value fails here, on every rank, before any process group exists."""
    for name in ("batch", "heads", "head_dim", "repeats", "calls_per_sample"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    for name in ("warmup", "check_max_seq_len"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 0")
    if args.timeout_s <= 0:
        parser.error(f"--timeout-s={args.timeout_s} must be > 0")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads={args.threads} must be >= 1")
    if args.device not in ("auto", "cpu", "cuda"):
        parser.error(f"--device={args.device!r} must be auto, cpu or cuda")
    if args.dist_backend not in ("auto", "gloo", "nccl"):
        parser.error(f"--dist-backend={args.dist_backend!r} must be auto, gloo or nccl")
    if "dilated" in args.mechanisms:
        try:
            attention_impls.make_params("dilated", segment_lengths=args.segment_lengths,
                                        dilation_rates=args.dilation_rates)
        except (TypeError, ValueError) as error:
            parser.error(str(error))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    for seq_len in args.seq_lens:
        if seq_len < world_size:
            parser.error(f"--seq-lens contains {seq_len}, shorter than the {world_size} ranks (each needs >= 1)")


# ---- process group ---------------------------------------------------------------------------------------------

def init_distributed(args: argparse.Namespace) -> tuple[torch.device, str]:
    missing = [name for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
               if name not in os.environ]
    if missing:
        raise SystemExit(f"environment lacks {missing}: launch with torchrun, e.g. "
                         f"torchrun --nproc-per-node 2 {sys.argv[0]} --seq-lens 4096")
    local_rank = int(os.environ["LOCAL_RANK"])
    device_type = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda, but torch.cuda.is_available() is False on this node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // local_world))
    if device_type == "cuda" and args.threads:
        torch.set_num_threads(args.threads)
    backend = args.dist_backend if args.dist_backend != "auto" else ("nccl" if device_type == "cuda" else "gloo")
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=args.timeout_s),
                            device_id=device if backend == "nccl" else None)
    return device, backend


def _broadcast(value: Any) -> Any:
    """Rank 0's value on every rank (decisions that change which collectives run must agree)."""
    box = [value]
    guarded_collective("broadcast", lambda: dist.broadcast_object_list(box, src=0))
    return box[0]


# ---- measuring ---------------------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise OSError(f"{field_name} not in /proc/self/status")


def peak_memory_bytes(call: Callable[[], Any], device: torch.device) -> tuple[float, str]:
    """Peak memory of one call above what was allocated before it."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        call()
        _sync(device)
        return float(torch.cuda.max_memory_allocated(device) - baseline), CUDA_MEMORY_METHOD
    try:
        gc.collect()
        try:  # hand freed heap back to the OS, so this call's peak counts its own allocations
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
        baseline_kib = _proc_status_kib("VmRSS")
    except OSError as error:
        call()  # every rank must still run the call: the others wait for its collectives
        return math.nan, f"not measured: cannot reset the RSS high-water mark ({error})"
    call()
    return float(max(_proc_status_kib("VmHWM") - baseline_kib, 0) * 1024), CPU_MEMORY_METHOD


def time_samples(call: Callable[[], Any], device: torch.device, repeats: int, calls_per_sample: int,
                 label: str) -> dict[str, Any]:
    raw_times = []
    for _ in range(repeats):
        guarded_collective("barrier", dist.barrier)
        _sync(device)
        start = time.perf_counter()
        for _ in range(calls_per_sample):
            call()
        _sync(device)
        raw_times.append(time.perf_counter() - start)
    measurement = torch_benchmark.Measurement(
        number_per_run=calls_per_sample, raw_times=raw_times,
        task_spec=torch_benchmark.TaskSpec(stmt="attn(q, k, v)", setup="", label=label,
                                           num_threads=torch.get_num_threads()),
    )
    times = measurement.times
    return {
        "latency_median_s": measurement.median,
        "latency_iqr_s": measurement.iqr,
        "latency_min_s": min(times),
        "latency_mean_s": measurement.mean,
        "latency_count": len(times),
        "calls_per_sample": calls_per_sample,
        "latency_times_s": times,
        "noisy": bool(measurement.iqr > NOISY_IQR_FRACTION * measurement.median),
        "timing_method": TIMING_METHOD,
    }


class PointRunner:
    def __init__(self, args: argparse.Namespace, device: torch.device, dist_backend: str) -> None:
        self.args = args
        self.device = device
        self.dist_backend = dist_backend
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.dtype = DTYPES[args.dtype]
        run_id = _broadcast(args.job_id or default_job_id())
        self.store = ResultsStore(args.results, args.experiment, job_id=f"{run_id}-rank{self.rank:04d}")
        self.store.check_writable()
        self.env = fingerprint(str(device))

    def identity(self, mechanism: str, seq_len: int) -> dict[str, Any]:
        """What makes two rows the same point (ranks share it; the `rank` column tells them apart)."""
        params = ({"segment_lengths": self.args.segment_lengths, "dilation_rates": self.args.dilation_rates}
                  if mechanism == "dilated" else {})
        return {"kind": KIND, "mechanism": mechanism, "params": params, "seq_len": seq_len,
                "world_size": self.world_size, "batch": self.args.batch, "heads": self.args.heads,
                "head_dim": self.args.head_dim, "dtype": self.args.dtype, "causal": self.args.causal,
                "pass": "forward_backward" if self.args.backward else "forward", "device": self.device.type,
                "dist_backend": self.dist_backend, "shard_lengths": shard_lengths(seq_len, self.world_size)}

    def completed_points(self) -> set[str]:
        """config_hash of points every rank recorded as ok, read once by rank 0 before this run writes anything
        (a part file being replaced while it is read can fail to parse) and shared with every rank."""
        done: set[str] = set()
        if self.rank == 0 and not self.args.no_resume:
            frame = self.store.read()
            if not frame.empty and "rank" in frame:
                ok = frame[frame["status"] == "ok"]
                ranks = ok.groupby("config_hash")["rank"].nunique()
                done = set(ranks[ranks >= self.world_size].index)
        return _broadcast(done)

    def run(self) -> int:
        failures = 0
        completed = self.completed_points()
        for mechanism in self.args.mechanisms:
            for seq_len in self.args.seq_lens:
                identity = self.identity(mechanism, seq_len)
                point_hash = config_hash(identity)
                if point_hash in completed:
                    if self.rank == 0:
                        print(f"skip {mechanism} N={seq_len}: already recorded by every rank", flush=True)
                    continue
                row = self.measure(mechanism, seq_len, identity, point_hash)
                failures += row["status"] != "ok"
                if self.rank == 0:
                    print(f"{mechanism} N={seq_len} P={self.world_size}: {row['status']} "
                          f"median {row.get('latency_median_s', math.nan):.4g} s, "
                          f"sent {row.get('bytes_sent_forward')} B fwd (predicted "
                          f"{row.get('predicted_bytes_sent_forward')}) {row.get('reason', '')}", flush=True)
        guarded_collective("barrier", dist.barrier)
        if self.rank == 0:
            self.store.consolidate()
        return failures

    def measure(self, mechanism: str, seq_len: int, identity: dict[str, Any], point_hash: str) -> dict[str, Any]:
        args, rank = self.args, self.rank
        lengths = identity["shard_lengths"]
        start = sum(lengths[:rank])
        row: dict[str, Any] = {
            **{k: v for k, v in identity.items() if k not in ("params", "shard_lengths")},
            "params": json.dumps(identity["params"], sort_keys=True), "shard_lengths": lengths,
            "backend": "sequence_parallel", "rank": rank, "local_seq_len": lengths[rank], "shard_start": start,
            "local_rank": int(os.environ.get("LOCAL_RANK", "0")), "config_hash": point_hash,
            "status": "ok", "reason": "", **self.env,
        }
        try:
            row.update(self._measure(mechanism, seq_len, lengths, start, row))
        except torch.OutOfMemoryError as error:
            self._record_fatal(row, "oom", f"rank {rank}: {str(error).splitlines()[0]}")
            raise
        except PeerFailureError as error:
            self._record_fatal(row, "error", str(error))
            raise
        except Exception as error:
            self._record_fatal(row, "error", f"rank {rank}: {type(error).__name__}: {error}")
            raise
        except BaseException as error:  # SIGTERM (see main), Ctrl-C
            self._record_fatal(row, "error", f"rank {rank}: interrupted ({type(error).__name__}: {error})")
            raise
        self.store.append(row)
        return row

    def _record_fatal(self, row: dict[str, Any], status: str, reason: str) -> None:
        row.update(status=status, reason=reason)
        self.store.append(row)
        print(f"rank {self.rank}: {status}: {reason}", file=sys.stderr, flush=True)

    def _attention(self, mechanism: str):
        if mechanism == "dilated":
            return DistributedDilatedAttention(self.args.segment_lengths, self.args.dilation_rates)
        return DistributedDenseAttention()

    def _inputs(self, seq_len: int, start: int, length: int, check: bool) -> list[torch.Tensor]:
        args = self.args
        if check:  # the same full tensors on every rank, so each can compare its shard with one process
            g = torch.Generator().manual_seed(args.seed)
            full = [torch.randn(args.batch, seq_len, args.heads, args.head_dim, generator=g) for _ in range(3)]
            return [t[:, start : start + length].to(self.device, self.dtype).contiguous() for t in full]
        g = torch.Generator(device=self.device).manual_seed(args.seed * 1_000_003 + self.rank)
        return [torch.randn(args.batch, length, args.heads, args.head_dim, generator=g, device=self.device,
                            dtype=self.dtype) for _ in range(3)]

    def _check(self, mechanism: str, seq_len: int, start: int, out: torch.Tensor) -> tuple[float, str]:
        """Max |this rank's output - the single-process attention's matching slice|."""
        args = self.args
        g = torch.Generator().manual_seed(args.seed)
        full = [torch.randn(args.batch, seq_len, args.heads, args.head_dim, generator=g).to(self.device, self.dtype)
                for _ in range(3)]
        params = ({"segment_lengths": args.segment_lengths, "dilation_rates": args.dilation_rates}
                  if mechanism == "dilated" else {})
        single = attention_impls.build(mechanism, backend="gather" if mechanism == "dilated" else "math", **params)
        with torch.no_grad():
            expected = single(*full, causal=args.causal)[:, start : start + out.shape[1]]
        error = float((out.double() - expected.double()).abs().max())
        return error, f"single-process {mechanism}/{single.backend}"

    def _measure(self, mechanism: str, seq_len: int, lengths: list[int], start: int,
                 row: dict[str, Any]) -> dict[str, Any]:
        args = self.args
        attn = self._attention(mechanism)
        check = 0 < seq_len <= args.check_max_seq_len
        q, k, v = self._inputs(seq_len, start, lengths[self.rank], check)
        grad_out = torch.randn_like(q) if args.backward else None
        if args.backward:
            q, k, v = (t.requires_grad_() for t in (q, k, v))

        def call() -> None:
            out = attn(q, k, v, causal=args.causal, shard_lengths=lengths)
            if grad_out is not None:
                torch.autograd.backward(out, grad_out)
                q.grad = k.grad = v.grad = None

        columns: dict[str, Any] = {}
        if check:
            with torch.no_grad():
                out = attn(q, k, v, causal=args.causal, shard_lengths=lengths)
            error, against = self._check(mechanism, seq_len, start, out)
            columns.update(max_abs_err=error, check_against=against)
            if not error <= CHECK_TOLERANCE[args.dtype]:
                columns.update(status="wrong", reason=f"rank {self.rank}: output differs from the {against} by "
                                                      f"{error:.3g} > {CHECK_TOLERANCE[args.dtype]:g}")
        for _ in range(args.warmup):
            call()
        attn.reset_comm_stats()
        call()
        comm = attn.comm
        spec = attention_impls.make_params(mechanism, **json.loads(row["params"]))
        predicted = predicted_bytes_sent(spec, rank=self.rank, shard_lengths=lengths, batch=args.batch,
                                         num_heads=args.heads, head_dim=args.head_dim, causal=args.causal,
                                         dtype=self.dtype)
        predicted_backward = predicted.backward if args.backward else 0
        columns.update(
            kernel=attn.kernel_name,
            bytes_sent_forward=comm.forward_bytes_sent, bytes_sent_backward=comm.backward_bytes_sent,
            bytes_received_forward=comm.forward_bytes_received,
            bytes_received_backward=comm.backward_bytes_received,
            predicted_bytes_sent_forward=predicted.forward, predicted_bytes_sent_backward=predicted_backward,
            bytes_match=(comm.forward_bytes_sent, comm.backward_bytes_sent) == (predicted.forward,
                                                                               predicted_backward),
        )
        if not columns["bytes_match"] and columns.get("status") is None:
            columns.update(status="wrong", reason=f"rank {self.rank}: sent {comm.forward_bytes_sent} + "
                                                  f"{comm.backward_bytes_sent} B, predicted {predicted.forward} + "
                                                  f"{predicted_backward} B")
        columns["peak_mem_bytes"], columns["mem_method"] = peak_memory_bytes(call, self.device)
        timing = time_samples(call, self.device, args.repeats, args.calls_per_sample,
                              label=f"{mechanism} N={seq_len} P={self.world_size} rank {self.rank}")
        columns.update(timing)
        flops = attention_impls.useful_flops(spec, args.batch, seq_len, args.heads, args.head_dim, args.causal,
                                             backward=args.backward)
        columns.update(useful_flops=flops, tokens_per_s=args.batch * seq_len / timing["latency_median_s"],
                       flops_per_s=flops / timing["latency_median_s"])
        return columns


def _terminated(signum: int, frame: Any) -> None:
    # torchrun sends SIGTERM to every rank when one fails; record the interrupted point before going.
    raise SystemExit(f"terminated by signal {signum} (torchrun stops all ranks when one fails: its "
                     f"'Root Cause' names that rank)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    device, backend = init_distributed(args)
    try:
        failures = PointRunner(args, device, backend).run()
    except BaseException:
        # Exit without tearing the group down: a peer may be gone, and destroy_process_group could wait on it.
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    dist.destroy_process_group()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
