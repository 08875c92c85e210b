"""The longformer mechanism (docs/mechanisms/longformer.md): window plus G global tokens. The generic tests
(test_backends, test_mechanisms) check every backend against the reference with drawn parameters; these pin
the edges of the definition and the backends hypothesis reaches rarely."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attention_impls as ai
from attention_impls.mechanisms.longformer import longformer_pairs
from attention_impls.registry import REGISTRY

from test_backends import assert_matches_reference


def _row_counts(n: int, left: int, right: int, g: int, causal: bool) -> int:
    """The definition, row by row, in numpy (N up to millions)."""
    p = np.arange(n, dtype=np.int64)
    g = min(g, n)
    window = np.minimum(n - 1, p + right) - np.maximum(0, p - left) + 1
    inside = np.clip(g - np.maximum(0, p - left), 0, g)  # global keys inside the window (rows p >= g)
    rows = np.where(p < g, p + 1 if causal else n, window + g - inside)
    return int(rows.sum())


@pytest.mark.parametrize("n, left, right, g", [(1, 0, 0, 0), (5, 2, 2, 9), (100, 3, 7, 0), (100, 3, 7, 4),
                                               (100, 40, 0, 16), (4096, 256, 256, 16), (1 << 20, 512, 512, 64)])
@pytest.mark.parametrize("causal", [False, True])
def test_pair_count_in_closed_form_matches_the_rows(n, left, right, g, causal):
    right = 0 if causal else right
    assert longformer_pairs(n, left, right, g, causal) == _row_counts(n, left, right, g, causal)


def test_no_global_tokens_is_the_sliding_window_and_all_global_is_dense():
    q, k, v = torch.randn(3, 2, 40, 3, 8, dtype=torch.float64)
    for causal in (False, True):
        window = ai.build("sliding_window", "reference", window=[3, 5])(q, k, v, causal=causal)
        torch.testing.assert_close(ai.build("longformer", "band_global", window=[3, 5], global_tokens=0)(
            q, k, v, causal=causal), window)
        dense = ai.build("dense", "reference")(q, k, v, causal=causal)
        torch.testing.assert_close(ai.build("longformer", "band_global", window=2, global_tokens=64)(
            q, k, v, causal=causal), dense)


@pytest.mark.parametrize("shape, params", [
    (dict(batch=2, seq_len=300, heads=3, head_dim=16, causal=True), {"window": 40, "global_tokens": 8}),
    (dict(batch=1, seq_len=300, heads=2, head_dim=8, causal=False), {"window": [5, 60], "global_tokens": 70}),
    (dict(batch=1, seq_len=70, heads=2, head_dim=8, causal=False), {"window": 100, "global_tokens": 3}),
])
def test_band_global_is_exact_where_the_band_has_interior_blocks(shape, params):
    assert_matches_reference(ai.build("longformer", "band_global", **params), "longformer", params, shape)
    assert_matches_reference(ai.build("longformer", "band_global", **params), "longformer", params, shape,
                             dtype=torch.float64)


def test_flex_matches_the_reference_forward():
    flex = REGISTRY["longformer"]["flex"]
    if reasons := flex.not_supported_reasons("cpu", torch.float32, True, False):
        pytest.skip("; ".join(reasons))
    params = {"window": 16, "global_tokens": 5}
    for causal in (True, False):
        shape = dict(batch=1, seq_len=130, heads=2, head_dim=16, causal=causal)
        assert_matches_reference(ai.build("longformer", "flex", **params), "longformer", params, shape,
                                 backward=False)


def test_bad_parameters_name_the_value():
    with pytest.raises(TypeError, match="needs window=<int> or window=\\[left, right\\], and global_tokens"):
        ai.make_params("longformer", window=8)
    with pytest.raises(ValueError, match=r"global_tokens=-1 must be >= 0"):
        ai.make_params("longformer", window=8, global_tokens=-1)
    with pytest.raises(TypeError, match=r"unexpected parameter 'global_token' \(did you mean 'global_tokens'\?\)"):
        ai.make_params("longformer", window=8, global_token=2)


def test_picked_on_cpu_and_refused_with_reasons_on_cuda_when_there_is_none():
    attn = ai.build("longformer", window=8, global_tokens=2)
    q = torch.randn(1, 1024, 2, 8, requires_grad=True)  # past the small calls, which go to masked SDPA
    attn(q, q, q, causal=True).sum().backward()
    assert attn.backend == "band_global"
    assert REGISTRY["longformer"]["band_global"].not_supported_reasons("cuda", torch.float32, False, False) == [
        "device=cuda (supported: cpu)"]


def test_band_global_counts_what_it_executes_and_takes_windows_wider_than_the_sequence():
    attn = ai.build("longformer", "band_global", window=8, global_tokens=4)
    useful = ai.useful_pairs(attn.params, 4096, 2, True)
    executed = attn._impl("band_global").executed_pairs(4096, 2, True)
    assert executed >= useful  # the band path scores its whole band per block
    params = {"window": 2**40, "global_tokens": 3}  # a window wider than N is dense, and cheap to set up
    assert_matches_reference(ai.build("longformer", "band_global", **params), "longformer", params,
                             dict(batch=1, seq_len=50, heads=2, head_dim=8, causal=False))
