import pandas as pd
import pytest

from harness.report import plots
from harness.report.palette import Palette

PLOT_NAMES = {"latency_vs_seq_len", "memory_vs_seq_len", "throughput", "retrieval_accuracy", "learning_curves",
              "retrieval_noise", "passkey_heatmap",
              "pareto", "max_seq_len", "probe", "distributed", "attention_patterns"}


@pytest.fixture(scope="module")
def rendered(fixture_rows, tmp_path_factory) -> dict[str, plots.Plot]:
    out = tmp_path_factory.mktemp("plots")
    return {plot.name: plot for plot in plots.make_plots(fixture_rows, out)}


def test_every_plot_is_written_as_png_and_svg(rendered):
    assert set(rendered) == PLOT_NAMES
    for plot in rendered.values():
        assert plot.skipped is None, (plot.name, plot.skipped)
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


def test_throughput_plot_shows_the_measured_ceiling_on_a_usable_log_axis(rendered):
    plot = rendered["throughput"]
    data = plot.data
    ceiling = data[data["series"] == "matmul ceiling"]
    assert not ceiling.empty and ceiling["y"].iloc[0] == pytest.approx(150.0)
    assert {"tokens_per_s", "useful_gflops_per_s"} <= set(data["metric"])
    flops_axis = next(ax for ax in plot.figure.axes if "GFLOP" in ax.get_ylabel())
    low, high = flops_axis.get_ylim()
    drawn = data[(data["metric"] == "useful_gflops_per_s") & (data["status"] == "ok")]["y"]
    assert 0 < low <= drawn.min() and high >= 150.0  # every point and the ceiling inside a positive log range


def test_retrieval_plot_draws_accuracy_reachable_fraction_reach_and_failed_runs(rendered):
    data = rendered["retrieval_accuracy"].data
    assert {"dense (sdpa)", "sliding_window w=64 (chunked)"} <= set(data["series"])
    assert set(data["task"]) == {"mqar", "passkey"}
    assert "sliding_window w=64 (chunked) reachable" in set(data["series"])
    reach = data[data["series"] == "sliding_window w=64 (chunked) theoretical reach"]
    assert not reach.empty and set(reach["x"]) == {130.0}
    assert "dense (sdpa) theoretical reach" not in set(data["series"])  # reaches the whole sequence
    failed = data[data["status"] == "oom"]
    assert len(failed) == 1 and failed["series"].iloc[0].startswith("dilated")
    legend = [t.get_text() for t in rendered["retrieval_accuracy"].figure.legends[0].get_texts()]
    assert any("not evaluated" in text for text in legend) and "theoretical reach (its colour)" in legend


def test_passkey_heatmap_has_a_cell_per_depth_and_context(rendered):
    heat = rendered["passkey_heatmap"].data
    assert len(heat) == 30 and set(heat["depth"]) == {0.0, 0.25, 0.5, 0.75, 1.0}
    assert len(rendered["passkey_heatmap"].figure.axes) >= 2


def test_pareto_joins_speed_and_retrieval_per_configuration(rendered):
    data = rendered["pareto"].data
    assert set(data["task"]) == {"mqar", "passkey"}
    mqar = data[data["task"] == "mqar"].set_index("series")
    assert set(mqar.index) == {"dense (sdpa)", "sliding_window w=64 (chunked)",
                               "dilated w=[64,128,256] r=[1,2,4] (gather)"}
    assert mqar.loc["dense (sdpa)", "speed_seq_len"] == 4096  # speed taken at the retrieval's N
    assert set(mqar["speed_seq_len"]) == {4096}  # one matched N for every variant of the task
    assert set(data.loc[data["task"] == "passkey", "speed_seq_len"]) == {2048}
    assert mqar.loc["dense (sdpa)", "y"] == pytest.approx(0.97)
    passkey = data[data["task"] == "passkey"]
    assert set(passkey["retrieval_seq_len"]) == {2048}  # accuracy at the largest evaluated N only


def test_probe_plot_draws_measured_over_predicted_and_marks_mismatches(rendered):
    plot = rendered["probe"]
    data = plot.data
    measured = data[data["x"].notna()]
    assert set(measured["direction"]) == {"past", "future"}
    assert {"dense (sdpa)", "sliding_window w=8 (chunked)", "sliding_window w=8 (masked_sdpa)",
            "dilated w=[16,64] r=[1,2] (gather)"} == set(measured["series"])
    ok = measured[measured["status"] == "ok"]
    assert (ok["y"] == ok["predicted"]).all()
    off = measured[measured["mismatches"] > 0]
    assert len(off) == 2 and (off["series"] == "sliding_window w=8 (masked_sdpa)").all()
    assert (off["y"] != off["predicted"]).all()
    assert len(plot.figure.axes) == 2  # one panel per direction
    legend = [t.get_text() for t in plot.figure.legends[0].get_texts()]
    assert "bucket with mismatches (count written)" in legend
    assert any("unsupported, not probed" in text for text in legend)
    assert "not probed" in plot.caption.lower() or "Not probed" in plot.caption


