#!/usr/bin/env python
"""Regenerate tables, plots and the report of results/<experiment>/ from its stored rows (nothing is re-run).

    python scripts/make_report.py default                  # results/default/report.md and report.html
    python scripts/make_report.py longnet_scaling --results-dir /data/results --no-summary
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from harness.report import print_summary, write_report  # noqa: E402
from harness.report.report import read_rows  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="experiment name: the folder under the results directory")
    parser.add_argument("--results-dir", type=Path, default=Path("results"),
                        help="results root holding <experiment>/parts/*.parquet (default: results)")
    parser.add_argument("--no-summary", action="store_true", help="do not print the summary tables")
    args = parser.parse_args(argv)
    experiment_dir = args.results_dir / args.experiment
    if not experiment_dir.is_dir():
        known = sorted(p.name for p in args.results_dir.iterdir() if p.is_dir()) if args.results_dir.is_dir() else []
        parser.error(f"no results at {experiment_dir}; experiments under {args.results_dir}: {known or 'none'}")
    report = write_report(args.results_dir, args.experiment)
    if not args.no_summary:
        print_summary(read_rows(experiment_dir))
    print(f"report: {report} (and {report.with_suffix('.html')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
