"""The report's figures, each drawn from the stored rows alone (PNG for pages, SVG for papers).

Every `plot_*` function takes the store's frame, an output folder and the report's Palette, and returns a
`Plot`: the written paths, the Figure and the exact data it drew (tidy: one row per drawn point), or, when its
data is absent, `skipped` with the reason and no file. Failed points (oom, timeout, wrong, ...) are drawn with
one marker per status where the variant's line stopped, never dropped silently.

Figures are built with matplotlib's object API (no pyplot state), so this module never changes the caller's
backend and leaks no open figures; seaborn provides the theme and the heatmaps.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from attention_impls import make_params
from attention_impls.mechanisms import get_mechanism

from . import tables
from .palette import STATUS_MARKERS, Palette, parse_params, variant_label

DPI = 150
MAX_PATTERN_POSITIONS = 256  # the pattern picture shows at most this many positions: one cell stays visible
MAX_PATTERN_HEADS = 4


@dataclass
class Plot:
    """One figure of the report: where it was written and what it shows, or why it was not drawn."""

    name: str
    title: str
    caption: str = ""
    paths: list[Path] = field(default_factory=list)
    figure: Figure | None = None
    data: pd.DataFrame = field(default_factory=pd.DataFrame)
    skipped: str | None = None

    @property
    def png(self) -> Path | None:
        return next((p for p in self.paths if p.suffix == ".png"), None)


@contextmanager
def _theme() -> Iterator[None]:
    rc = {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook", font_scale=0.85),
          "svg.fonttype": "none", "legend.frameon": False}
    with matplotlib.rc_context(rc):
        yield


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(plot: Plot, out_dir: Path) -> Plot:
    out_dir.mkdir(parents=True, exist_ok=True)
    for suffix in (".png", ".svg"):
        path = out_dir / f"{plot.name}{suffix}"
        plot.figure.savefig(path, dpi=DPI)  # constrained layout already fits legends and titles
        plot.paths.append(path)
    return plot


def _skip(name: str, title: str, reason: str) -> Plot:
    return Plot(name=name, title=title, skipped=reason)


# ------------------------------------------------------------------------------------------ speed plots

@dataclass(frozen=True)
class _Metric:
    column: str      # column of speed_summary
    label: str       # y-axis label, with units
    log: bool = True
    # The interquartile band from the raw latency samples: "latency" (Q1..Q3 as they are), "rate" (a quantity
    # inverse to latency, so its band is value x median / Q3 .. value x median / Q1), or None (one sample).
    band: str | None = None


def _flag(value: Any) -> bool:
    """A stored boolean that may be None, NaN, numpy's bool or 0/1."""
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and bool(value)


def _band(points: pd.DataFrame, metric: _Metric) -> tuple[pd.Series, pd.Series] | None:
    if metric.band is None or "latency_q1_ms" not in points:
        return None
    q1, q3, median = points["latency_q1_ms"], points["latency_q3_ms"], points["latency_median_ms"]
    if metric.band == "latency":
        return q1, q3
    return points[metric.column] * median / q3, points[metric.column] * median / q1


