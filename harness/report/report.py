"""results/<experiment>/report.md and report.html: environment, tables and plots, from the stored rows alone.

The Markdown links the PNGs under plots/; the HTML page embeds them as base64 so it can be mailed or attached
on its own. Both are rendered from one list of sections, so they never disagree.
"""

from __future__ import annotations

import base64
import html
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from ..store import ResultsStore, write_table, _atomic_write
from . import tables
from .palette import Palette
from .plots import Plot, make_plots

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
                return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
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


def _sections(frame: pd.DataFrame, plots: list[Plot], env: dict[str, str]) -> list[Section]:
    speed = tables.speed_summary(frame)
    retrieval = tables.retrieval_summary(frame)
    probe = tables.probe_summary(frame)
    fails = tables.failures(frame)
    by_name = {plot.name: plot for plot in plots}
    counts = frame["kind"].value_counts().to_dict() if "kind" in frame else {}
    sections = [Section("Environment", text="Rows: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + ".",
                        table=pd.DataFrame({"key": list(env), "value": list(env.values())}) if env else None)]

    speed_section = Section("Speed")
    if speed.empty:
        speed_section.text = "No speed rows in the store."
    else:
        speed_section.children.append(Section(
            "Median latency (ms) by sequence length",
            text="A cell that names a status is a point that did not end ok (see Failed points). "
                 "'vs dense' = latency of the fastest dense backend at the same setting and N / this latency.",
            table=tables.latency_wide(speed)))
        for name in ("latency_vs_seq_len", "memory_vs_seq_len", "throughput"):
            speed_section.children.append(Section(by_name[name].title, plot=by_name[name]))
        speed_section.children.append(Section("All speed points", text="Also in tables/speed_summary.csv.",
                                              table=speed.drop(columns=["mechanism", "backend", "params"])))
    sections.append(speed_section)

    retrieval_section = Section("Retrieval")
    if retrieval.empty:
        retrieval_section.text = "No retrieval rows in the store."
    for task in dict.fromkeys(retrieval["task"]) if not retrieval.empty else []:
        retrieval_section.children.append(Section(
            f"{task}: accuracy by key-query distance bucket [lo, hi) in tokens",
            table=tables.retrieval_wide(retrieval, task)))
    for name in ("retrieval_accuracy", "passkey_heatmap", "pareto"):
        retrieval_section.children.append(Section(by_name[name].title, plot=by_name[name]))
    sections.append(retrieval_section)

    if not probe.empty:
        sections.append(Section("Probe: planted-key recovery by distance",
                                text="Share of heads that recovered the planted key at each distance.",
                                table=probe.drop(columns=["mechanism", "backend", "params"])))
    sections.append(Section("Attention patterns", plot=by_name["attention_patterns"]))
    sections.append(Section("Failed points", text="Every row that did not end ok, with its reason."
                            if not fails.empty else "None: every point ended ok.",
                            table=fails if not fails.empty else None))
    return sections


def _markdown(sections: list[Section], level: int, plots_dir: Path, root: Path) -> list[str]:
    lines: list[str] = []
    for section in sections:
        lines += [f"{'#' * level} {section.title}", ""]
        if section.text:
            lines += [section.text, ""]
        if section.table is not None:
            lines += [tables.to_markdown(section.table)]
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


def _html_table(frame: pd.DataFrame) -> str:
    return tables.format_frame(frame).to_html(index=False, border=0, classes="data", escape=True)


def _html(sections: list[Section], level: int) -> list[str]:
    parts: list[str] = []
    for section in sections:
        tag = f"h{min(level, 6)}"
        parts.append(f"<{tag}>{html.escape(section.title)}</{tag}>")
        if section.text:
            parts.append(f"<p>{html.escape(section.text)}</p>")
        if section.table is not None:
            parts.append(f'<div class="scroll">{_html_table(section.table)}</div>')
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
table.data th{background:#f4f4f4}.scroll{overflow-x:auto}img{max-width:100%}figcaption{color:#555;font-size:13px}"""


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
        "retrieval_summary": tables.retrieval_summary(frame),
        "passkey_summary": tables.passkey_summary(frame),
        "probe_summary": tables.probe_summary(frame),
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
