"""LongNet's head offsets as a parameter (spec: Dilated, "Head offsets"): cyclic o = h mod r (the paper's, the
default) and blocked o = h // ceil(H / r) (microsoft/torchscale's), each backend against the reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import attention_impls as ai
from attention_impls import patterns, reference
from attention_impls.registry import REGISTRY

from test_backends import CPU_BACKENDS, SETTINGS, assert_matches_reference, dilated_params, shapes


def test_offsets_follow_each_rule_by_hand():
    cyclic = ai.make_params("dilated", segment_lengths=[8, 8, 8], dilation_rates=[1, 2, 4])
    blocked = ai.make_params("dilated", segment_lengths=[8, 8, 8], dilation_rates=[1, 2, 4], head_offsets="blocked")
    assert cyclic.head_offsets == "cyclic"
    heads = range(8)
    assert [cyclic.offset(h, 4, 8) for h in heads] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert [blocked.offset(h, 4, 8) for h in heads] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [blocked.offset(h, 2, 8) for h in heads] == [0, 0, 0, 0, 1, 1, 1, 1]
    # H = 6, r = 4: blocks of ceil(6 / 4) = 2 heads; offset 3 has no head
    assert [blocked.offset(h, 4, 6) for h in range(6)] == [0, 0, 1, 1, 2, 2]
    assert list(blocked.offsets(4, 6)) == [0, 1, 2] and list(cyclic.offsets(4, 6)) == [0, 1, 2, 3]
    # H = 5, r = 2: blocks of 3, the last one shorter
    assert [blocked.heads_with_offset(o, 2, 5) for o in blocked.offsets(2, 5)] == [slice(0, 3), slice(3, 5)]
    # H = 2 < r = 4: one head per offset, offsets 2 and 3 unused
    assert list(blocked.offsets(4, 2)) == [0, 1]
    for params in (cyclic, blocked):
        for rate in (1, 2, 4):
            for num_heads in (1, 2, 3, 5, 6, 8):
                covered = [h for o in params.offsets(rate, num_heads)
                           for h in range(num_heads)[params.heads_with_offset(o, rate, num_heads)]]
                assert covered == sorted(covered) or params.head_offsets == "cyclic"
                assert sorted(covered) == list(range(num_heads))  # every head has exactly one offset
                assert all(params.offset(h, rate, num_heads) == o for o in params.offsets(rate, num_heads)
                           for h in range(num_heads)[params.heads_with_offset(o, rate, num_heads)])


def test_blocked_is_another_pattern_for_several_heads_and_rates_and_the_same_otherwise():
    common = dict(segment_lengths=[4, 8, 16], dilation_rates=[1, 2, 4])
    cyclic = reference.dilated_multiplicity(16, 4, ai.make_params("dilated", **common), causal=False)
    blocked = reference.dilated_multiplicity(16, 4, ai.make_params("dilated", **common, head_offsets="blocked"),
                                             causal=False)
    assert not torch.equal(cyclic, blocked)
    # no renaming of heads turns one into the other (spec): compare as multisets of per-head pictures
    assert sorted(map(bytes, cyclic.to(torch.uint8).numpy())) != sorted(map(bytes, blocked.to(torch.uint8).numpy()))
    one_head = [reference.dilated_multiplicity(16, 1, ai.make_params("dilated", **common, head_offsets=rule), False)
                for rule in ("cyclic", "blocked")]
    assert torch.equal(*one_head)


@SETTINGS
@given(shape=shapes(), params=dilated_params(), causal=st.booleans())
def test_pair_count_and_index_function_match_the_reference_with_blocked_offsets(shape, params, causal):
    params = ai.make_params("dilated", **params, head_offsets="blocked")
    n, heads = shape["seq_len"], shape["heads"]
    brute = reference.dilated_multiplicity(n, heads, params, causal)
    assert patterns.dilated_pairs(n, heads, params, causal) == int(brute.sum())
    position = torch.arange(n)
    mine = patterns.dilated_multiplicity(params, n, causal, heads)(
        position[None, :, None], position[None, None, :], torch.arange(heads)[:, None, None])
    assert torch.equal(mine.long(), brute)


@pytest.mark.parametrize("backend", CPU_BACKENDS["dilated"])
def test_each_dilated_backend_matches_the_reference_with_blocked_offsets(backend):
    @SETTINGS
    @given(shape=shapes(), params=dilated_params(), seed=st.integers(0, 2**16))
    def check(shape, params, seed):
        params = {**params, "head_offsets": "blocked"}
        assert_matches_reference(ai.build("dilated", backend, **params), "dilated", params, shape, seed=seed)

    check()


def test_flex_takes_blocked_offsets():
    flex = REGISTRY["dilated"]["flex"]
    if reasons := flex.not_supported_reasons("cpu", torch.float32, False, False):
        pytest.skip("; ".join(reasons))
    params = {"segment_lengths": [8, 16, 64], "dilation_rates": [1, 2, 4], "head_offsets": "blocked"}
    shape = dict(batch=1, seq_len=50, heads=6, head_dim=8, causal=False)
    assert_matches_reference(ai.build("dilated", "flex", **params), "dilated", params, shape, backward=False)


def test_a_bad_head_offsets_value_names_the_choices():
    with pytest.raises(ValueError, match=r"head_offsets='blocke' is not known \(did you mean 'blocked'\?\)"):
        ai.make_params("dilated", segment_lengths=[8], dilation_rates=[1], head_offsets="blocke")
    with pytest.raises(ValueError, match="choose one of"):
        ai.make_params("dilated", segment_lengths=[8], dilation_rates=[1], head_offsets=1)
    with pytest.raises(TypeError, match="unexpected parameter 'head_offsets'"):
        ai.make_params("sliding_window", window=4, head_offsets="blocked")


def test_blocked_coverage_is_checked_at_the_first_call_where_h_is_known():
    # No rate-1 branch: with rates [2, 2] and H = 4, blocked offsets give heads 0, 1 offset 0 (even positions
    # only) and heads 2, 3 offset 1 (odd positions only), so position 0 of head 2 takes part in no branch.
    attn = ai.build("dilated", "gather", segment_lengths=[4, 8], dilation_rates=[2, 2], head_offsets="blocked")
    q = torch.randn(1, 8, 4, 8)
    with pytest.raises(ValueError, match=r"position 0 of head 2 in no branch .*h // ceil\(4 / r_i\)"):
        attn(q, q, q)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", [name for name in REGISTRY["dilated"] if name not in ("reference", "flex")])
def test_cuda_dilated_backends_take_blocked_offsets_in_bfloat16(backend):
    from test_backends import _inputs, _reference

    cls = REGISTRY["dilated"][backend]
    if reasons := cls.not_supported_reasons("cuda", torch.bfloat16, True, True):
        pytest.skip("; ".join(reasons))
    params = {"segment_lengths": [64, 128, 256], "dilation_rates": [1, 2, 4], "head_offsets": "blocked"}
    q, k, v, grad_out = _inputs(dict(batch=2, seq_len=300, heads=6, head_dim=64), torch.float64, 11)
    expected, expected_grads = _reference("dilated", params, q, k, v, grad_out, True)
    leaves = [x.to("cuda", torch.bfloat16).requires_grad_() for x in (q, k, v)]
    out = ai.build("dilated", backend, **params)(*leaves, causal=True)
    out.backward(grad_out.to("cuda", torch.bfloat16))
    assert (out.double().cpu() - expected).abs().max().item() < 3e-2
    for name, leaf, ref in zip("qkv", leaves, expected_grads):
        error = (leaf.grad.double().cpu() - ref).norm().item() / ref.norm().item()
        assert error < 3e-2, f"d{name} relative L2 error {error:.2e}"