def _facets(speed: pd.DataFrame, settings: tuple[str, ...] = tables.SPEED_SETTING_COLUMNS
            ) -> tuple[list[tuple[str, pd.DataFrame]], str]:
    """Split points by the settings that vary (pass, dtype, ...): one panel each, titled by them.
    Also returns the settings common to all panels, as one line for the figure title."""
    settings = tuple(c for c in settings if c in speed)
    varying = [c for c in settings if speed[c].notna().any() and speed[c].nunique() > 1]
    constant = [c for c in settings if c not in varying and speed[c].notna().any()]
    common = ", ".join(f"{c}={tables.format_value(speed[c].dropna().iloc[0])}" for c in constant)
    if not varying:
        return [("", speed)], common
    panels = []
    for key, group in speed.groupby(varying, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        panels.append((", ".join(f"{c}={tables.format_value(v)}" for c, v in zip(varying, key)), group))
    return panels, common


def _seq_len_axis(ax, seq_lens: pd.Series) -> None:
    """Log2 x axis ticked at the measured N, written out (a reader checks 4096, not 2^12)."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("log", base=2)
    ticks = sorted({int(n) for n in pd.to_numeric(seq_lens, errors="coerce").dropna()})
    if len(ticks) > 8:  # keep every other tick so the labels never collide
        ticks = ticks[::2]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([_tokens(n) for n in ticks])


def _tokens(n: int) -> str:
    """4096 -> '4K', 1048576 -> '1M', 1536 -> '1.5K', 100 -> '100': binary units, as sequence lengths are quoted."""
    for size, unit in ((2**20, "M"), (2**10, "K")):
        if n >= size:
            value = n / size
            return f"{value:.3g}{unit}"
    return str(n)


def _plain_log_labels(axis) -> None:
    """Tick labels as plain numbers (100, not 10^2); 2x and 5x minor ticks labelled when few decades show."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    axis.set_major_formatter(plain)
    axis.axes.autoscale_view()  # limits are computed lazily; the decision below needs the final ones
    low, high = axis.get_view_interval()
    decades = math.floor(math.log10(high)) - math.ceil(math.log10(low)) + 1 if low > 0 and high > 0 else 2
    if decades >= 2:
        axis.set_minor_formatter(NullFormatter())
    else:  # fewer than two labelled powers of ten: also label the 2x and 5x ticks, or nothing reads the scale
        axis.set_minor_formatter(FuncFormatter(
            lambda value, _: f"{value:g}" if f"{value:.0e}"[0] in "25" else ""))


# The ideal slopes drawn on a latency panel: a whole sequence costs O(N) or O(N^2); one decoding step against N
# cached keys O(1) (the keys in a pattern's reach) or O(N) (the whole cache).
GUIDES = {False: ((1, "O(N)", ":"), (2, "O(N²)", "--")), True: ((0, "O(1)", ":"), (1, "O(N)", "--"))}


def _is_decode(panel: pd.DataFrame) -> bool:
    return "pass" in panel and bool((panel["pass"] == "decode").all())


def _guides(ax, x: np.ndarray, anchor_y: float, decode: bool = False) -> list[dict]:
    """Ideal lines through (smallest N, anchor_y), for reading the slope of each variant (GUIDES)."""
    drawn = []
    x0 = x.min()
    xs = np.geomspace(x0, x.max(), 50)
    for power, label, style in GUIDES[decode]:
        ys = anchor_y * (xs / x0) ** power
        ax.plot(xs, ys, style, color="0.55", linewidth=1.0, zorder=1)
        drawn += [dict(series=label, x=float(a), y=float(b)) for a, b in ((xs[0], ys[0]), (xs[-1], ys[-1]))]
    return drawn


def _label_guides(ax) -> None:
    """Write 'O(N)' / 'O(N²)' where each guide leaves the visible box (after the limits are final)."""
    (x_lo, x_hi), (y_lo, y_hi) = ax.get_xlim(), ax.get_ylim()
    for line in ax.get_lines():
        if line.get_gid() is None:
            continue
        xs, ys = line.get_xdata(), line.get_ydata()
        inside = (ys <= y_hi) & (ys >= y_lo) & (xs <= x_hi)
        if inside.any():
            i = np.flatnonzero(inside)[-1]
            ax.annotate(line.get_gid(), (xs[i], ys[i]), xytext=(-2, 2), textcoords="offset points",
                        ha="right", va="bottom", color="0.4", fontsize="small")


def _scaling_plot(frame: pd.DataFrame, out_dir: Path, palette: Palette, *, name: str, title: str,
                  metrics: list[_Metric], guides: bool = False, ceiling: bool = False, caption: str = "") -> Plot:
    speed = tables.speed_summary(frame)
    if speed.empty:
        return _skip(name, title, "no speed rows in the store")
    needed = [m.column for m in metrics]
    if not speed[needed].notna().any().any():
        # Nothing to draw a line through, so no y scale to place failure markers on: say what happened instead.
        counts = ", ".join(f"{status}: {count}" for status, count in speed["status"].value_counts().items())
        return _skip(name, title, f"no speed point has {' or '.join(needed)} ({counts}; a point that is ok but "
                                  f"lacks the column was not recorded by its producer)")
    panels, common = _facets(speed)
    with _theme():
        figure = _new_figure(5.2 * len(metrics) + 2.8, 3.6 * len(panels))
        axes = figure.subplots(len(panels), len(metrics), squeeze=False)
        drawn: list[dict] = []
        statuses_seen: set[str] = set()
        variants_seen: list[str] = []
        for row, (panel_title, panel) in enumerate(panels):
            for col, metric in enumerate(metrics):
                ax = axes[row][col]
                drawn += _draw_scaling_panel(ax, panel, metric, palette, guides, statuses_seen, variants_seen,
                                             panel_title)
                _seq_len_axis(ax, panel["seq_len"])
                if metric.log:
                    ax.set_yscale("log")
                # After the log scale: limits set on a linear axis can start at or below 0 and break it.
                if ceiling and metric.column == "useful_gflops_per_s":
                    drawn += _draw_ceiling(ax, frame, panel)
                if metric.log:
                    _plain_log_labels(ax.yaxis)
                ax.set_xlabel("sequence length N (tokens)")
                ax.set_ylabel(metric.label)
                ax.set_title(panel_title, fontsize="medium")
                if guides:
                    _label_guides(ax)
        kinds = {_is_decode(panel) for _, panel in panels}
        _legend(figure, palette, variants_seen, statuses_seen, guides,
                noisy=any(point.get("noisy") is True for point in drawn), decode=kinds)
        figure.suptitle(title + (f"\n{common}" if common else ""), fontsize="large")
    plot = Plot(name=name, title=title, caption=caption, figure=figure, data=pd.DataFrame(drawn))
    return _save(plot, out_dir)


def _draw_scaling_panel(ax, panel: pd.DataFrame, metric: _Metric, palette: Palette, guides: bool,
                        statuses_seen: set[str], variants_seen: list[str], panel_title: str) -> list[dict]:
    drawn: list[dict] = []
    ok_values = panel.loc[panel["status"] == "ok", ["seq_len", metric.column]].dropna()
    floor = float(ok_values[metric.column].min()) if len(ok_values) else 1.0
    for variant in palette.sorted(panel["variant"].unique()):
        points = panel[panel["variant"] == variant].sort_values("seq_len")
        style = palette[variant]
        ok = points[(points["status"] == "ok") & points[metric.column].notna()]
        if len(ok):
            ax.plot(ok["seq_len"], ok[metric.column], color=style.color, linestyle=style.linestyle, linewidth=1.6,
                    zorder=3)
            # Noisy points (IQR > 10 % of the median) drawn hollow: the reader sees which numbers to distrust.
            noisy = ok["noisy"].map(_flag) if "noisy" in ok else pd.Series(False, index=ok.index)
            for hollow, group in ok.groupby(noisy, sort=False):
                ax.plot(group["seq_len"], group[metric.column], linestyle="none", marker=style.marker,
                        markersize=5.5, color=style.color, markerfacecolor="white" if hollow else style.color,
                        markeredgewidth=1.3, zorder=4)
            band = _band(ok, metric)
            lo, hi = band if band is not None else (pd.Series(np.nan, ok.index), pd.Series(np.nan, ok.index))
            if band is not None and lo.notna().any():
                ax.fill_between(ok["seq_len"], lo, hi, color=style.color, alpha=0.2, linewidth=0, zorder=2)
            drawn += [dict(series=variant, panel=panel_title, metric=metric.column, x=float(x), y=float(y),
                           y_lo=float(a), y_hi=float(b), noisy=bool(n), status="ok")
                      for x, y, a, b, n in zip(ok["seq_len"], ok[metric.column], lo, hi, noisy)]
        if variant not in variants_seen and (len(ok) or (points["status"] != "ok").any()):
            variants_seen.append(variant)
        for _, failed in points[points["status"] != "ok"].iterrows():
            # Where the line stopped: the last ok value at a smaller N; on the line (log-interpolated) for a gap
            # between two ok points; the first ok value after it; or, with no ok point at all, the panel floor.
            before = ok[ok["seq_len"] < failed["seq_len"]]
            after = ok[ok["seq_len"] > failed["seq_len"]]
            if len(before) and len(after):
                x0, y0 = before.iloc[-1][["seq_len", metric.column]]
                x1, y1 = after.iloc[0][["seq_len", metric.column]]
                t = math.log(failed["seq_len"] / x0) / math.log(x1 / x0)
                y = float(math.exp(math.log(y0) + t * (math.log(y1) - math.log(y0))))
            else:
                y = (before[metric.column].iloc[-1] if len(before) else
                     after[metric.column].iloc[0] if len(after) else floor)
            status = str(failed["status"])
            statuses_seen.add(status)
            ax.plot([failed["seq_len"]], [y], linestyle="none", marker=STATUS_MARKERS.get(status, "x"),
                    markersize=10, markeredgewidth=2.0, color=style.color,
                    markeredgecolor=style.color, zorder=4, clip_on=False)
            if len(before) and not len(after):
                ax.plot([before["seq_len"].iloc[-1], failed["seq_len"]], [y, y], color=style.color, linewidth=0.8,
                        linestyle=":", zorder=2)
            drawn.append(dict(series=variant, panel=panel_title, metric=metric.column,
                              x=float(failed["seq_len"]), y=float(y), status=status))
    if guides and len(ok_values):
        smallest = ok_values["seq_len"].min()
        anchor = float(np.exp(np.log(ok_values.loc[ok_values["seq_len"] == smallest, metric.column]).mean()))
        y_lo, y_hi = ok_values[metric.column].min(), ok_values[metric.column].max()
        before_lines = len(ax.get_lines())
        decode = _is_decode(panel)
        drawn += _guides(ax, panel["seq_len"].to_numpy(dtype=float), anchor, decode)
        for line, (_, label, _) in zip(ax.get_lines()[before_lines:], GUIDES[decode]):
            line.set_gid(label)
        # The data decides the frame; a guide that climbs out of it is cut, not allowed to squash the data.
        ax.set_ylim(y_lo / 1.6, y_hi * 1.6)
    if metric.column == "latency_median_ms" and "speedup_vs_dense" in panel:
        # The number a shootout is about, on the plot: each variant's speed-up over dense at its largest N.
        compared = panel[panel["speedup_vs_dense"].notna() & (panel["mechanism"] != "dense")]
        labels = [(variant, points.sort_values("seq_len").iloc[-1])
                  for variant, points in compared.groupby("variant", sort=False)]
        heights = _spread_labels(ax, [(float(last["seq_len"]), float(last["latency_median_ms"]))
                                      for _, last in labels])
        for (variant, last), height in zip(labels, heights):
            ax.annotate(_times(last["speedup_vs_dense"]), (last["seq_len"], height),
                        xytext=(5, -2), textcoords="offset points", fontsize="small", color=palette[variant].color,
                        va="top")
            drawn.append(dict(series=variant, panel=panel_title, metric="speedup_vs_dense",
                              x=float(last["seq_len"]), y=float(last["speedup_vs_dense"]), status="ok"))
    return drawn


def _spread_labels(ax, points: list[tuple[float, float]], gap_fraction: float = 0.06) -> list[float]:
    """Heights for labels beside points on a log y axis, moved apart so that labels at the same x sit at least
    gap_fraction of the axis height apart (two variants 10 % apart in latency would print on top of each other)."""
    low, high = (math.log10(v) for v in ax.get_ylim())
    gap = gap_fraction * (high - low)
    heights = [math.log10(y) for _, y in points]
    for x in {x for x, _ in points}:
        order = sorted((i for i, (xi, _) in enumerate(points) if xi == x), key=lambda i: -heights[i])
        for above, below in zip(order, order[1:]):
            heights[below] = min(heights[below], heights[above] - gap)
    return [10 ** h for h in heights]


def _draw_ceiling(ax, frame: pd.DataFrame, panel: pd.DataFrame) -> list[dict]:
    """A horizontal line at the measured matmul rate (the row's own measurement, median over rows)."""
    speed = tables.rows_of_kind(frame, "speed")
    if "matmul_peak_flops_per_s" not in speed:
        return []
    ceiling = pd.to_numeric(speed["matmul_peak_flops_per_s"], errors="coerce").dropna()
    if ceiling.empty:
        return []
    value = float(ceiling.median()) / 1e9
    ax.axhline(value, color="0.2", linewidth=1.2, linestyle="-.", zorder=1)
    ax.annotate(f"measured matmul ceiling {value:.4g} GFLOP/s", (0.02, value), xycoords=("axes fraction", "data"),
                xytext=(0, -3), textcoords="offset points", va="top", fontsize="small", color="0.2")
    values = pd.to_numeric(panel["useful_gflops_per_s"], errors="coerce")
    values = values[values > 0]
    above = panel[panel["above_ceiling"].map(_flag)] if "above_ceiling" in panel else panel.iloc[:0]
    if len(above):
        ax.plot(above["seq_len"], above["useful_gflops_per_s"], linestyle="none", marker="o", markersize=12,
                markerfacecolor="none", markeredgecolor="#d62728", markeredgewidth=1.6, zorder=5)
        ax.annotate(f"{len(above)} point(s) above their own measured ceiling: stale ceiling", (0.02, 0.97),
                    xycoords="axes fraction", va="top", fontsize="small", color="#d62728")
    low = float(values.min()) / 1.6 if len(values) else value / 100
    high = max(value, float(values.max()) if len(values) else value) * 1.6
    ax.set_ylim(min(low, value / 1.6), high)
    return [dict(series="matmul ceiling", metric="useful_gflops_per_s", x=float("nan"), y=value, status="ok")] + [
        dict(series="above ceiling", metric="useful_gflops_per_s", x=float(x), y=float(y), status="above_ceiling")
        for x, y in zip(above["seq_len"], above["useful_gflops_per_s"])]


def _times(ratio: float) -> str:
    """A speed-up as a reader says it: 108x, 8x, 4.4x, 0.41x (never 1.1e+02x)."""
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.2g}x"


