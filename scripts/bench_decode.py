"""Decode latency against the cache's length: one query (KV-cache decoding) against N cached keys.

    python scripts/bench_decode.py                    # N = 4096, 16384, 65536; B=1, H=8, D=64, float32, 2 threads
    python scripts/bench_decode.py --seq-lens 1024 4096 --rounds 5

Each mechanism decodes through attention_impls (backend=None, query_offset=N-1, causal), which reads only the keys
its pattern lets the query see (Mechanism.key_range; dilated: exactly its visible keys, Mechanism.visible_keys),
next to torch's SDPA over the whole cache. The calls of one N are timed in interleaved rounds (A B C A B C ...)
and each ratio to SDPA is taken within a round; the table shows the median over rounds with the range.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attention_impls as ai  # noqa: E402
from harness.bench.measure import time_call  # noqa: E402

PATTERNS = {
    "sliding_window (512)": ("sliding_window", {"window": 512}),
    "dilated (paper)": ("dilated", {"segment_lengths": [2048, 4096, 8192, 16384, 32768],
                                    "dilation_rates": [1, 2, 4, 6, 12]}),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-run-time-s", type=float, default=0.3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    heads, head_dim = 8, 64
    print(f"decode: one query against N cached keys, B=1, H={heads}, D={head_dim}, float32, {args.threads} threads; "
          f"median of {args.rounds} interleaved rounds (range)")
    print(f"{'N':>7} | {'call':<22} | {'backend':<12} | {'keys seen':>9} | {'ms':>8} | over SDPA's full-cache decode")
    for seq_len in args.seq_lens:
        generator = torch.Generator().manual_seed(0)
        q = torch.randn(1, 1, heads, head_dim, generator=generator)
        k, v = (torch.randn(1, seq_len, heads, head_dim, generator=generator) for _ in range(2))
        calls = {"dense SDPA, full cache": (lambda: F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)), "sdpa", seq_len)}
        for label, (mechanism, params) in PATTERNS.items():
            attn = ai.build(mechanism, **params)
            spec = attn.params
            count = ai.mechanisms.get_mechanism(mechanism).multiplicity(spec, seq_len, heads, True)(
                torch.tensor(seq_len - 1), torch.arange(seq_len)[None, :], torch.arange(heads)[:, None])
            seen = int((count > 0).sum()) // heads  # visible keys per head, on average
            calls[label] = (lambda attn=attn: attn(q, k, v, causal=True, query_offset=seq_len - 1), None, seen)
        seconds: dict[str, list[float]] = {label: [] for label in calls}
        with torch.inference_mode():
            for call, _, _ in calls.values():
                call()  # warm-up; backend=None picks here
            for _ in range(args.rounds):
                for label, (call, _, _) in calls.items():
                    seconds[label].append(time_call(call, args.min_run_time_s, min_repeats=5).median_s)
        baseline = seconds["dense SDPA, full cache"]
        for label, (call, backend, seen) in calls.items():
            ratios = sorted(t / b for t, b in zip(seconds[label], baseline))
            if backend is None:
                backend = next(a for a in [call.__defaults__[0]]).backend
            print(f"{seq_len:>7} | {label:<22} | {backend:<12} | {seen:>9} | "
                  f"{statistics.median(seconds[label]) * 1e3:>8.3f} | {statistics.median(ratios):.3f} "
                  f"({ratios[0]:.3f}-{ratios[-1]:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
