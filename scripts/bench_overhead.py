"""How much does the runner's measurement add to what it measures? A benchmark, not a test.

Times one SDPA call (1 x 1024 x 8 x 64, float32, CPU) two ways, in this process, alternating:
  bare:   a plain loop, `for _ in range(n): sdpa(q, k, v)`, timed with one perf_counter pair per block;
  runner: harness.bench.measure.time_call, the function the runner uses (torch.utils.benchmark.Timer
          blocked_autorange around the same call, through the closure the runner builds).
and reports overhead = runner median / bare median - 1, over several rounds, against the 3 % target.

    .venv/bin/python scripts/bench_overhead.py [--seq-len 1024] [--rounds 5] [--min-run-time 1.0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from harness.bench.measure import time_call

TARGET = 0.03


def bare_loop(call, min_run_time_s: float, calls_per_block: int) -> list[float]:
    """Per-call seconds from blocks of `calls_per_block` calls, until min_run_time_s has been spent."""
    samples, spent = [], 0.0
    while spent < min_run_time_s:
        start = time.perf_counter()
        for _ in range(calls_per_block):
            call()
        elapsed = time.perf_counter() - start
        samples.append(elapsed / calls_per_block)
        spent += elapsed
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-run-time", type=float, default=1.0)
    args = parser.parse_args()
    if args.rounds < 1 or args.seq_len < 1 or args.min_run_time <= 0:
        parser.error("--rounds and --seq-len must be >= 1 and --min-run-time > 0")

    # (batch, heads, seq, head_dim): SDPA's own layout, so the call is nothing but the kernel.
    q, k, v = (torch.randn(1, args.heads, args.seq_len, args.head_dim) for _ in range(3))

    def call() -> None:
        F.scaled_dot_product_attention(q, k, v)

    with torch.inference_mode():
        for _ in range(5):
            call()
        probe = time_call(call, 0.2, 3)
        block = probe.calls_per_sample
        bare_medians, runner_medians = [], []
        for _ in range(args.rounds):
            bare_medians.append(statistics.median(bare_loop(call, args.min_run_time, block)))
            runner_medians.append(time_call(call, args.min_run_time, 5).median_s)
    bare, runner = statistics.median(bare_medians), statistics.median(runner_medians)
    overhead = runner / bare - 1.0
    print(f"SDPA (1, {args.heads}, {args.seq_len}, {args.head_dim}) float32, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds of {args.min_run_time:g} s, {block} calls per block")
    print(f"  bare loop median   {bare * 1e6:10.1f} us   (rounds: {', '.join(f'{m * 1e6:.1f}' for m in bare_medians)})")
    print(f"  runner median      {runner * 1e6:10.1f} us   (rounds: {', '.join(f'{m * 1e6:.1f}' for m in runner_medians)})")
    print(f"  runner overhead    {overhead * 100:+10.2f} %    (target: under {TARGET * 100:.0f} %)")
    return 0 if overhead < TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