def _legend(figure: Figure, palette: Palette, variants: list[str], statuses: set[str], guides: bool,
            noisy: bool = False, decode: set[bool] = frozenset({False})) -> None:
    handles, labels = [], []
    for variant in palette.sorted(variants):
        style = palette[variant]
        handles.append(Line2D([], [], color=style.color, marker=style.marker, linestyle=style.linestyle))
        labels.append(variant)
    for status in sorted(statuses):
        handles.append(Line2D([], [], color="0.3", marker=STATUS_MARKERS.get(status, "x"), linestyle="none",
                              markersize=9, markeredgewidth=2.0))
        labels.append(f"{status} (failed point)")
    if noisy:
        handles.append(Line2D([], [], color="0.3", marker="o", markerfacecolor="white", linestyle="none"))
        labels.append("hollow: noisy point (IQR > 10 % of median)")
    if guides:
        handles += [Line2D([], [], color="0.55", linestyle=":"), Line2D([], [], color="0.55", linestyle="--")]
        if decode == {True}:
            labels += ["ideal O(1) per step", "ideal O(N) per step"]
        elif decode == {False}:
            labels += ["ideal O(N)", "ideal O(N²)"]
        else:
            labels += ["ideal O(N) (a decoding step: O(1))", "ideal O(N²) (a decoding step: O(N))"]
    # One row only when the labels are short: four variant names side by side overflow a figure's width.
    one_row = len(labels) <= 4 and sum(len(label) for label in labels) <= 80
    figure.legend(handles, labels, loc="outside lower center", ncols=len(labels) if one_row else 2,
                  fontsize="small")


def plot_latency(frame: pd.DataFrame, out_dir: Path, palette: Palette) -> Plot:
    """The paper-style scaling plot: median latency against N, log-log, with ideal O(N) and O(N^2) slopes."""
    return _scaling_plot(
        frame, out_dir, palette, name="latency_vs_seq_len", title="Latency against sequence length",
        metrics=[_Metric("latency_median_ms", "median latency (ms, log)", band="latency")], guides=True,
        caption="Median over repeats, shaded the interquartile range of the raw samples; a hollow marker is a "
                "noisy point (IQR above 10 % of its median). A marker without a line is a point that failed "
                "(see legend), drawn at the height where its variant's line stopped. Grey lines: ideal O(N) and "
                "O(N²) through the smallest N (a decoding step: O(1) and O(N)). 'x' labels: speed-up over the fastest dense backend at the largest "
                "N both measured.")


def plot_memory(frame: pd.DataFrame, out_dir: Path, palette: Palette) -> Plot:
    speed = tables.rows_of_kind(frame, "speed")
    methods = sorted(speed["mem_method"].dropna().astype(str).unique()) if "mem_method" in speed else []
    return _scaling_plot(
        frame, out_dir, palette, name="memory_vs_seq_len", title="Peak memory against sequence length",
        metrics=[_Metric("peak_mem_mib", "peak memory (MiB, log)")],
        caption=f"Peak memory during the timed call{(' measured by ' + ', '.join(methods)) if methods else ''}; "
                "one measurement per point (the high-water mark of the timed calls), so no band; hollow markers "
                "are points whose latency was noisy; failed points marked as in the latency plot.")


def plot_throughput(frame: pd.DataFrame, out_dir: Path, palette: Palette) -> Plot:
    return _scaling_plot(
        frame, out_dir, palette, name="throughput", title="Throughput and achieved FLOP/s",
        metrics=[_Metric("tokens_per_s", "throughput (tokens/s, log)", band="rate"),
                 _Metric("useful_gflops_per_s", "achieved useful GFLOP/s (log)", band="rate")], ceiling=True,
        caption="Useful FLOPs count only the (query, key) pairs the mechanism defines (spec: 4·D per pair, "
                "backward 2.5x forward); the dash-dot line is the matmul rate measured on the same machine. "
                "Shaded: the interquartile range of the raw latency samples, as a rate; hollow markers: noisy "
                "points. A point above the ceiling is ringed in red and counted in the panel: the ceiling was "
                "measured at a quieter moment than that point, so its fraction of the ceiling is not a bound.")


# -------------------------------------------------------------------------------------- retrieval plots

def _bucket_centre(lo: float, hi: float) -> float:
    """Geometric centre of the inclusive bucket [lo, hi] on a log axis (distance 0 is drawn at 1)."""
    if pd.isna(hi) or math.isinf(hi):
        return max(float(lo), 1.0) * 1.5
    if pd.isna(lo):
        return max(float(hi) / 2, 1.0)
    return math.sqrt(max(float(lo), 1.0) * max(float(hi), 1.0))


