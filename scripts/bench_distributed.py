"""Sequence-parallel attention benchmark under torchrun: the `distributed` job of harness/bench/distributed.py.

    torchrun --nproc-per-node 4 scripts/bench_distributed.py experiment=distributed \\
        benchmark.seq_lens=[16384,32768,65536] benchmark.dtypes=[bfloat16] benchmark.device=cuda

Arguments are `shootout` overrides (experiment=distributed is added when no experiment is given). Every rank
composes the same config, joins torchrun's process group and appends its rows (kind="distributed", one per point
and rank) to its own part file, results/<name>/parts/<job>-rank<r>.parquet; rank 0 merges the parts into
results.parquet / results.csv at the end. Unlike `torchrun ... -m harness`, no logger starts and no report is
written (`python scripts/make_report.py <name>` writes one from the store). A failed point is recorded on every
rank that still can, and the script exits non-zero; torchrun then stops the others and names the failed rank.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from harness.bench.distributed import run_distributed, under_torchrun  # noqa: E402
from harness.config import ConfigError, compose  # noqa: E402
from harness.store import ResultsStore, default_job_id  # noqa: E402


def main(argv: list[str]) -> int:
    if not under_torchrun():
        print(f"{sys.argv[0]}: RANK and WORLD_SIZE are not set: launch with torchrun, e.g. torchrun "
              f"--nproc-per-node 2 {sys.argv[0]} experiment=distributed (or run `shootout experiment=distributed`, "
              f"which starts the ranks itself)", file=sys.stderr)
        return 2
    overrides = argv if any(a.startswith("experiment=") for a in argv) else ["experiment=distributed", *argv]
    try:
        cfg = compose(overrides)
        run_distributed(cfg, check_only=True)
    except ConfigError as error:
        print(f"{sys.argv[0]}: error: {error}", file=sys.stderr)
        return 2
    rank = int(os.environ["RANK"])
    store = ResultsStore(cfg.paths.results_dir, cfg.name, job_id=f"{default_job_id()}-rank{rank:04d}")
    store.check_writable()
    run_distributed(cfg, store)  # returns after an end barrier that every rank passed
    if rank == 0:
        store.consolidate()
        print(f"results: {store.dir / 'results.parquet'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
