"""Useful FLOPs equal a brute-force count of (query, key) pairs written straight from the spec, on small N."""

import itertools

import pytest

from harness.bench.flops import point_flops


def brute_pairs(mechanism, params, seq_len, heads, causal):
    """Pairs scored, by looping over every (head, query, key) and applying the spec's definitions."""
    total = 0
    for h, p, j in itertools.product(range(heads), range(seq_len), range(seq_len)):
        if causal and j > p:
            continue
        if mechanism == "dense":
            total += 1
        elif mechanism == "sliding_window":
            window = params["window"]
            left, right = (window, window) if isinstance(window, int) else window
            if causal:
                right = 0
            total += p - left <= j <= p + right
        else:
            for w, r in zip(params["segment_lengths"], params["dilation_rates"]):
                w = min(w, seq_len)
                offset = h % r
                total += (p // w == j // w) and (p % w) % r == offset and (j % w) % r == offset
    return total


CASES = [
    ("dense", "sdpa", {}, 13, 2, False),
    ("dense", "sdpa", {}, 13, 2, True),
    ("sliding_window", "chunked", {"window": 3}, 17, 2, False),
    ("sliding_window", "chunked", {"window": [2, 5]}, 17, 1, True),
    ("sliding_window", "chunked", {"window": 40}, 11, 1, False),  # window larger than N
    ("sliding_window", "masked_sdpa", {"window": [40, 1]}, 11, 1, True),
    ("dilated", "gather", {"segment_lengths": [4, 8], "dilation_rates": [1, 2]}, 19, 3, False),  # padding
    ("dilated", "gather", {"segment_lengths": [4, 8], "dilation_rates": [1, 2]}, 19, 3, True),
    ("dilated", "gather", {"segment_lengths": [6, 64], "dilation_rates": [1, 3]}, 20, 4, False),  # clipped, r∤w
    ("dilated", "gather", {"segment_lengths": [4, 8, 16], "dilation_rates": [1, 2, 4]}, 23, 5, True),
]


@pytest.mark.parametrize("mechanism, backend, params, seq_len, heads, causal", CASES)
def test_useful_flops_equal_brute_force_count(mechanism, backend, params, seq_len, heads, causal):
    batch, head_dim = 2, 8
    forward = point_flops(mechanism, backend, params, batch, seq_len, heads, head_dim, causal, backward=False)
    both = point_flops(mechanism, backend, params, batch, seq_len, heads, head_dim, causal, backward=True)
    expected = 4 * head_dim * batch * brute_pairs(mechanism, params, seq_len, heads, causal)
    assert forward["useful_flops"] == expected
    assert both["useful_flops"] == 3.5 * expected


def test_executed_flops_count_what_the_backend_scores():
    # masked_sdpa scores the whole N x N matrix whatever the window; that is its executed count.
    flops = point_flops("sliding_window", "masked_sdpa", {"window": 2}, 1, 16, 2, 8, False, backward=False)
    assert flops["executed_flops"] == 4 * 8 * 2 * 16 * 16
    assert flops["useful_flops"] < flops["executed_flops"]
    dense = point_flops("dense", "sdpa", {}, 1, 16, 2, 8, False, backward=False)
    assert dense["executed_flops"] == dense["useful_flops"]


def test_chunked_executed_flops_follow_the_path_each_device_runs():
    """On CPU the band path: 32-query blocks forward, backward blocks that grow with the window (192 queries for
    window 512), each a whole band; elsewhere the unfold path's bands of `block_size` rows, in both passes."""
    from attention_impls.ops._window_band import Band

    args = ("sliding_window", "chunked", {"window": 512}, 1, 4096, 2, 8, True)
    heads, head_dim = 2, 8
    cpu = point_flops(*args, backward=True, device="cpu")
    forward_pairs, backward_pairs = (Band(4096, 512, 0, block).executed_pairs() for block in (32, 192))
    assert cpu["executed_flops"] == 4 * head_dim * heads * (forward_pairs + 2.5 * backward_pairs)
    cuda = point_flops(*args, backward=False, device="cuda")
    assert cuda["executed_flops"] == 4 * head_dim * heads * 16 * 256 * (256 + 512)  # 16 blocks of 256 rows
    assert cpu["useful_flops"] < cpu["executed_flops"] and cuda["useful_flops"] < cuda["executed_flops"]
    # a narrow window's backward runs blocks of 32 queries, like its forward
    narrow = point_flops("sliding_window", "chunked", {"window": 8}, 1, 4096, 2, 8, True, backward=True)
    assert narrow["executed_flops"] == 4 * head_dim * heads * 3.5 * Band(4096, 8, 0, 32).executed_pairs()