def plot_retrieval_accuracy(frame: pd.DataFrame, out_dir: Path, palette: Palette) -> Plot:
    """Accuracy against key-query distance, one line per variant, one panel per task and N; dashed, the share
    of each bucket's items the pattern can reach (reachable_fraction); dotted verticals, each variant's
    theoretical reach; grey dash-dot, chance."""
    name, title = "retrieval_accuracy", "Retrieval accuracy by key-query distance"
    summary = tables.retrieval_summary(frame)
    if summary.empty:
        return _skip(name, title, "no retrieval rows in the store")
    if summary["distance_lo"].isna().all() and summary["distance_hi"].isna().all():
        return _skip(name, title, "retrieval rows carry no distance_lo / distance_hi buckets")
    # A run that failed before evaluating (oom in training, unsupported) has one row and no bucket: it gets a
    # legend entry, not a panel of its own.
    evaluated = summary["distance_lo"].notna() | summary["distance_hi"].notna()
    not_run = summary[~evaluated]
    summary = summary[evaluated]
    summary = summary.assign(x=[_bucket_centre(lo, hi) for lo, hi in zip(summary["distance_lo"],
                                                                          summary["distance_hi"])])
    panels = list(summary.groupby(["task", "seq_len"], sort=True, dropna=False))
    columns = min(len(panels), 3)
    rows = math.ceil(len(panels) / columns)
    drawn: list[dict] = []
    statuses: set[str] = set()
    variants: list[str] = []
    with _theme():
        figure = _new_figure(4.6 * columns + 3.0, 3.6 * rows)
        axes = figure.subplots(rows, columns, squeeze=False).ravel()
        for ax, ((task, seq_len), panel) in zip(axes, panels):
            for variant in palette.sorted(panel["variant"].unique()):
                points = panel[panel["variant"] == variant].sort_values("x")
                style = palette[variant]
                variants.append(variant)
                ok = points[points["accuracy"].notna()]
                ax.plot(ok["x"], ok["accuracy"], color=style.color, marker=style.marker, linestyle=style.linestyle,
                        linewidth=1.6, markersize=5)
                band = ok[ok["accuracy_ci_lo"].notna() & ok["accuracy_ci_hi"].notna()]
                if len(band):  # the 95 % interval over seeds; one seed has none
                    ax.fill_between(band["x"], band["accuracy_ci_lo"].clip(0, 1), band["accuracy_ci_hi"].clip(0, 1),
                                    color=style.color, alpha=0.18, linewidth=0)
                    drawn += [dict(series=f"{variant} 95% interval", task=task, seq_len=seq_len, x=x, y=lo, y_hi=hi,
                                   status="interval")
                              for x, lo, hi in zip(band["x"], band["accuracy_ci_lo"], band["accuracy_ci_hi"])]
                if "binomial_ci_lo" in ok:  # the bucket's own sampling noise (Wilson), as error bars
                    lo, hi = ok["binomial_ci_lo"], ok["binomial_ci_hi"]
                    ax.errorbar(ok["x"], ok["accuracy"], yerr=[(ok["accuracy"] - lo).clip(lower=0).fillna(0),
                                                               (hi - ok["accuracy"]).clip(lower=0).fillna(0)],
                                fmt="none", ecolor=style.color, elinewidth=0.9, capsize=2.5, alpha=0.8)
                else:
                    lo = hi = pd.Series(np.nan, index=ok.index)
                drawn += [dict(series=variant, task=task, seq_len=seq_len, x=x, y=y, y_lo=a, y_hi=b, status="ok")
                          for x, y, a, b in zip(ok["x"], ok["accuracy"], lo, hi)]
                # A bucket with failed rows is marked: at 0 when nothing in it produced an accuracy, else on
                # its (partial) accuracy, so a reader knows the point stands on fewer queries.
                for _, failed in points[points["status"] != "ok"].iterrows():
                    status = next(s for s in str(failed["status"]).split("+") if s != "ok")
                    statuses.add(status)
                    y = 0.0 if pd.isna(failed["accuracy"]) else float(failed["accuracy"])
                    ax.plot([failed["x"]], [y], marker=STATUS_MARKERS.get(status, "x"), color=style.color,
                            markersize=10, markeredgewidth=2.0, linestyle="none", clip_on=False)
                    drawn.append(dict(series=variant, task=task, seq_len=seq_len, x=failed["x"], y=y,
                                      status=status))
                reachable = points[points["reachable_fraction"].notna()]
                if len(reachable):
                    ax.plot(reachable["x"], reachable["reachable_fraction"], color=style.color, linestyle="--",
                            linewidth=1.0, alpha=0.8, zorder=2)
                    drawn += [dict(series=f"{variant} reachable", task=task, seq_len=seq_len, x=x, y=y,
                                   status="predicted")
                              for x, y in zip(reachable["x"], reachable["reachable_fraction"])]
                reach = points["theoretical_reach"].dropna()
                # A reach of N - 1 (dense) is the whole axis: a line at its edge would say nothing.
                if len(reach) and math.isfinite(reach.iloc[0]) and (pd.isna(seq_len) or reach.iloc[0] < seq_len - 1):
                    ax.axvline(max(float(reach.iloc[0]), 1.0), color=style.color, linestyle=":", linewidth=1.2)
                    drawn.append(dict(series=f"{variant} theoretical reach", task=task, seq_len=seq_len,
                                      x=float(reach.iloc[0]), y=math.nan, status="predicted"))
            chance = panel["chance"].dropna()
            if len(chance):
                ax.axhline(float(chance.max()), color="0.45", linestyle="-.", linewidth=1.0, zorder=1)
            ax.set_xscale("log", base=2)
            _plain_log_labels(ax.xaxis)
            ax.set_ylim(-0.03, 1.03)
            ax.set_xlabel("key-query distance (tokens, inclusive bucket's centre)")
            ax.set_ylabel("accuracy")
            ax.set_title(f"{task}, N={int(seq_len)}" if pd.notna(seq_len) else str(task), fontsize="medium")
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        handles, labels = [], []
        for variant in palette.sorted(set(variants)):
            style = palette[variant]
            handles.append(Line2D([], [], color=style.color, marker=style.marker, linestyle=style.linestyle))
            labels.append(variant)
        handles += [Line2D([], [], color="0.3", linestyle="--", linewidth=1.0), Line2D([], [], color="0.3",
                                                                                       linestyle=":"),
                    Line2D([], [], color="0.45", linestyle="-.")]
        labels += ["reachable fraction (its colour)", "theoretical reach (its colour)", "chance"]
        for status in sorted(statuses):
            handles.append(Line2D([], [], color="0.3", marker=STATUS_MARKERS.get(status, "x"), linestyle="none",
                                  markersize=9, markeredgewidth=2.0))
            labels.append(f"{status} (bucket has failed rows)")
        for _, run in not_run.iterrows():
            status = next((s for s in str(run["status"]).split("+") if s != "ok"), "ok")
            handles.append(Line2D([], [], color=palette[run["variant"]].color, marker=STATUS_MARKERS.get(status, "x"),
                                  linestyle="none", markersize=9, markeredgewidth=2.0))
            labels.append(f"{run['variant']}: {run['task']} {status}, not evaluated")
            drawn.append(dict(series=run["variant"], task=run["task"], seq_len=math.nan, x=math.nan, y=math.nan,
                              status=status))
        figure.legend(handles, labels, loc="outside right upper", fontsize="small")
        figure.suptitle(title, fontsize="large")
    plot = Plot(name=name, title=title, figure=figure, data=pd.DataFrame(drawn),
                caption="Solid: accuracy per distance bucket (queries at distance lo..hi inclusive), the mean over "
                        "seeds, drawn at the bucket's geometric centre; shaded, its 95 % t interval (none for one "
                        "seed); error bars, the 95 % Wilson interval of the bucket's items pooled over seeds (its sampling noise). "
                        "Dashed, same colour: the share of "
                        "the bucket's items whose sources the stacked pattern can reach (the most a model could "
                        "get right beyond chance). Dotted verticals: the longest distance any token can travel "
                        "(not drawn for dense, which reaches the whole sequence). Grey dash-dot: chance.")
    return _save(plot, out_dir)


def plot_learning_curves(frame: pd.DataFrame, out_dir: Path, palette: Palette) -> Plot:
    """Validation accuracy against training step for every retrieval run, one panel per task and training
    length; runs at the rate the sweep kept drawn solid, the other rates faint; dashed, each variant's ceiling;
    a cross where a run ended without converging (max_steps or time_cap)."""
    import json

    name, title = "learning_curves", "Retrieval training: validation accuracy by step"
    rows = tables.rows_of_kind(frame, "retrieval")
    if rows.empty or "learning_curve" not in rows:
        return _skip(name, title, "no retrieval run stored a learning curve")
    kept = set(tables.retrieval_rows(frame)["config_hash"])
    rows = tables.with_sweep(rows)
    runs = rows[tables.in_newest_sweep(rows)].drop_duplicates("config_hash")  # earlier sweeps: in the CSV only
    runs = runs[runs["learning_curve"].notna()]
    if runs.empty:
        return _skip(name, title, "no retrieval run stored a learning curve")
    panels = list(runs.groupby(["task", "train_seq_len"], sort=True, dropna=False))
    columns = min(len(panels), 3)
    rows_n = math.ceil(len(panels) / columns)
    drawn: list[dict] = []
    variants: list[str] = []
    with _theme():
        figure = _new_figure(5.6 * columns + 4.6, 3.4 * rows_n)  # room for the legend beside a single panel
        axes = figure.subplots(rows_n, columns, squeeze=False).ravel()
        for ax, ((task, train_len), panel) in zip(axes, panels):
            for _, run in panel.iterrows():
                points = json.loads(run["learning_curve"]) if isinstance(run["learning_curve"], str) else []
                if not points:
                    continue
                style = palette[run["variant"]]
                variants.append(run["variant"])
                steps = [p[0] for p in points]
                values = [p[1] for p in points]
                is_kept = run["config_hash"] in kept
                ax.plot(steps, values, color=style.color, linestyle=style.linestyle,
                        linewidth=1.3 if is_kept else 0.8, alpha=0.9 if is_kept else 0.3)
                drawn += [dict(series=run["variant"], lr=run["lr"], seed=run["seed"], lr_kept=is_kept, x=x, y=y)
                          for x, y in zip(steps, values)]
                if run.get("converged") != True:  # noqa: E712 (NaN in rows stored before the protocol)
                    ax.plot([steps[-1]], [values[-1]], marker="x", color=style.color, markersize=8,
                            markeredgewidth=2.0, linestyle="none")
                    drawn.append(dict(series=f"{run['variant']} not converged", lr=run["lr"], seed=run["seed"],
                                      lr_kept=is_kept, x=steps[-1], y=values[-1]))
            for variant, group in panel.groupby("variant"):
                top = pd.to_numeric(group["val_ceiling"], errors="coerce").dropna()
                if len(top):
                    ax.axhline(float(top.mean()), color=palette[variant].color, linestyle="--", linewidth=0.9)
                    drawn.append(dict(series=f"{variant} ceiling", x=math.nan, y=float(top.mean())))
            ax.set_ylim(-0.03, 1.03)
            ax.set_xlabel("training step")
            ax.set_ylabel("validation accuracy")
            ax.set_title(f"{task}, trained at N={int(train_len)}" if pd.notna(train_len) else str(task),
                         fontsize="medium")
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        handles, labels = [], []
        for variant in palette.sorted(set(variants)):
            style = palette[variant]
            handles.append(Line2D([], [], color=style.color, linestyle=style.linestyle))
            labels.append(variant)
        handles += [Line2D([], [], color="0.3", linewidth=0.8, alpha=0.3),
                    Line2D([], [], color="0.3", linestyle="--", linewidth=0.9),
                    Line2D([], [], color="0.3", marker="x", linestyle="none", markeredgewidth=2.0)]
        labels += ["another rate of the sweep (faint)", "ceiling (its colour)", "ended without converging"]
        figure.legend(handles, labels, loc="outside right upper", fontsize="small")
        figure.suptitle(title, fontsize="large", x=0.02, ha="left")  # clear of the legend
    plot = Plot(name=name, title=title, figure=figure, data=pd.DataFrame(drawn),
                caption="Validation accuracy at every check of every retrieval run (one line per seed and rate; "
                        "the rate the sweep kept is drawn solid). Dashed: the pattern's ceiling on the validation "
                        "set (answer-visible share plus chance on the rest); a run stops within "
                        "train.ceiling_margin of it or on a plateau. A cross marks a run the step budget or the "
                        "time cap ended before it converged.")
    return _save(plot, out_dir)


