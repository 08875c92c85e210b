"""results/<experiment>/report.md and report.html: environment, tables and plots, from the stored rows alone.

The Markdown links the PNGs under plots/; the HTML page embeds them as base64 so it can be mailed or attached
on its own. Both are rendered from one list of sections, so they never disagree.
"""

from __future__ import annotations

import base64
import html
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from ..store import UNREADABLE, ResultsStore, _atomic_write, write_table
from . import tables
from .palette import Palette
from .plots import Plot, make_plots

log = logging.getLogger(__name__)

ENV_PREFIX = "env_"


def _readable(path: Path) -> Path:
    """The store's atomic writer leaves files 0600 (mkstemp); a report is meant to be shared: 0644 less umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o644 & ~umask)
    return path


def _write_text(path: Path, text: str) -> Path:
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return _readable(path)


@dataclass
class Section:
    title: str
    text: str = ""
    table: pd.DataFrame | None = None
    plot: Plot | None = None
    children: list["Section"] = field(default_factory=list)


def _store_dir(store_dir: Path, experiment: str) -> Path:
    """results/<experiment>/, given either the results root or that folder itself."""
    store_dir = Path(store_dir)
    if not (store_dir / experiment).is_dir() and store_dir.name == experiment and store_dir.is_dir():
        return store_dir
    return store_dir / experiment


def read_rows(experiment_dir: Path) -> pd.DataFrame:
    """Every stored row of the experiment: the job parts if any, else the consolidated file."""
    store = ResultsStore(experiment_dir.parent, experiment_dir.name)
    frame = store.read()
    if frame.empty:
        for name in ("results.parquet", "results.csv"):
            path = experiment_dir / name
            if path.exists():
                try:
                    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
                except UNREADABLE as error:
                    log.warning("%s cannot be read (%s: %s); trying the next copy", path, type(error).__name__,
                                str(error).strip() or "empty file")
    return frame


def environment_of(frame: pd.DataFrame, env: Mapping[str, Any] | None) -> dict[str, str]:
    """The env_* fingerprint: `env` if given, else the values the rows recorded (several values are listed)."""
    if env:
        return {str(k).removeprefix(ENV_PREFIX): tables.format_value(v) for k, v in env.items()}
    out = {}
    for column in sorted(c for c in frame.columns if str(c).startswith(ENV_PREFIX)):
        values = [tables.format_value(v) for v in frame[column].dropna().unique()]
        if column == "env_load_avg_1m" and values:
            load = pd.to_numeric(frame[column], errors="coerce").dropna()
            values = [f"{load.min():.2f}-{load.max():.2f}" if len(load) > 1 else f"{load.iloc[0]:.2f}"]
        if values:
            out[column.removeprefix(ENV_PREFIX)] = ", ".join(values[:5]) + (" ..." if len(values) > 5 else "")
    return out


KIND_SECTIONS = {"perf_target": "Performance targets", "speed": "Speed", "max_seq_len": "Largest sequence length",
                 "retrieval": "Retrieval",
                 "probe": "Probe", "distributed": "Distributed (sequence-parallel)"}


def _sections(frame: pd.DataFrame, plots: list[Plot], env: dict[str, str]) -> list[Section]:
    """The report's sections, one per kind of row the store holds (a kind it lacks is named once, up front)."""
    by_name = {plot.name: plot for plot in plots}
    counts = frame["kind"].value_counts().to_dict() if "kind" in frame else {}
    absent = [title for kind, title in KIND_SECTIONS.items() if kind not in counts]
    overview = "Stored rows: " + (", ".join(f"{k} {v}" for k, v in counts.items()) or "none") + "."
    kept = sum(len(tables.rows_of_kind(frame, kind)) for kind in counts)
    if kept < sum(counts.values()):
        overview += (f" {sum(counts.values()) - kept} of them are superseded by a later run of the same point "
                     "(same config_hash) and left out of every table and plot.")
    if absent:
        overview += f" No rows for: {', '.join(absent)} (those sections are left out)."
    sections = [Section("Environment", text=overview,
                        table=pd.DataFrame({"key": list(env), "value": list(env.values())}) if env else None)]

    targets = tables.perf_target_summary(frame)
    if not targets.empty:
        issue = targets[targets["issue_target"]]
        missed = int((issue["passed"] != True).sum())  # noqa: E712 (None = not recorded counts as missed)
        context = len(targets) - len(issue)
        sections.append(Section(
            KIND_SECTIONS["perf_target"], table=targets,
            text=f"{len(issue) - missed} of {len(issue)} issue targets met (scripts/perf_targets.py; missed ones "
                 "first)" + (f", and {context} context measurements against the same kind of bar "
                             "(issue_target = False)" if context else "") +
                 ". passed = measured <comparison> limit, for the newest run of each target (`target_key`, under "
                 "its newest label); runs = how many times this store has measured it; rounds = the spread of a "
                 "ratio over its interleaved rounds. Rows stored before targets had keys are left out wherever a "
                 "keyed run exists for the same device, dtype and smoke setting."))

    speed = tables.speed_summary(frame)
    if not speed.empty:
        speed_section = Section(KIND_SECTIONS["speed"])
        speed_section.children.append(Section(
            "Median latency (ms) by sequence length",
            text="A cell that names a status is a point that did not end ok (see Failed points). "
                 "'vs dense' = the fastest dense backend's latency at the same setting and N / this latency: the "
                 "median over the interleaved rounds (A B C A B C ...) of the per-round ratios, in brackets their "
                 "range over the rounds.",
            table=tables.latency_wide(speed)))
        for name in ("latency_vs_seq_len", "memory_vs_seq_len", "throughput"):
            speed_section.children.append(Section(by_name[name].title, plot=by_name[name]))
        speed_section.children.append(Section(
            "All speed points", text="Also in tables/speed_summary.csv (full column names). noisy: IQR above "
                                     "10 % of the median; q1, q3: the quartiles of the raw samples; of ceiling: "
                                     "useful GFLOP/s over the matmul ceiling measured next to that N; vs dense: "
                                     "the median per-round speed-up [its range over the rounds].",
            table=_speed_points(speed)))
        sections.append(speed_section)

    searches = tables.max_seq_len_summary(frame)
    if not searches.empty:
        sections.append(Section(KIND_SECTIONS["max_seq_len"], children=[
            Section(by_name["max_seq_len"].title, plot=by_name["max_seq_len"]),
            Section("Searches", table=searches,
                    text="One row per variant and setting: max_seq_len fitted (ran ok within the latency budget), "
                         "first_failing_seq_len did not; limited_by names why (a status, latency_budget, or "
                         "limit). Each probe is also a speed row. Also in tables/max_seq_len_summary.csv.")]))

    retrieval = tables.retrieval_summary(frame)
    if not retrieval.empty:
        retrieval_section = Section(KIND_SECTIONS["retrieval"])
        headline = tables.retrieval_headline(frame)
        if not headline.empty:
            retrieval_section.children.append(Section(
                "Pattern or training? Accuracy within and beyond each pattern's reach",
                text="within reach: accuracy on the items whose key and answer the pattern lets the query "
                     "see (its ceiling is 1); beyond reach: on the items whose answer it cannot see (ceiling: "
                     "chance). Means over the seeds of the learning rate the sweep kept (best validation "
                     "accuracy), with a 95 % t interval (none for one seed). ceiling: the answer-visible share "
                     "plus chance on the rest. A variant 'learnt what its pattern reaches' at within_reach >= "
                     f"{tables.LEARNT_SHARE}; below it the pattern reaches the items and the model did not learn "
                     "them. split: items within reach where a head sees the key token without its value (the "
                     "sparse grid's loss of detail; docs/retrieval.md). Cells: mean (95 % interval) [share of "
                     "items]. Numbers in tables/retrieval_headline.csv.",
                table=tables.retrieval_headline_cells(headline)))
        every_run = tables.retrieval_training(frame)
        training = every_run[every_run["current"] == True].drop(columns=["current"])  # noqa: E712
        older = len(every_run) - len(training)
        not_converged = training[(training["converged"] != True) & (training["status"] == "ok")]  # noqa: E712
        capped = training[training["train_stop"] == "time_cap"]
        retrieval_section.children.append(Section(
            "Training runs", table=training.drop(columns=["reason", "name"]),
            text="One row per trained model, every rate of each sweep; lr_kept marks the rate the tables use. "
                 "train_stop: ceiling (validation accuracy reached the pattern's ceiling), plateau (no gain over "
                 "the last checks), max_steps (budget spent before either: not converged), time_cap (the "
                 "wall-clock safety cap: not converged, and machine-dependent). "
                 + (f"{len(not_converged)} of {len(training)} runs had not converged"
                    + (f", {len(capped)} of them stopped by the time cap" if len(capped) else "")
                    + ": their accuracy partly measures the training budget."
                    if len(not_converged) else "Every run converged.")
                 + (f" {older} runs of earlier sweeps (another configuration of the same variant) are left out "
                    "here and listed in tables/retrieval_training.csv." if older else "")))
        retrieval_section.children.append(Section(by_name["learning_curves"].title, plot=by_name["learning_curves"]))
        for task in dict.fromkeys(retrieval["task"]):
            retrieval_section.children.append(Section(
                f"{task}: accuracy by key-query distance bucket (tokens, lo-hi inclusive)",
                text="Each cell: mean over seeds (95 % interval). Also in tables/retrieval_summary.csv, with "
                     "reachable_fraction, chance and count per bucket.",
                table=tables.retrieval_wide(retrieval, task)))
        noise = tables.retrieval_noise(frame)
        if not noise.empty:
            retrieval_section.children.append(Section(
                "Noise: accuracy at a fixed distance as distractor pairs grow",
                text="Every query at the same key-query distance, in held-out sequences of the training length "
                     "holding more or fewer pairs (eval.noise_pairs); a wider field takes in more of them. "
                     "Mean over seeds (95 % interval); within_share: the share of those queries the pattern "
                     "reaches. Also in tables/retrieval_noise.csv.",
                table=noise.assign(accuracy=[tables.format_interval(m, lo, hi) for m, lo, hi in zip(
                    noise["accuracy"], noise["accuracy_ci_lo"], noise["accuracy_ci_hi"])]).drop(
                    columns=["accuracy_ci_lo", "accuracy_ci_hi"]),
                plot=by_name["retrieval_noise"]))
        for name in ("retrieval_accuracy", "passkey_heatmap", "pareto"):
            if name == "passkey_heatmap" and "passkey" not in set(retrieval["task"]):
                continue  # no passkey task ran: nothing to say beyond the task list above
            retrieval_section.children.append(Section(by_name[name].title, plot=by_name[name]))
        sections.append(retrieval_section)

    probe = tables.probe_summary(frame)
    if not probe.empty:
        mismatches = pd.to_numeric(probe["mismatches"], errors="coerce").fillna(0)
        verdict = ("Every backend recovered exactly the pairs the spec predicts (0 mismatches)."
                   if (mismatches == 0).all() and (probe["status"] == "ok").all() else
                   f"{int(mismatches.sum())} mismatched (query, key, head) triples; see the status and reason "
                   "columns.")
        sections.append(Section(KIND_SECTIONS["probe"], text=verdict, children=[
            Section(by_name["probe"].title, plot=by_name["probe"]),
            Section("Probe by distance bucket",
                    text="accuracy: share of (query, head) pairs at that distance whose key came back; "
                         "reachable_fraction: the share the spec predicts; mismatches must be 0. "
                         "Also in tables/probe_summary.csv.",
                    table=probe.drop(columns=["name", "mechanism", "backend", "params", "reason"]))]))

    distributed = tables.distributed_summary(frame)
    if not distributed.empty:
        sections.append(Section(KIND_SECTIONS["distributed"], children=[
            Section(by_name["distributed"].title, plot=by_name["distributed"]),
            Section("Distributed points",
                    text="One row per point (all ranks). latency_max_ms: slowest rank; bytes_*_max: busiest rank, "
                         "forward + backward per call; *_total: summed over ranks. Also in "
                         "tables/distributed_summary.csv.",
                    table=distributed.drop(columns=["mechanism", "params", "reason"]))]))

    sections.append(Section("Attention patterns", plot=by_name["attention_patterns"]))
    fails = tables.failures(frame)
    sections.append(Section("Failed points", text="Every row that did not end ok, with its reason."
                            if not fails.empty else "None: every point ended ok.",
                            table=fails if not fails.empty else None))
    return sections


