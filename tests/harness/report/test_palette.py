import json

import pandas as pd
import pytest

from harness.report.palette import OKABE_ITO, Palette, params_summary, parse_params, variant_label


def test_variant_labels_name_mechanism_params_and_backend():
    assert variant_label("dense", "sdpa", "{}") == "dense (sdpa)"
    assert variant_label("sliding_window", "chunked", json.dumps({"window": 256})) == "sliding_window w=256 (chunked)"
    assert variant_label("sliding_window", "flex", {"window": [128, 0]}) == "sliding_window w=[128,0] (flex)"
    assert variant_label("sliding_window", "flex", {"window": [64, 64]}) == "sliding_window w=64 (flex)"
    dilated = {"segment_lengths": [2048, 4096], "dilation_rates": [1, 2]}
    assert variant_label("dilated", "gather", dilated) == "dilated w=[2048,4096] r=[1,2] (gather)"
    assert variant_label("dilated", None, dilated) == "dilated w=[2048,4096] r=[1,2]"
    assert variant_label("dense", "sdpa", {"scale": 0.5}) == "dense scale=0.5 (sdpa)"


def test_params_parsing_is_tolerant_of_missing_and_strict_about_garbage():
    assert parse_params(None) == {} and parse_params(float("nan")) == {} and parse_params("") == {}
    with pytest.raises(ValueError, match="not JSON"):
        parse_params("window=3")
    with pytest.raises(ValueError, match="JSON object"):
        parse_params("[1, 2]")
    assert params_summary("dense", "{}") == ""


def test_palette_is_ordered_by_mechanism_and_stable_across_lookups(fixture_rows):
    palette = Palette.from_frame(fixture_rows)
    first = palette.order[0]
    assert first.startswith("dense")
    mechanisms = [label.split()[0] for label in palette.order]
    assert mechanisms == sorted(mechanisms, key=["dense", "sliding_window", "dilated"].index)
    assert palette[first] == palette.styles[first]
    assert len({palette[label].color for label in palette.order[:len(OKABE_ITO)]}) == min(len(palette.order),
                                                                                          len(OKABE_ITO))
    # A palette built from a shuffled frame gives every variant the same style.
    shuffled = Palette.from_frame(fixture_rows.sample(frac=1.0, random_state=0))
    assert shuffled.styles == palette.styles
    unseen = palette["dense (new)"]
    assert palette["dense (new)"] == unseen and "dense (new)" in palette.order


def test_styles_stay_distinct_beyond_the_palette_size():
    palette = Palette.from_labels([f"v{i}" for i in range(20)])
    pairs = {(s.color, s.marker, s.linestyle) for s in palette.styles.values()}
    assert len(pairs) == 20
    assert pd.Series([s.color for s in palette.styles.values()]).isin(OKABE_ITO).all()


def test_blocked_head_offsets_are_named_and_the_default_is_not():
    from harness.report.palette import variant_label

    rates = {"segment_lengths": [8, 16], "dilation_rates": [1, 2]}
    assert variant_label("dilated", "gather", {**rates, "head_offsets": "cyclic"}) == variant_label(
        "dilated", "gather", rates) == "dilated w=[8,16] r=[1,2] (gather)"
    assert variant_label("dilated", "gather", {**rates, "head_offsets": "blocked"}) == (
        "dilated w=[8,16] r=[1,2] head_offsets=blocked (gather)")