def plot_retrieval_noise(frame: pd.DataFrame, out_dir: Path, palette: Palette) -> Plot:
    """Accuracy at one fixed distance against the number of pairs in the sequence, one line per variant with its
    95 % band over seeds; grey dash-dot, chance."""
    name, title = "retrieval_noise", "Noise: accuracy at a fixed distance as distractor pairs grow"
    noise = tables.retrieval_noise(frame)
    if noise.empty:
        return _skip(name, title, "no retrieval run evaluated noise sets (eval.noise_pairs)")
    panels = list(noise.groupby(["task", "seq_len", "distance"], sort=True))
    drawn: list[dict] = []
    with _theme():
        figure = _new_figure(5.6 * len(panels) + 4.6, 3.6)  # room for the legend beside a single panel
        axes = figure.subplots(1, len(panels), squeeze=False).ravel()
        for ax, ((task, seq_len, distance), panel) in zip(axes, panels):
            for variant in palette.sorted(panel["variant"].unique()):
                points = panel[panel["variant"] == variant].sort_values("pairs")
                style = palette[variant]
                ax.plot(points["pairs"], points["accuracy"], color=style.color, marker=style.marker,
                        linestyle=style.linestyle, linewidth=1.6, markersize=5, label=variant)
                band = points[points["accuracy_ci_lo"].notna()]
                if len(band):
                    ax.fill_between(band["pairs"], band["accuracy_ci_lo"], band["accuracy_ci_hi"], color=style.color,
                                    alpha=0.18, linewidth=0)
                drawn += [dict(series=variant, x=x, y=y, y_lo=lo, y_hi=hi) for x, y, lo, hi in zip(
                    points["pairs"], points["accuracy"], points["accuracy_ci_lo"], points["accuracy_ci_hi"])]
            ax.axhline(float(panel["chance"].max()), color="0.45", linestyle="-.", linewidth=1.0)
            ax.set_ylim(-0.03, 1.03)
            ax.set_xlabel("key-value pairs per sequence")
            ax.set_ylabel("accuracy")
            ax.set_title(f"{task}, N={int(seq_len)}, distance {int(distance)}", fontsize="medium")
        handles, labels = axes[0].get_legend_handles_labels()
        handles.append(Line2D([], [], color="0.45", linestyle="-."))
        labels.append("chance")
        figure.legend(handles, labels, loc="outside right upper", fontsize="small")
        figure.suptitle(title, fontsize="large", x=0.02, ha="left")  # clear of the legend
    plot = Plot(name=name, title=title, figure=figure, data=pd.DataFrame(drawn),
                caption="Every query at the same key-query distance, every pair queried; for each query the "
                        "other pairs are distractors, so more pairs put more of them in each pattern's field. Mean over seeds, shaded its 95 % interval; dash-dot: chance.")
    return _save(plot, out_dir)


def plot_passkey_heatmap(frame: pd.DataFrame, out_dir: Path, palette: Palette) -> Plot:
    """The needle-in-a-haystack picture: passkey accuracy by needle depth and context length, per variant."""
    name, title = "passkey_heatmap", "Passkey retrieval: accuracy by needle depth and context length"
    summary = tables.passkey_summary(frame)
    if summary.empty:
        return _skip(name, title, "no passkey rows with depth and context_len in the store")
    variants = palette.sorted(summary["variant"].unique())
    columns = min(len(variants), 3)
    rows = math.ceil(len(variants) / columns)
    depths = sorted(summary["depth"].unique())
    contexts = sorted(summary["context_len"].unique())
    cmap = sns.color_palette("viridis", as_cmap=True)
    with _theme():
        figure = _new_figure(3.6 * columns + 1.2, 0.45 * len(depths) * rows + 1.6 * rows + 0.6)
        axes = figure.subplots(rows, columns, squeeze=False).ravel()
        for i, (ax, variant) in enumerate(zip(axes, variants)):
            cells = summary[summary["variant"] == variant]
            grid = cells.pivot_table(index="depth", columns="context_len", values="accuracy", aggfunc="first",
                                     dropna=False).reindex(index=depths, columns=contexts)
            status = cells.pivot_table(index="depth", columns="context_len", values="status", aggfunc="first")
            status = status.reindex(index=depths, columns=contexts)
            annot = np.where(grid.notna(), grid.map(lambda v: f"{v:.2f}" if pd.notna(v) else ""),
                             status.fillna("not run").map(lambda s: str(s).replace("ok+", "")))
            sns.heatmap(grid, ax=ax, vmin=0.0, vmax=1.0, cmap=cmap, annot=annot, fmt="", cbar=i == len(variants) - 1,
                        cbar_kws={"label": "accuracy"}, linewidths=0.5, linecolor="white",
                        annot_kws={"fontsize": "x-small"})
            ax.set_facecolor("0.85")  # cells with no accuracy (failed or not run) read as grey, labelled
            ax.grid(False)
            for r, depth in enumerate(depths):
                for c, context in enumerate(contexts):
                    if pd.isna(grid.iloc[r, c]):  # seaborn does not annotate empty cells: name the status
                        ax.text(c + 0.5, r + 0.5, annot[r, c], ha="center", va="center", fontsize="x-small",
                                color="0.15")
            ax.set_title(variant, fontsize="small")
            ax.set_xlabel("context length (tokens)")
            ax.set_ylabel("needle depth (0 = start)")
            ax.set_xticklabels([f"{int(c)}" for c in contexts], rotation=0)
            ax.set_yticklabels([f"{d:g}" for d in depths], rotation=0)
        for ax in axes[len(variants):]:
            ax.set_visible(False)
        figure.suptitle(title, fontsize="large")
    plot = Plot(name=name, title=title, figure=figure, data=summary.rename(columns={"variant": "series"}),
                caption="Each cell: the share of passkeys recovered; a grey cell names the status of a point "
                        "that produced no accuracy.")
    return _save(plot, out_dir)