def _speed_points(speed: pd.DataFrame) -> pd.DataFrame:
    """speed_summary as the report shows it: the round range beside the speed-up in one cell, the IQR as its
    quartiles (q3 - q1 is the IQR), the variant's parts already in its label."""
    shown = speed.drop(columns=["mechanism", "backend", "params", "latency_iqr_ms"], errors="ignore")
    if {"speedup_vs_dense", "speedup_round_min", "speedup_round_max"} <= set(shown.columns):
        shown["speedup_vs_dense"] = [tables.format_speedup(*values) for values in zip(
            shown["speedup_vs_dense"], shown["speedup_round_min"], shown["speedup_round_max"])]
        shown = shown.drop(columns=["speedup_round_min", "speedup_round_max"])
    # Short headers so the table fits a page; the CSV keeps the full column names.
    return shown.rename(columns={
        "seq_len": "N", "latency_median_ms": "median ms", "latency_q1_ms": "q1 ms", "latency_q3_ms": "q3 ms",
        "tokens_per_s": "tokens/s", "peak_mem_mib": "peak MiB", "useful_gflops_per_s": "GFLOP/s",
        "fraction_of_peak": "of ceiling", "speedup_vs_dense": "vs dense [rounds]"})


def _folded(table: pd.DataFrame | None) -> tuple[pd.DataFrame | None, str]:
    """The table as shown: settings shared by every row move to one line above it (the CSVs keep them)."""
    if table is None:
        return None, ""
    return tables.fold_constant_columns(table, keep=("variant", "key", "value", "target"))


