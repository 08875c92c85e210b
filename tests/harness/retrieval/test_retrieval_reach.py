import pytest
import torch

from attention_impls import make_params
from attention_impls.params import DenseParams
from harness.retrieval.reach import (distance_buckets, items_reachable, one_layer_visible, receptive_field,
                                     theoretical_reach)


def _field_by_paths(params, n, heads, depth, token_shift):
    """Straight from the definition: walk `depth` layers of (visible or self), each optionally one step back."""
    step = one_layer_visible(params, n, heads, causal=True).any(0) | torch.eye(n, dtype=torch.bool)
    if token_shift:
        shifted = torch.zeros_like(step)
        shifted[:, :-1] = step[:, 1:]
        step = step | shifted
    field = torch.eye(n, dtype=torch.bool)
    for _ in range(depth):
        field = torch.stack([step[field[p]].any(0) if field[p].any() else field[p] for p in range(n)])
    return field


@pytest.mark.parametrize("params", [make_params("sliding_window", window=5), make_params("dense"),
                                    make_params("dilated", segment_lengths=[6, 12], dilation_rates=[1, 3])])
@pytest.mark.parametrize("depth, token_shift", [(1, False), (3, False), (2, True)])
def test_receptive_field_matches_layer_by_layer_walk(params, depth, token_shift):
    n, heads = 40, 3
    expected = _field_by_paths(params, n, heads, depth, token_shift)
    assert torch.equal(receptive_field(params, n, heads, depth, True, token_shift), expected)
    distance = torch.arange(n)[:, None] - torch.arange(n)[None, :]
    assert theoretical_reach(params, n, heads, depth, True, token_shift) == int(distance[expected].max())


def test_sliding_window_reach_is_window_times_layers():
    params = make_params("sliding_window", window=8)
    assert theoretical_reach(params, 1000, 2, 3) == 24
    assert theoretical_reach(params, 1000, 2, 3, token_shift=True) == 27
    assert theoretical_reach(params, 20, 2, 3) == 19
    assert theoretical_reach(DenseParams(), 50, 2, 1) == 49


def test_nested_dilated_segments_never_cross_a_boundary():
    params = make_params("dilated", segment_lengths=[8, 16], dilation_rates=[1, 2])
    field = receptive_field(params, 64, 2, depth=4)
    assert theoretical_reach(params, 64, 2, 4) == 15
    assert not field[16, 15] and field[31, 16]


def test_items_reachable_needs_every_source():
    field = receptive_field(make_params("sliding_window", window=3), 10, 1, 1)
    sources = torch.tensor([[5, 6], [4, 5], [2, -1]])
    assert items_reachable(field, torch.tensor([8, 8, 5]), sources).tolist() == [True, False, True]


def test_distance_buckets():
    assert distance_buckets([], 10) == [(0, 0), (1, 1), (2, 3), (4, 7), (8, 10)]
    assert distance_buckets([2, 10, 19], 15) == [(2, 9), (10, 15)]


def test_items_split_finds_heads_that_see_the_key_without_its_value():
    from harness.retrieval.reach import items_split

    params = make_params("dilated", segment_lengths=[4, 8], dilation_rates=[1, 2])
    visible = one_layer_visible(params, 8, 2, causal=True)  # (H, N, N)
    # Rate 1, segments [0, 4) and [4, 8): every head. Rate 2, one segment [0, 8): head h sees positions of parity h,
    # from queries of parity h. From query 7 (odd) head 1 crosses the segment boundary and sees 1, 3, 5 only.
    # Pairs (4, 5) and (5, 6): inside query 7's rate-1 segment, every head sees both: not split.
    # Pair (0, 1) from query 3: the same. Pair (2, 3) from 7: head 1 sees the value 3, no head sees the key 2.
    # Pair (1, 2) from 7: head 1 sees the key 1 and not its value 2: split.
    sources = torch.tensor([[4, 5], [5, 6], [0, 1], [2, 3], [1, 2]])
    query = torch.tensor([7, 7, 3, 7, 7])
    assert items_split(visible, query, sources).tolist() == [False, False, False, False, True]
    window = one_layer_visible(make_params("sliding_window", window=3), 10, 1, causal=True)
    # A window sees 4..7 from 7: the pair (4, 5) whole; from 8 it sees 5..8, the value without its key: not split.
    assert items_split(window, torch.tensor([7, 8]), torch.tensor([[4, 5], [4, 5]])).tolist() == [False, False]