def plot_pareto(frame: pd.DataFrame, out_dir: Path, palette: Palette) -> Plot:
    """Speed against accuracy, one point per configuration, the non-dominated ones joined (up and to the left
    is better: fast and accurate). Accuracy is taken at each task's largest evaluated N; speed at one N for every
    variant of a task (the retrieval N if all measured it, else the largest N all measured), named in the label."""
    name, title = "pareto", "Speed / accuracy trade-off"
    speed = tables.speed_summary(frame)
    retrieval = tables.retrieval_summary(frame)
    if speed.empty or retrieval.empty:
        return _skip(name, title, f"needs both speed and retrieval rows (speed: {len(speed)}, "
                                  f"retrieval: {len(retrieval)})")
    speed = speed[(speed["status"] == "ok") & speed["latency_median_ms"].notna()]
    if "pass" in speed and (speed["pass"] == "forward").any():
        speed = speed[speed["pass"] == "forward"]
    points = []

    def matched_seq_len(variants: list[str], preferred: float | None) -> int | None:
        """The N at which every variant has an ok forward speed point: `preferred` if so, else the largest."""
        shared = None
        for variant in variants:
            measured = set(speed.loc[speed["variant"] == variant, "seq_len"].dropna().astype(int))
            shared = measured if shared is None else shared & measured
        if not shared:
            return None
        return int(preferred) if preferred is not None and int(preferred) in shared else max(shared)

    for task, rows in retrieval.groupby("task", sort=True):
        seq_len = rows["seq_len"].dropna().max() if rows["seq_len"].notna().any() else None
        if seq_len is not None:  # averaging accuracy over several N would mix different difficulties
            rows = rows[rows["seq_len"] == seq_len]
        with_speed = [v for v in rows["variant"].unique() if (speed["variant"] == v).any()]
        matched = matched_seq_len(with_speed, seq_len)
        for variant, group in rows.groupby("variant", sort=False):
            accuracy = group["accuracy"].to_numpy(dtype=float)
            weights = group["count"].fillna(1.0).to_numpy(dtype=float)
            valid = ~np.isnan(accuracy)
            if not valid.any():
                continue
            mean = float(np.average(accuracy[valid], weights=weights[valid] if weights[valid].sum() > 0 else None))
            measured = speed[speed["variant"] == variant]
            if measured.empty:
                continue
            # One N for every variant of the task, so the x axis compares like with like; each variant's own
            # largest N only when no N is shared (the label then lists them).
            at_n = measured[measured["seq_len"] == matched] if matched is not None else measured.iloc[0:0]
            chosen = (at_n if len(at_n) else measured.sort_values("seq_len").tail(1)).iloc[0]
            points.append(dict(task=task, series=variant, x=float(chosen["latency_median_ms"]), y=mean,
                               speed_seq_len=int(chosen["seq_len"]), retrieval_seq_len=seq_len))
    if not points:
        return _skip(name, title, "no variant has both an ok speed point and a retrieval accuracy (the join is on "
                                  "mechanism, backend and params)")
    data = pd.DataFrame(points)
    tasks = list(dict.fromkeys(data["task"]))
    with _theme():
        figure = _new_figure(4.8 * len(tasks) + 3.0, 4.0)
        axes = figure.subplots(1, len(tasks), squeeze=False)[0]
        for ax, task in zip(axes, tasks):
            task_points = data[data["task"] == task].sort_values("x")
            frontier, best = [], -math.inf
            for _, point in task_points.iterrows():
                if point["y"] > best:
                    frontier.append(point)
                    best = point["y"]
            if len(frontier) > 1:
                ax.step([p["x"] for p in frontier], [p["y"] for p in frontier], where="post", color="0.6",
                        linewidth=1.0, zorder=1)
            for _, point in task_points.iterrows():
                style = palette[point["series"]]
                ax.plot([point["x"]], [point["y"]], marker=style.marker, color=style.color, markersize=9,
                        linestyle="none", zorder=3)
            ax.set_xscale("log")
            _plain_log_labels(ax.xaxis)
            ax.set_ylim(-0.03, 1.08)
            ns = sorted(set(task_points["speed_seq_len"]))
            n_text = f"N={ns[0]}" if len(ns) == 1 else "N=" + "/".join(str(n) for n in ns)
            ax.set_xlabel(f"forward latency (ms, log; {n_text})")
            n_retrieval = task_points["retrieval_seq_len"].dropna()
            at = f" at N={int(n_retrieval.iloc[0])}" if len(n_retrieval) else ""
            ax.set_ylabel(f"{task} accuracy{at} (all distances)")
            ax.set_title(task, fontsize="medium")
        handles = [Line2D([], [], color=palette[v].color, marker=palette[v].marker, linestyle="none")
                   for v in palette.sorted(data["series"].unique())]
        labels = palette.sorted(data["series"].unique())
        handles.append(Line2D([], [], color="0.6"))
        labels.append("Pareto frontier")
        figure.legend(handles, labels, loc="outside lower center", ncols=2, fontsize="small")
        figure.suptitle(title, fontsize="large")
    plot = Plot(name=name, title=title, figure=figure, data=data,
                caption="One point per configuration: retrieval accuracy at the task's largest evaluated N "
                        "(count-weighted over every distance bucket) against forward latency at one N for all "
                        "variants: that N if every variant's speed was measured there, else the largest N all of "
                        "them measured (the x label names it). Up and to the left is better.")
    return _save(plot, out_dir)


# ------------------------------------------------------------------------------------------- probe plot

PROBE_DODGE = 0.09  # markers of different variants in one bucket sit this far apart (bucket units), not on top


def plot_probe(frame: pd.DataFrame, out_dir: Path, palette: Palette) -> Plot:
    """The training-free probe: per distance bucket, the share of (query, head) pairs whose key's value came back
    (markers), over the share the spec's pattern predicts (a wide pale step in the same colour). They coincide
    unless a backend breaks the spec; a bucket with mismatches is marked."""
    name, title = "probe", "Probe: planted keys recovered by distance (measured vs spec)"
    summary = tables.probe_summary(frame)
    if summary.empty:
        return _skip(name, title, "no probe rows in the store")
    measured = summary[summary["direction"].notna() & summary["distance_lo"].notna()]
    not_run = summary[~summary.index.isin(measured.index)]
    if measured.empty:
        reasons = "; ".join(f"{v}: {s} ({r})" for v, s, r in zip(not_run["variant"], not_run["status"],
                                                                  not_run["reason"]))
        return _skip(name, title, f"no probe variant produced buckets ({reasons})")
    panels = list(measured.groupby(["direction", "seq_len"], sort=False, dropna=False))
    panels.sort(key=lambda item: (item[0][0] != "past", item[0][1]))  # past keys first
    drawn: list[dict] = []
    variants_seen: list[str] = []
    mismatched = False
    with _theme():
        figure = _new_figure(max(5.8 * len(panels), 8.0), 5.0)
        axes = figure.subplots(1, len(panels), squeeze=False)[0]
        for ax, ((direction, seq_len), panel) in zip(axes, panels):
            buckets = (panel[["distance_lo", "distance_hi", "bucket"]].drop_duplicates()
                       .sort_values(["distance_lo", "distance_hi"]))
            position = {label: i for i, label in enumerate(buckets["bucket"])}
            variants = palette.sorted(panel["variant"].unique())
            for k, variant in enumerate(variants):
                style = palette[variant]
                points = panel[panel["variant"] == variant].assign(
                    x=lambda rows: rows["bucket"].map(position)).sort_values("x")
                variants_seen.append(variant)
                # The prediction: wide and pale, so the measured markers on top read as "on the line" or not.
                ax.plot(points["x"], points["reachable_fraction"], drawstyle="steps-mid", color=style.color,
                        linewidth=6, alpha=0.25, solid_capstyle="butt", zorder=2)
                offset = (k - (len(variants) - 1) / 2) * PROBE_DODGE
                # Markers only: the step is the line; a line between markers would cut across the steps.
                ax.plot(points["x"] + offset, points["accuracy"], color=style.color, marker=style.marker,
                        linestyle="none", markersize=6, zorder=3)
                for _, point in points.iterrows():
                    drawn.append(dict(series=variant, direction=direction, seq_len=seq_len, bucket=point["bucket"],
                                      x=float(point["x"]), y=float(point["accuracy"]),
                                      predicted=float(point["reachable_fraction"]),
                                      mismatches=point["mismatches"], status=point["status"]))
                    if pd.notna(point["mismatches"]) and point["mismatches"] > 0:
                        mismatched = True
                        ax.plot([point["x"] + offset], [point["accuracy"]], marker=STATUS_MARKERS["wrong"],
                                markersize=12, markerfacecolor="none", markeredgecolor="#D55E00",
                                markeredgewidth=2.0, linestyle="none", zorder=4, clip_on=False)
                        ax.annotate(f"{int(point['mismatches'])}", (point["x"] + offset, point["accuracy"]),
                                    xytext=(6, 6), textcoords="offset points", fontsize="x-small", color="#D55E00")
            ax.set_xticks(range(len(position)))
            ax.set_xticklabels(list(position), rotation=30 if len(position) > 6 else 0)
            ax.set_xlim(-0.6, len(position) - 0.4)
            ax.set_ylim(-0.03, 1.05)
            sign = "query - key" if direction == "past" else "key - query"
            ax.set_xlabel(f"distance {sign} (tokens, inclusive bucket)")
            ax.set_ylabel("share of (query, head) pairs recovered")
            causal = panel["causal"].dropna()
            causal_text = ", causal" if len(causal) and bool(causal.iloc[0]) else ""
            n_text = f", N={int(seq_len)}" if pd.notna(seq_len) else ""
            ax.set_title(f"{direction} keys{n_text}{causal_text}", fontsize="medium")
        handles, labels = [], []
        for variant in palette.sorted(set(variants_seen)):
            style = palette[variant]
            handles.append(Line2D([], [], color=style.color, marker=style.marker, linestyle="none"))
            labels.append(f"{variant}: measured")
        handles.append(Line2D([], [], color="0.3", linewidth=6, alpha=0.25))
        labels.append("spec's prediction (pale step, its colour)")
        if mismatched:
            handles.append(Line2D([], [], marker=STATUS_MARKERS["wrong"], markerfacecolor="none",
                                  markeredgecolor="#D55E00", markeredgewidth=2.0, linestyle="none", markersize=10))
            labels.append("bucket with mismatches (count written)")
        for variant, status in zip(not_run["variant"], not_run["status"]):
            handles.append(Line2D([], [], color=palette[variant].color, marker=STATUS_MARKERS.get(status, "x"),
                                  linestyle="none", markersize=9, markeredgewidth=2.0))
            labels.append(f"{variant}: {status}, not probed")
            drawn.append(dict(series=variant, status=status, x=math.nan, y=math.nan))
        figure.legend(handles, labels, loc="outside lower center", ncols=2, fontsize="small")
        figure.suptitle(title, fontsize="large")
    caption = ("Each marker: the share of (query, head) pairs at that distance whose planted key's value one "
               "attention layer returned (exact, no training). Pale step: the share the spec's pattern predicts. "
               "A marker off its step is a backend that disagrees with the spec; those buckets are circled in "
               "vermilion with their mismatch count. Markers of different variants are spread slightly within a "
               "bucket so equal values stay visible.")
    if len(not_run):
        caption += " Not probed: " + "; ".join(f"{v} ({s}: {r})" for v, s, r in zip(
            not_run["variant"], not_run["status"], not_run["reason"])) + "."
    plot = Plot(name=name, title=title, caption=caption, figure=figure, data=pd.DataFrame(drawn))
    return _save(plot, out_dir)