def _markdown(sections: list[Section], level: int, plots_dir: Path, root: Path) -> list[str]:
    lines: list[str] = []
    for section in sections:
        lines += [f"{'#' * level} {section.title}", ""]
        table, same = _folded(section.table)
        if section.text:
            lines += [section.text, ""]
        if same:
            lines += [same, ""]
        if table is not None:
            lines += [tables.to_markdown(table)]
        plot = section.plot
        if plot is not None:
            if plot.skipped:
                lines += [f"_Not drawn: {plot.skipped}._", ""]
            else:
                lines += [f"![{plot.title}]({plot.png.relative_to(root).as_posix()})", ""]
                if plot.caption:
                    lines += [f"_{plot.caption}_", ""]
                lines += ["SVG: " + ", ".join(f"[{p.name}]({p.relative_to(root).as_posix()})"
                                              for p in plot.paths if p.suffix == ".svg"), ""]
        lines += _markdown(section.children, level + 1, plots_dir, root)
    return lines


# Free-text columns wrap inside a bounded width (class "text"), so a wide table with a verdict or a reason still
# fits the page; every other cell is a number or a short label and stays on one line.
TEXT_COLUMNS = {"verdict", "reason", "detail", "note", "notes"}


def _html_table(frame: pd.DataFrame) -> str:
    cells = tables.format_frame(frame)
    wrap = [str(column) in TEXT_COLUMNS for column in cells.columns]

    def cell(tag: str, value, text: bool) -> str:
        return f"<{tag}{' class=text' if text else ''}>{html.escape(str(value))}</{tag}>"

    head = "".join(cell("th", column, w) for column, w in zip(cells.columns, wrap))
    body = "".join("<tr>" + "".join(cell("td", v, w) for v, w in zip(row, wrap)) + "</tr>"
                   for row in cells.itertuples(index=False))
    return f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _html(sections: list[Section], level: int) -> list[str]:
    parts: list[str] = []
    for section in sections:
        tag = f"h{min(level, 6)}"
        parts.append(f"<{tag}>{html.escape(section.title)}</{tag}>")
        table, same = _folded(section.table)
        if section.text:
            parts.append(f"<p>{html.escape(section.text)}</p>")
        if same:
            parts.append(f'<p class="same">{html.escape(same)}</p>')
        if table is not None:
            parts.append(f'<div class="scroll">{_html_table(table)}</div>')
        plot = section.plot
        if plot is not None:
            if plot.skipped:
                parts.append(f"<p><em>Not drawn: {html.escape(plot.skipped)}.</em></p>")
            else:
                data = base64.b64encode(plot.png.read_bytes()).decode("ascii")
                parts.append(f'<figure><img alt="{html.escape(plot.title)}" src="data:image/png;base64,{data}">'
                             f"<figcaption>{html.escape(plot.caption)}</figcaption></figure>")
        parts += _html(section.children, level + 1)
    return parts


