"""The FLOP model's pair counts equal brute-force counts over small masks (the spec's definition)."""

import itertools

import pytest
import torch

from attention_impls import make_params, patterns, reference, useful_flops


def _brute_window_pairs(n, left, right):
    return sum(1 for p in range(n) for j in range(n) if p - left <= j <= p + right)


@pytest.mark.parametrize("n, left, right", [(1, 0, 0), (5, 2, 2), (7, 10, 0), (9, 0, 3), (16, 3, 15), (6, 40, 40)])
def test_sliding_window_pairs_match_brute_force(n, left, right):
    assert patterns.sliding_window_pairs(n, left, right) == _brute_window_pairs(n, left, right)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    "n, heads, segments, rates",
    [(1, 1, [4], [1]), (13, 3, [4, 8], [1, 2]), (30, 5, [4, 8, 64], [1, 2, 4]), (17, 7, [3, 5, 7], [1, 3, 2])],
)
def test_dilated_pairs_match_the_reference_multiplicity(n, heads, segments, rates, causal):
    params = make_params("dilated", segment_lengths=segments, dilation_rates=rates)
    brute = int(reference.dilated_multiplicity(n, heads, params, causal).sum())
    assert patterns.dilated_pairs(n, heads, params, causal) == brute


def test_index_functions_agree_with_the_reference_patterns():
    n, heads = 23, 6
    params = make_params("dilated", segment_lengths=[4, 8, 16], dilation_rates=[1, 2, 3])
    q, k, h = torch.arange(n)[None, :, None], torch.arange(n)[None, None, :], torch.arange(heads)[:, None, None]
    for causal in (False, True):
        mine = patterns.dilated_multiplicity(params, n, causal)(q, k, h)
        assert torch.equal(mine.long(), reference.dilated_multiplicity(n, heads, params, causal))
    visible = patterns.sliding_window_visible(2, 5)(q[0], k[0], h[0])
    assert int(visible.sum()) == patterns.sliding_window_pairs(n, 2, 5)


def test_flops_formula():
    dense = make_params("dense")
    assert useful_flops(dense, 2, 8, 3, 16, causal=False) == 4 * 16 * 2 * 3 * 64
    assert useful_flops(dense, 1, 8, 1, 16, causal=True) == 4 * 16 * 36
    assert useful_flops(dense, 1, 8, 1, 16, causal=True, backward=True) == 3.5 * 4 * 16 * 36
    window = make_params("sliding_window", window=3)
    for n, causal in itertools.product([1, 5, 40], [False, True]):
        left, right = window.window(causal)
        assert useful_flops(window, 1, n, 2, 8, causal) == 4 * 8 * 2 * _brute_window_pairs(n, left, right)