# ------------------------------------------------------------------------------------- distributed plot

def _point_status(status: str) -> str:
    """A distributed point's status for its marker: the first failed rank status, 'incomplete' for missing ranks."""
    parts = [part for part in str(status).split("+") if part != "ok"]
    if not parts:
        return "ok"
    return "incomplete" if parts[0].startswith("missing") else parts[0]


def plot_distributed(frame: pd.DataFrame, out_dir: Path, palette: Palette) -> Plot:
    """Sequence-parallel scaling: the slowest rank's median latency and the busiest rank's bytes sent per call
    (with the spec's prediction, dashed) against the total sequence length, one line per mechanism."""
    name, title = "distributed", "Sequence-parallel attention: latency and communication against N"
    summary = tables.distributed_summary(frame)
    if summary.empty:
        return _skip(name, title, "no distributed rows in the store (scripts/bench_distributed.py writes them)")
    points = summary.assign(status=summary["status"].map(_point_status),
                            bytes_sent_max_mib=summary["bytes_sent_max"] / tables.MIB,
                            predicted_mib=summary["predicted_bytes_sent_max"] / tables.MIB)
    metrics = [_Metric("latency_max_ms", "slowest rank's median latency (ms, log)"),
               _Metric("bytes_sent_max_mib", "bytes sent per call by the busiest rank (MiB)")]
    if not points[[m.column for m in metrics]].notna().any().any():
        counts = ", ".join(f"{status}: {count}" for status, count in summary["status"].value_counts().items())
        return _skip(name, title, f"no distributed point has every rank ok ({counts})")
    panels, common = _facets(points, tables.DISTRIBUTED_SETTING_COLUMNS)
    drawn: list[dict] = []
    statuses: set[str] = set()
    variants: list[str] = []
    with _theme():
        figure = _new_figure(5.2 * len(metrics) + 3.4, 4.2 * len(panels) + 0.6)
        axes = figure.subplots(len(panels), len(metrics), squeeze=False)
        for row, (panel_title, panel) in enumerate(panels):
            for col, metric in enumerate(metrics):
                ax = axes[row][col]
                drawn += _draw_scaling_panel(ax, panel, metric, palette, False, statuses, variants, panel_title)
                if metric.column == "bytes_sent_max_mib":
                    for variant in palette.sorted(panel["variant"].unique()):
                        style = palette[variant]
                        predicted = panel[panel["variant"] == variant].dropna(subset=["predicted_mib"])
                        predicted = predicted.sort_values("seq_len")
                        ax.plot(predicted["seq_len"], predicted["predicted_mib"], color=style.color,
                                linestyle="--", marker=style.marker, markerfacecolor="none", markersize=9,
                                linewidth=1.0, zorder=2)
                        drawn += [dict(series=f"{variant} predicted", panel=panel_title, metric="predicted_mib",
                                       x=float(x), y=float(y), status="predicted")
                                  for x, y in zip(predicted["seq_len"], predicted["predicted_mib"])]
                    values = pd.concat([panel["bytes_sent_max_mib"], panel["predicted_mib"]]).dropna()
                    # A rank that sends nothing (every segment inside its shard) is a real 0: keep a linear
                    # axis then, since a log axis would drop it.
                    if len(values) and (values > 0).all():
                        ax.set_yscale("log")
                        _plain_log_labels(ax.yaxis)
                    else:
                        ax.set_ylim(bottom=0)
                else:
                    ax.set_yscale("log")
                    _plain_log_labels(ax.yaxis)
                _seq_len_axis(ax, panel["seq_len"])
                ax.set_xlabel("total sequence length N (tokens, all ranks)")
                ax.set_ylabel(metric.label)
                ax.set_title(panel_title, fontsize="medium")
        handles, labels = [], []
        for variant in palette.sorted(variants):
            style = palette[variant]
            handles.append(Line2D([], [], color=style.color, marker=style.marker, linestyle=style.linestyle))
            labels.append(variant)
        handles.append(Line2D([], [], color="0.3", marker="o", markerfacecolor="none", linestyle="--"))
        labels.append("predicted bytes (spec; its colour)")
        for status in sorted(statuses):
            handles.append(Line2D([], [], color="0.3", marker=STATUS_MARKERS.get(status, "x"), linestyle="none",
                                  markersize=9, markeredgewidth=2.0))
            labels.append(f"{status} (failed point)")
        figure.legend(handles, labels, loc="outside lower center", ncols=2 if len(labels) > 3 else len(labels),
                      fontsize="small")
        figure.suptitle(title + (f"\n{common}" if common else ""), fontsize="large")
    mismatched = summary[summary["bytes_match"].eq(False)]
    caption = ("Left: the largest median latency over the ranks of each point (a step waits for its slowest rank). "
               "Right: bytes the busiest rank sends in one call (forward + backward payload of its collectives), "
               "solid, over the bytes attention_impls.distributed.predicted_bytes_sent gives for it, dashed with "
               "hollow markers; a solid marker inside its hollow one means counted = predicted. Failed points are "
               "marked where their line stopped.")
    if len(mismatched):
        caption += f" {len(mismatched)} point(s) sent other than predicted (see the table's bytes_match)."
    plot = Plot(name=name, title=title, caption=caption, figure=figure, data=pd.DataFrame(drawn))
    return _save(plot, out_dir)


# -------------------------------------------------------------------------------------- pattern picture

