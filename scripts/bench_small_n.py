"""Training-shape timings at small N: the automatically picked backend against the same pattern through masked
SDPA, forward + backward, interleaved over rounds (the median of rounds is the figure; the machine drifts).

    python scripts/bench_small_n.py                    # N = 64 .. 1024, B = 32, H = 2, D = 32 (the tiny model's)

Prints one line per (mechanism, N): each backend's median time and auto / masked_sdpa. Used to set
registry.SMALL_N_PRIORITY (results/perf/NOTES.md has the figures).
"""

from __future__ import annotations

import argparse

import torch
from torch.utils import benchmark

import attention_impls as ai

PATTERNS = {"sliding_window": {"window": 8},
            "dilated": {"segment_lengths": [16, 32, 64], "dilation_rates": [1, 2, 4]}}


def _time(attn, q, k, v, min_run_time: float) -> float:
    def step():
        out = attn(q, k, v, causal=True)
        out.sum().backward()

    step()  # first call: masks, kernels
    timer = benchmark.Timer(stmt="step()", globals={"step": step})
    return timer.blocked_autorange(min_run_time=min_run_time).median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-run-time", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for mechanism, params in PATTERNS.items():
        names = [n for n in ai.registry.PRIORITY[(mechanism, "cpu")] if n != "masked_sdpa"][:1] + ["masked_sdpa"]
        for seq_len in args.seq_lens:
            shape = (args.batch, seq_len, args.heads, args.head_dim)
            q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))
            attns = {name: ai.build(mechanism, name, **params) for name in names}
            attns["auto"] = ai.build(mechanism, None, **params)
            rounds: dict[str, list[float]] = {name: [] for name in attns}
            for _ in range(args.rounds):
                for name, attn in attns.items():
                    rounds[name].append(_time(attn, q, k, v, args.min_run_time))
            median = {name: sorted(times)[len(times) // 2] for name, times in rounds.items()}
            ratio = median["auto"] / median["masked_sdpa"]
            print(f"{mechanism:15s} N={seq_len:5d} " + "  ".join(f"{n}={t * 1e3:.2f}ms" for n, t in median.items())
                  + f"  auto picked {attns['auto'].backend}: {ratio:.2f}x masked_sdpa", flush=True)


if __name__ == "__main__":
    main()
