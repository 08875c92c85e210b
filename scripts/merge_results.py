"""Merge an experiment's per-job part files into results/<experiment>/results.parquet and results.csv.

Every job (a Hydra multirun job, a submitit/Slurm job, a torchrun rank) writes its own part file,
results/<experiment>/parts/<job_id>.parquet, so jobs never clobber each other; the merged files are a copy of all
parts. `shootout` rewrites them at the end of each job. Run this when jobs ran elsewhere: after a Slurm sweep that
wrote to a shared filesystem, or after copying the parts folders of other machines here with --import.

    python scripts/merge_results.py distributed
    python scripts/merge_results.py longnet_multinode --results /shared/results
    python scripts/merge_results.py distributed --import /mnt/node7/results/distributed /mnt/node8/results/distributed

--import copies every parts/*.parquet (and its .csv twin) of each given store folder into this store's parts/,
atomically; a part already here with the same name and different content is an error (two jobs with one
job_id), never overwritten. Prints rows per kind and status, and the points recorded more than once.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from harness.store import UNREADABLE, ResultsStore, read_part, write_table  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("experiment", help="the folder under --results (the run's `name`)")
    parser.add_argument("--results", default="results", help="results store root")
    parser.add_argument("--import", dest="imports", nargs="+", default=[], metavar="STORE_DIR",
                        help="other stores' experiment folders (holding parts/) to copy parts from first")
    return parser.parse_args(argv)


def import_parts(source: Path, store: ResultsStore) -> int:
    """Copy source/parts/* into the store's parts/; returns how many part files were new here."""
    parts = source / "parts"
    if not parts.is_dir():
        raise SystemExit(f"--import {source}: no parts/ folder there (expected {parts}/<job_id>.parquet)")
    copied = 0
    for path in sorted(parts.glob("*.parquet")):
        try:
            frame = read_part(path)
        except UNREADABLE as error:
            print(f"--import {source}: {path.name} cannot be read ({type(error).__name__}: "
                  f"{str(error).strip() or 'empty file'}); not imported (its CSV twin, if any, is still there)")
            continue
        target = store.dir / "parts" / path.name
        if target.exists():
            if read_part(target).equals(frame):
                continue
            raise SystemExit(f"--import {source}: {target} exists with different rows; two jobs share the job_id "
                             f"{path.stem!r}. Rename one of the part files (any name ending in .parquet works).")
        write_table(frame, target)  # atomic: a reader sees the part whole or not at all
        twin = path.with_suffix(".csv")
        if twin.is_file():
            shutil.copyfile(twin, target.with_suffix(".csv"))
        copied += 1
    return copied


def summarize(frame: pd.DataFrame) -> str:
    lines = [f"{len(frame)} rows from {frame['job_id'].nunique() if 'job_id' in frame else 0} jobs"]
    if frame.empty:
        return lines[0]
    counts = frame.groupby(["kind", "status"], dropna=False).size()
    lines += [f"  {kind:<12} {status:<12} {count}" for (kind, status), count in counts.items()]
    # A point measured twice (a rerun with resume=false, or the same sweep on two machines) stays in the store;
    # the report keeps the latest row of a point.
    keys = [c for c in ("config_hash", "rank") if c in frame]
    repeated = frame.duplicated(keys, keep=False).sum() if keys else 0
    if repeated:
        lines.append(f"  {repeated} rows share their point (config_hash{', rank' if 'rank' in keys else ''}) "
                     f"with another row: the same point measured more than once")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(args.results)
    store = ResultsStore(root, args.experiment)
    for source in args.imports:
        source_dir = Path(source)
        if source_dir.resolve() == store.dir.resolve():
            continue
        store.check_writable()
        print(f"imported {import_parts(source_dir, store)} new part files from {source_dir}")
    if not (store.dir / "parts").is_dir():
        known = sorted(p.parent.name for p in root.glob("*/parts")) if root.is_dir() else []
        raise SystemExit(f"{store.dir / 'parts'} does not exist: no job has written to experiment "
                         f"{args.experiment!r} under {root}. Experiments there: {', '.join(known) or 'none'}")
    store.check_writable()
    frame = store.consolidate()
    print(summarize(frame))
    print(f"wrote {store.dir / 'results.parquet'} and {store.dir / 'results.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