def _pattern_configs(frame: pd.DataFrame) -> list[dict]:
    """Distinct (mechanism, params) in the store, with the largest N and heads they ran at and causality."""
    if frame.empty or "mechanism" not in frame:
        return []
    configs: dict[str, dict] = {}
    for _, row in frame.iterrows():
        mechanism = row.get("mechanism")
        if not isinstance(mechanism, str):
            continue
        params = parse_params(row.get("params"))
        label = variant_label(mechanism, None, params)
        entry = configs.setdefault(label, dict(label=label, mechanism=mechanism, params=params, seq_len=0,
                                               heads=0, causal=set()))
        for key in ("seq_len", "heads"):
            value = pd.to_numeric(row.get(key), errors="coerce")
            if pd.notna(value):
                entry[key] = max(entry[key], int(value))
        causal = row.get("causal")
        if isinstance(causal, (bool, np.bool_)):
            entry["causal"].add(bool(causal))
    return list(configs.values())


def _pattern(params, positions: int, heads: int, num_heads: int, causal: bool) -> np.ndarray:
    """(heads, queries, keys) multiplicity of the first `heads` of `num_heads`: how many times each pair is
    scored (0 = not scored), from the mechanism's own index function."""
    query = torch.arange(positions)[:, None]
    key = torch.arange(positions)[None, :]
    multiplicity = get_mechanism(params).multiplicity(params, positions, num_heads, causal)
    return np.stack([multiplicity(query, key, torch.tensor(head)).to(torch.int32).numpy() for head in range(heads)])


def plot_attention_patterns(frame: pd.DataFrame, out_dir: Path, palette: Palette,
                            max_positions: int = MAX_PATTERN_POSITIONS) -> Plot:
    """Which keys each query scores, per head (dilated heads differ by offset), shaded by multiplicity."""
    name, title = "attention_patterns", "Attention patterns: which keys each query scores"
    configs = _pattern_configs(frame)
    if not configs:
        return _skip(name, title, "no rows name a mechanism")
    pictures = []
    for config in configs:
        try:
            params = make_params(config["mechanism"], **config["params"])
        except (TypeError, ValueError) as error:
            pictures.append(dict(config, error=str(error)))
            continue
        seq_len = config["seq_len"] or max_positions
        mechanism = get_mechanism(params)
        distinct, wanted = mechanism.picture_size(params, config["heads"] or None)
        num_heads = config["heads"] or distinct
        heads = min(distinct, num_heads, MAX_PATTERN_HEADS)
        positions = max(8, min(seq_len, wanted, max_positions))
        causal = config["causal"] == {True}
        pictures.append(dict(config, per_head=mechanism.per_head, positions=positions, heads_shown=heads,
                             causal=causal, grid=_pattern(params, positions, heads, num_heads, causal)))
    drawable = [p for p in pictures if "grid" in p]
    if not drawable:
        return _skip(name, title, "; ".join(f"{p['label']}: {p['error']}" for p in pictures))
    top = max(int(p["grid"].max()) for p in drawable)
    # White = not scored, then darker with each branch that scores the pair.
    colours = (["#ffffff"] + list(sns.color_palette("Blues", top + 1).as_hex()[1:]) if top > 1
               else ["#ffffff", "#2171b5"])
    cmap = ListedColormap(colours)
    norm = BoundaryNorm(np.arange(-0.5, top + 1.5), cmap.N)
    panels = [(picture, head) for picture in drawable for head in range(picture["heads_shown"])]
    columns = min(len(panels), MAX_PATTERN_HEADS)
    rows = math.ceil(len(panels) / columns)
    # Big enough for about 3 pixels per position, so a dilation grid does not alias into a blur.
    side = max(2.8, max(p["positions"] for p in drawable) * 3 / DPI)
    data = []
    with _theme():
        figure = _new_figure(side * columns + 1.2, (side + 0.7) * rows + 0.4)
        axes = figure.subplots(rows, columns, squeeze=False).ravel()
        image = None
        for ax, (picture, head) in zip(axes, panels):
            n = picture["positions"]
            full = picture["seq_len"]
            shown = f"positions 0-{n - 1}" + (f" of N={full}" if full and full > n else "")
            grid = picture["grid"][head]
            image = ax.imshow(grid, cmap=cmap, norm=norm, interpolation="nearest", origin="upper",
                              extent=(-0.5, n - 0.5, n - 0.5, -0.5))
            ax.grid(False)
            head_text = f"head {head}" if picture["per_head"] else "every head"
            ax.set_title(f"{picture['label']}{' causal' if picture['causal'] else ''}\n{head_text}; {shown}",
                         fontsize="small")
            ax.set_xlabel("key position")
            ax.set_ylabel("query position")
            data.append(dict(series=picture["label"], head=head, positions=n, scored_pairs=int((grid > 0).sum()),
                             multiplicity_sum=int(grid.sum()), max_multiplicity=int(grid.max())))
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        if image is not None:
            bar = figure.colorbar(image, ax=axes.tolist(), ticks=range(top + 1), shrink=0.5)
            bar.set_label("branches scoring the pair (0 = not scored)")
        figure.suptitle(title, fontsize="large")
    plot = Plot(name=name, title=title, figure=figure, data=pd.DataFrame(data),
                caption="Exact pattern from attention_impls.patterns for each configuration in the store, over "
                        f"at most the first {max_positions} positions so single cells stay visible. Dilated: "
                        "head h uses offset h mod r in each branch; a pair scored by c branches is shaded c.")
    return _save(plot, out_dir)


def plot_max_seq_len(frame: pd.DataFrame, out_dir: Path, palette: Palette) -> Plot:
    """One bar per search: the largest N that fitted (log2 axis), labelled with what stopped the search."""
    name, title = "max_seq_len", "Largest sequence length that fits, and what limited it"
    searches = tables.max_seq_len_summary(frame)
    if searches.empty:
        return _skip(name, title, "no max_seq_len search ran (experiment=max_seq_len)")
    settings = [c for c in ("pass", "dtype", "causal") if searches[c].nunique(dropna=False) > 1]
    labels = [variant + "".join(f", {c}={tables.format_value(row[c])}" for c in settings)
              for variant, (_, row) in zip(searches["variant"], searches.iterrows())]
    fitted = searches["max_seq_len"].fillna(0).astype(int)
    with _theme():
        figure = _new_figure(8.0, 0.9 + 0.55 * len(searches))
        ax = figure.subplots()
        y = np.arange(len(searches))[::-1]
        # a search where even the first N did not fit gets a stub bar at 1, labelled, not a missing one
        ax.barh(y, np.maximum(fitted, 1), color=[palette[v].color for v in searches["variant"]], height=0.6)
        for yi, n, limit, worst in zip(y, fitted, searches["limited_by"], searches["first_failing_seq_len"]):
            note = f"{n:,}  (reached the limit)" if limit == "limit" else \
                f"{n:,}  (N={int(worst):,}: {limit})" if pd.notna(worst) else f"{n:,}"
            ax.text(max(n, 1) * 1.08, yi, note, va="center", fontsize="small")
        from matplotlib.ticker import FixedLocator, NullLocator

        ax.set_xscale("log", base=2)
        left = max(1, int(fitted[fitted > 0].min()) // 4 if (fitted > 0).any() else 1)
        right = max(2, int(fitted.max())) * 16  # room for the label right of the longest bar
        ax.set_xlim(left=left, right=right)
        ticks = [4 ** e for e in range(16) if left <= 4 ** e <= right]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([_tokens(t) for t in ticks])
        ax.set_yticks(y, labels)
        ax.set_xlabel("largest N that fits (tokens)")
        figure.suptitle(title, fontsize="large", x=0.02, ha="left")
    plot = Plot(name=name, title=title, figure=figure,
                data=searches[["variant", "pass", "dtype", "causal", "max_seq_len", "first_failing_seq_len",
                               "limited_by"]],
                caption="Doubling from benchmark.max_seq_len.start, then bisection to its resolution. In brackets: "
                        "the first N that did not fit and why (a status such as oom or timeout, or latency_budget: "
                        "it ran, slower than benchmark.max_seq_len.latency_budget_s); 'reached the limit': every N "
                        "up to benchmark.max_seq_len.limit fitted.")
    return _save(plot, out_dir)


PLOTS = (plot_latency, plot_memory, plot_throughput, plot_retrieval_accuracy, plot_learning_curves, plot_retrieval_noise,
         plot_passkey_heatmap, plot_pareto,
         plot_max_seq_len, plot_probe, plot_distributed, plot_attention_patterns)


def make_plots(frame: pd.DataFrame, out_dir: Path, palette: Palette | None = None) -> list[Plot]:
    """Every plot of the report (skipped ones carry their reason); figures are closed after saving."""
    palette = palette or Palette.from_frame(frame)
    return [plot(frame, out_dir, palette) for plot in PLOTS]
