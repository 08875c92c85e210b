"""Measure the performance targets, each as a ratio taken within this one run (harness/bench/targets.py).

    python scripts/perf_targets.py                 # the full targets (CPU, float32, 2 threads): ~10-20 min
    python scripts/perf_targets.py --skip-1m       # without the 1M-token run
    python scripts/perf_targets.py --smoke         # tiny shapes: checks the script works (the test suite runs it)
    python scripts/perf_targets.py --device cuda --dtype bfloat16   # the GPU variant, with the GPU-only target

The same job runs under the runner: `shootout experiment=perf_targets` (targets.* settings). Each target prints
measured / target / pass and is stored as a `kind=perf_target` row in results/perf_targets/ (or --results-dir).
"""

from __future__ import annotations

import argparse
import sys

from harness.bench.targets import GROUPS, TargetSettings, run_targets, summary
from harness.store import ResultsStore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes: check that the script works")
    parser.add_argument("--skip-1m", action="store_true", help="skip the 1M-token scaling target")
    parser.add_argument("--only", choices=GROUPS, action="append",
                        help="run only these targets (repeatable); dilated_vs_flash runs by default on a GPU and in "
                             "the smoke run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="per measurement, in the worker")
    parser.add_argument("--inline", action="store_true", help="measure in this process, not in a worker")
    args = parser.parse_args(argv)
    settings = TargetSettings(device=args.device, dtype=args.dtype, threads=args.threads, smoke=args.smoke,
                              skip_1m=args.skip_1m, only=tuple(args.only or ()), timeout_s=args.timeout_s,
                              isolation="inline" if args.inline else "process")
    store = ResultsStore(args.results_dir, "perf_targets")
    rows, failed = run_targets(settings, store)
    store.consolidate()
    print(f"{summary(rows)}; rows in {store.dir}")
    if failed:
        print(f"measurements that failed (status rows): {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