def test_distributed_plot_draws_latency_and_bytes_with_predictions_and_failed_points(rendered):
    plot = rendered["distributed"]
    data = plot.data
    assert {"latency_max_ms", "bytes_sent_max_mib", "predicted_mib"} <= set(data["metric"])
    series = set(data["series"])
    assert {"dense (sequence_parallel)", "dilated w=[512,1536,4096] r=[1,2,4] (sequence_parallel)"} <= series
    assert "dense (sequence_parallel) predicted" in series
    measured = data[(data["metric"] == "bytes_sent_max_mib") & (data["status"] == "ok")]
    predicted = data[data["metric"] == "predicted_mib"]
    joined = measured.merge(predicted, on=["x"], suffixes=("", "_p"))
    joined = joined[joined["series_p"] == joined["series"] + " predicted"]
    assert len(joined) == len(measured) and (joined["y"] == joined["y_p"]).all()
    # The dense N=8192 point failed on both ranks: drawn as a failed point where its line stopped.
    failed = data[(data["metric"] == "latency_max_ms") & (data["status"] != "ok")]
    assert list(failed["x"]) == [8192] and failed["status"].iloc[0] == "error"
    last_ok = data[(data["metric"] == "latency_max_ms") & (data["series"] == "dense (sequence_parallel)")
                   & (data["x"] == 4096)]
    assert failed["y"].iloc[0] == pytest.approx(last_ok["y"].iloc[0])


def test_distributed_bytes_axis_stays_linear_when_a_rank_sends_nothing(fixture_rows, tmp_path):
    rows = fixture_rows[fixture_rows["kind"] == "distributed"].copy()
    rows[["bytes_sent_forward", "bytes_sent_backward", "predicted_bytes_sent_forward",
          "predicted_bytes_sent_backward"]] = 0
    plot = plots.plot_distributed(rows, tmp_path, Palette.from_frame(rows))
    bytes_axis = next(ax for ax in plot.figure.axes if "bytes" in ax.get_ylabel())
    assert bytes_axis.get_yscale() == "linear" and plot.png.exists()


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
    dist = fixture_rows[fixture_rows["kind"] == "distributed"].assign(status="oom")
    skipped = plots.plot_distributed(dist, tmp_path, palette)
    assert skipped.skipped and "oom: 8" in skipped.skipped
    probe = fixture_rows[(fixture_rows["kind"] == "probe") & (fixture_rows["status"] == "unsupported")]
    not_probed = plots.plot_probe(probe, tmp_path, palette)
    assert not_probed.skipped and "unsupported" in not_probed.skipped


def test_speed_plots_carry_interquartile_bands_and_mark_noisy_points(rendered):
    latency = rendered["latency_vs_seq_len"].data
    ok = latency[(latency["status"] == "ok") & (latency["metric"] == "latency_median_ms")]
    assert ok["y_lo"].notna().all() and (ok["y_lo"] <= ok["y"]).all() and (ok["y"] <= ok["y_hi"]).all()
    noisy = ok[ok["noisy"]]
    assert list(zip(noisy["series"], noisy["x"])) == [("sliding_window w=64 (chunked)", 1024.0)] * 2  # both passes
    assert ((noisy["y_hi"] - noisy["y_lo"]) / noisy["y"] > 0.25).all()  # samples 0.85-1.15 of the median
    throughput = rendered["throughput"].data
    rates = throughput[(throughput["status"] == "ok") & (throughput["metric"] == "tokens_per_s")]
    assert (rates["y_lo"] <= rates["y"]).all() and (rates["y"] <= rates["y_hi"]).all()
    speedups = latency[latency["metric"] == "speedup_vs_dense"]
    # at each variant's largest ok N: 4096, or 1024 for masked_sdpa (timed out from 2048 on)
    largest = speedups.set_index("series")["x"]
    assert set(largest[largest.index.str.contains("masked_sdpa")]) == {1024.0}
    assert set(largest[~largest.index.str.contains("masked_sdpa")]) == {4096.0}


def test_a_flop_fraction_above_one_is_flagged(rendered, fixture_rows):
    from harness.report.tables import speed_summary

    summary = speed_summary(fixture_rows)
    flagged = summary[summary["above_ceiling"]]
    assert list(zip(flagged["variant"], flagged["seq_len"], flagged["pass"])) == [("dense (sdpa)", 4096, "forward")]
    data = rendered["throughput"].data
    assert list(data.loc[data["status"] == "above_ceiling", "x"]) == [4096.0]


def test_retrieval_points_carry_their_binomial_interval(rendered):
    data = rendered["retrieval_accuracy"].data
    points = data[(data["status"] == "ok") & data["series"].isin(["dense (sdpa)", "sliding_window w=64 (chunked)"])]
    assert points["y_lo"].notna().all() and (points["y_lo"] <= points["y"] + 1e-12).all()
    assert (points["y"] <= points["y_hi"] + 1e-12).all()


def test_max_seq_len_plot_names_what_limited_each_search(rendered):
    data = rendered["max_seq_len"].data
    assert list(data["limited_by"]) == ["latency_budget", "oom", "limit"] or set(data["limited_by"]) == {
        "latency_budget", "oom", "limit"}
    assert int(data.loc[data["limited_by"] == "limit", "max_seq_len"].iloc[0]) == 1048576


def test_speedup_labels_read_as_people_say_them_and_decode_panels_get_their_own_slopes():
    import pandas as pd

    from harness.report.plots import GUIDES, _is_decode, _times

    assert [_times(r) for r in (107.8, 8.02, 4.4, 0.413)] == ["108x", "8x", "4.4x", "0.41x"]
    assert _is_decode(pd.DataFrame({"pass": ["decode", "decode"]}))
    assert not _is_decode(pd.DataFrame({"pass": ["decode", "forward"]}))
    assert [label for _, label, _ in GUIDES[True]] == ["O(1)", "O(N)"]