_CSS = """body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}
table.data{border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums}
table.data th,table.data td{border-bottom:1px solid #ddd;padding:3px 8px;text-align:right;white-space:nowrap}
table.data th{background:#f4f4f4}.scroll{overflow-x:auto}img{max-width:100%}figcaption{color:#555;font-size:13px}
table.data .text{white-space:normal;min-width:12em;max-width:30em;text-align:left}
p.same{color:#555;font-size:13px}"""


def write_report(store_dir: Path, experiment: str, env: dict | None = None) -> Path:
    """Write tables (CSV + Markdown), plots (PNG + SVG), report.md and report.html into results/<experiment>/
    from the stored rows alone, and return the path of report.md."""
    experiment_dir = _store_dir(Path(store_dir), experiment)
    if not experiment_dir.is_dir():
        raise FileNotFoundError(f"no results for experiment {experiment!r}: {experiment_dir} does not exist "
                                f"(store_dir={store_dir}; expected <store_dir>/<experiment>/parts/*.parquet)")
    frame = read_rows(experiment_dir)
    tables_dir, plots_dir = experiment_dir / "tables", experiment_dir / "plots"
    tables_dir.mkdir(parents=True, exist_ok=True)
    written = {
        "speed_summary": tables.speed_summary(frame),
        "max_seq_len_summary": tables.max_seq_len_summary(frame),
        "retrieval_summary": tables.retrieval_summary(frame),
        "retrieval_headline": tables.retrieval_headline(frame),
        "retrieval_noise": tables.retrieval_noise(frame),
        "passkey_summary": tables.passkey_summary(frame),
        "retrieval_training": tables.retrieval_training(frame),
        "probe_summary": tables.probe_summary(frame),
        "distributed_summary": tables.distributed_summary(frame),
        "perf_targets": tables.perf_target_summary(frame),
        "failures": tables.failures(frame),
    }
    for name, table in written.items():
        write_table(table, tables_dir / f"{name}.csv")
        _readable(tables_dir / f"{name}.csv")
        _write_text(tables_dir / f"{name}.md", tables.to_markdown(table))

    plots = make_plots(frame, plots_dir, Palette.from_frame(frame))
    for plot in plots:
        if plot.figure is not None:
            plot.figure.clear()  # Figures built without pyplot are freed once unreferenced; drop the artists now
    sections = _sections(frame, plots, environment_of(frame, env))
    generated = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    where = os.path.relpath(experiment_dir)
    where = where if not where.startswith("..") else str(experiment_dir.resolve())
    header = (f"Experiment `{experiment}`, {len(frame)} stored rows, report generated {generated} from "
              f"{where} (regenerate: `python scripts/make_report.py {experiment} --results-dir "
              f"{experiment_dir.parent}`).")
    markdown = [f"# attention-shootout report: {experiment}", "", header, ""]
    markdown += _markdown(sections, 2, plots_dir, experiment_dir)
    report = experiment_dir / "report.md"
    _write_text(report, "\n".join(markdown))
    page = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
            f"<title>attention-shootout report: {html.escape(experiment)}</title><style>{_CSS}</style></head><body>",
            f"<h1>attention-shootout report: {html.escape(experiment)}</h1>", f"<p>{html.escape(header)}</p>"]
    page += _html(sections, 2) + ["</body></html>"]
    _write_text(experiment_dir / "report.html", "\n".join(page))
    return report
