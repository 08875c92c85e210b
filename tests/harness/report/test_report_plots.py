from pathlib import Path

import pandas as pd
import pytest

from harness.report import plots
from harness.report.palette import Palette


@pytest.fixture(scope="module")
def rendered(fixture_rows, tmp_path_factory) -> dict[str, plots.Plot]:
    out = tmp_path_factory.mktemp("plots")
    return {plot.name: plot for plot in plots.make_plots(fixture_rows, out)}


def test_every_plot_is_written_as_png_and_svg(rendered):
    assert set(rendered) == {"latency_vs_seq_len", "memory_vs_seq_len", "throughput", "retrieval_accuracy",
                             "passkey_heatmap", "pareto", "attention_patterns"}
    for plot in rendered.values():
        assert plot.skipped is None, plot.name
        assert sorted(p.suffix for p in plot.paths) == [".png", ".svg"]
        for path in plot.paths:
            assert path.stat().st_size > 10_000, path
        assert plot.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_latency_plot_draws_every_variant_and_marks_failed_points(rendered, fixture_rows):
    plot = rendered["latency_vs_seq_len"]
    data = plot.data
    variants = Palette.from_frame(fixture_rows[fixture_rows["kind"] == "speed"]).order
    assert set(variants) <= set(data["series"])
    assert {"O(N)", "O(N²)"} <= set(data["series"])
    # The dense math OOM at N=4096 sits where its line stopped: at its N=2048 latency.
    oom = data[(data["status"] == "oom") & (data["panel"] == "pass=forward")]
    stop = data[(data["series"] == "dense (math)") & (data["x"] == 2048) & (data["panel"] == "pass=forward")]
    assert list(oom["x"]) == [4096] and oom["y"].iloc[0] == pytest.approx(stop["y"].iloc[0])
    assert {"timeout", "unsupported", "wrong"} <= set(data["status"])
    # A variant that never ran (xformers on CPU) is still present, as failed points only.
    xformers = data[data["series"].str.contains("xformers", regex=False)]
    assert len(xformers) == 10 and (xformers["status"] == "unsupported").all()
    axes = plot.figure.axes
    assert axes[0].get_xscale() == "log" and axes[0].get_yscale() == "log"
    assert "ms" in axes[0].get_ylabel() and "tokens" in axes[0].get_xlabel()
    legend = [t.get_text() for t in plot.figure.legends[0].get_texts()]
    assert "dense (sdpa)" in legend and "oom (failed point)" in legend and "ideal O(N²)" in legend


def test_throughput_plot_shows_the_measured_ceiling(rendered):
    data = rendered["throughput"].data
    ceiling = data[data["series"] == "matmul ceiling"]
    assert not ceiling.empty and ceiling["y"].iloc[0] == pytest.approx(150.0)
    assert {"tokens_per_s", "useful_gflops_per_s"} <= set(data["metric"])


def test_retrieval_plots_have_a_line_per_variant_and_a_heatmap_cell_per_depth_and_context(rendered):
    accuracy = rendered["retrieval_accuracy"].data
    assert {"dense (sdpa)", "sliding_window w=64 (chunked)"} <= set(accuracy["series"])
    assert set(accuracy["task"]) == {"mqar", "passkey"}
    assert (accuracy["status"] == "oom").any()
    heat = rendered["passkey_heatmap"].data
    assert len(heat) == 45 and set(heat["depth"]) == {0.0, 0.25, 0.5, 0.75, 1.0}
    assert len(rendered["passkey_heatmap"].figure.axes) >= 3


def test_pareto_joins_speed_and_retrieval_per_configuration(rendered):
    data = rendered["pareto"].data
    assert set(data["task"]) == {"mqar", "passkey"}
    assert set(data["series"]) == {"dense (sdpa)", "sliding_window w=64 (chunked)",
                                   "dilated w=[64,128,256] r=[1,2,4] (gather)"}
    mqar = data[data["task"] == "mqar"].set_index("series")
    assert mqar.loc["dense (sdpa)", "speed_seq_len"] == 4096  # speed taken at the retrieval's N
    assert mqar.loc["dense (sdpa)", "y"] == pytest.approx(0.97)


def test_attention_pattern_counts_match_the_exact_pair_formula(rendered):
    from attention_impls import make_params
    from attention_impls.patterns import useful_pairs

    data = rendered["attention_patterns"].data.set_index(["series", "head"])
    window = data.loc[("sliding_window w=64", 0)]
    params = make_params("sliding_window", window=64)
    assert window["scored_pairs"] == useful_pairs(params, int(window["positions"]), 1, causal=False)
    dilated = make_params("dilated", segment_lengths=[64, 128, 256], dilation_rates=[1, 2, 4])
    heads = data.loc["dilated w=[64,128,256] r=[1,2,4]"]
    assert len(heads) == 4 and heads["max_multiplicity"].max() == 3
    n = int(heads["positions"].iloc[0])
    assert heads["multiplicity_sum"].sum() == useful_pairs(dilated, n, 4, causal=False)


def test_plots_skip_with_a_reason_when_their_data_is_absent(tmp_path):
    empty = pd.DataFrame(columns=["experiment", "kind", "status", "reason", "config_hash"])
    for plot in plots.make_plots(empty, tmp_path):
        assert plot.skipped and plot.paths == [] and plot.figure is None
    assert list(tmp_path.iterdir()) == []


def test_a_store_of_mostly_failed_points_still_plots_and_an_all_failed_one_says_why(fixture_rows, tmp_path):
    speed = fixture_rows[fixture_rows["kind"] == "speed"].copy()
    # Keep one ok point per variant and pass (the smallest N); everything else ran out of memory.
    speed.loc[speed["seq_len"] > 256, "status"] = "oom"
    palette = Palette.from_frame(speed)
    plot = plots.plot_latency(speed, tmp_path, palette)
    assert plot.skipped is None and plot.png.exists()
    drawn = plot.data[~plot.data["series"].str.startswith("O(")]
    assert (drawn.loc[drawn["x"] > 256, "status"] == "oom").all() and (drawn["status"] == "oom").sum() == 56
    speed["status"] = "oom"
    everything_failed = plots.plot_latency(speed, tmp_path / "none", palette)
    assert everything_failed.skipped and "oom: 70" in everything_failed.skipped
    memory = plots.plot_memory(fixture_rows.drop(columns=["peak_mem_bytes"]), tmp_path, palette)
    assert memory.skipped and "peak_mem_mib" in memory.skipped
    pareto = plots.plot_pareto(speed, tmp_path, palette)
    assert pareto.skipped and "retrieval" in pareto.skipped
