import math

import pandas as pd
import pytest

from harness.retrieval.protocol import ceiling, mean_interval, plateaued, select_lr


def test_ceiling_is_reachable_share_plus_chance_on_the_rest():
    assert ceiling(1.0, 0.1) == 1.0
    assert ceiling(0.0, 0.1) == pytest.approx(0.1)
    assert ceiling(0.25, 1 / 16) == pytest.approx(0.25 + 0.75 / 16)
    with pytest.raises(ValueError, match="reachable_share=1.5"):
        ceiling(1.5, 0.1)


@pytest.mark.parametrize("values, patience, min_delta, expected", [
    ([0.1, 0.5, 0.8, 0.80, 0.801, 0.799], 3, 0.005, True),   # last 3 checks gained 0.001 <= 0.005
    ([0.1, 0.5, 0.8, 0.81, 0.82, 0.83], 3, 0.005, False),    # still climbing
    ([0.8, 0.8, 0.8], 3, 0.0, False),                         # too few checks to know
    ([0.8, 0.8, 0.8, 0.8], 3, 0.0, True),
    ([0.9, 0.5, 0.5, 0.5], 3, 0.0, True),                     # fell back: no gain over the best before
])
def test_plateau_rule(values, patience, min_delta, expected):
    assert plateaued(values, patience, min_delta) is expected


def test_mean_interval_is_students_t():
    mean, low, high = mean_interval([0.8, 0.9, 1.0], bounds=(-math.inf, math.inf))
    # sd 0.1, sem 0.1 / sqrt(3), t(0.975, 2) = 4.302653
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert mean == pytest.approx(0.9) and low == pytest.approx(0.9 - half, abs=1e-6)
    assert high == pytest.approx(0.9 + half, abs=1e-6)
    one = mean_interval([0.7])
    assert one[0] == 0.7 and math.isnan(one[1]) and math.isnan(one[2])
    assert mean_interval([0.5, 0.5]) == (0.5, 0.5, 0.5)
    assert all(math.isnan(v) for v in mean_interval([]))
    assert mean_interval([0.99, 1.0, 0.97])[2] == 1.0  # an accuracy's interval stays in [0, 1]


def test_select_lr_competes_at_the_first_seed_and_breaks_ties_low():
    runs = pd.DataFrame({"sweep_id": ["a"] * 5 + ["b"] * 2, "lr": [1e-3, 3e-3, 1e-2, 3e-3, 3e-3, 1e-3, 1e-2],
                         "seed": [0, 0, 0, 1, 2, 4, 4], "val_accuracy": [0.7, 0.9, 0.2, 0.99, 0.98, 0.5, 0.5]})
    kept = select_lr(runs)
    assert kept["a"] == 3e-3 and kept["b"] == 1e-3
    nan = runs.assign(val_accuracy=[float("nan"), 0.1, 0.0, 0.0, 0.0, 0.5, 0.5])  # a failed run never wins
    assert select_lr(nan)["a"] == 3e-3


def test_a_flat_curve_near_chance_is_not_a_plateau():
    from harness.retrieval.protocol import learning_floor

    floor = learning_floor(chance=0.0625, ceiling_value=0.2625, progress=0.25)
    assert floor == pytest.approx(0.1125)
    at_chance = [0.06, 0.065, 0.063, 0.064, 0.062, 0.063]
    assert plateaued(at_chance, 3, 0.005) and not plateaued(at_chance, 3, 0.005, floor=floor)
    assert plateaued([0.1, 0.2, 0.2, 0.2, 0.2], 3, 0.005, floor=floor)
