"""Positions, padding, grouped heads, scale and dropout (../shared/spec/attention.md, every mechanism): the float64
reference written from the spec, the backends that take each feature against it, and the checks of bad calls."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attention_impls as ai
from attention_impls.call import FEATURES, make_call
from attention_impls.mechanisms import get_mechanism

PARAMS = {"dense": {}, "sliding_window": {"window": 3}, "longformer": {"window": 2, "global_tokens": 2},
          "dilated": {"segment_lengths": [4, 8], "dilation_rates": [1, 2]}}
FULL = {"dense": "sdpa", "sliding_window": "masked_sdpa", "longformer": "masked_sdpa", "dilated": "masked_sdpa"}


def _qkv(batch=2, queries=12, keys=12, heads=4, kv_heads=None, dim=8, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, queries, heads, dim, generator=generator, dtype=dtype)
    k, v = (torch.randn(batch, keys, kv_heads or heads, dim, generator=generator, dtype=dtype) for _ in range(2))
    return q, k, v


@pytest.mark.parametrize("mechanism", list(PARAMS))
def test_decoding_one_query_at_a_time_equals_the_full_causal_call(mechanism):
    """Prefix consistency: the query at p against keys 0..p gives the full causal call's row p."""
    attn = ai.build(mechanism, "reference", **PARAMS[mechanism])
    q, k, v = _qkv(keys=12, queries=12)
    full = attn(q, k, v, causal=True)
    for p in range(12):
        step = attn(q[:, p:p + 1], k[:, :p + 1], v[:, :p + 1], causal=True, query_offset=p)
        assert torch.allclose(step[:, 0], full[:, p], atol=1e-12), p


@pytest.mark.parametrize("mechanism", list(PARAMS))
def test_left_padding_with_offsets_never_moves_the_pattern(mechanism):
    """A sequence left-padded by s, with position_offsets=s and its padding masked, gives the unpadded outputs on
    its real tokens; its padded queries see nothing and output 0."""
    attn = ai.build(mechanism, "reference", **PARAMS[mechanism])
    q, k, v = _qkv(batch=1, queries=9, keys=9)
    pad = 3
    padded = [torch.cat([torch.randn(1, pad, *x.shape[2:], dtype=x.dtype), x], dim=1) for x in (q, k, v)]
    mask = torch.zeros(1, 9 + pad, dtype=torch.bool)
    mask[:, :pad] = True
    for causal in (False, True):
        expected = attn(q, k, v, causal=causal)
        # segment lengths clip to the key length: the same clip on both sides needs the padded length's clip
        out = attn(*padded, causal=causal, position_offsets=torch.tensor([pad]), key_padding_mask=mask)
        assert torch.allclose(out[:, pad:], expected, atol=1e-12)
        if causal:
            assert (out[:, :pad] == 0).all()


@pytest.mark.parametrize("mechanism", list(PARAMS))
def test_grouped_heads_use_kv_head_h_over_group(mechanism):
    attn = ai.build(mechanism, "reference", **PARAMS[mechanism])
    q, k, v = _qkv(heads=4, kv_heads=2)
    repeated = [x.repeat_interleave(2, dim=2) for x in (k, v)]  # query heads 0, 1 -> kv 0; 2, 3 -> kv 1
    assert torch.allclose(attn(q, k, v, causal=True), attn(q, *repeated, causal=True), atol=1e-12)


def test_a_query_that_sees_nothing_outputs_zero_with_zero_gradient():
    q, k, v = (x.requires_grad_() for x in _qkv(batch=1))
    mask = torch.ones(1, 12, dtype=torch.bool)
    mask[:, 6:] = False  # keys 0..5 padding: causal queries 0..5 see nothing
    for backend in ("reference", "masked_sdpa"):
        out = ai.build("sliding_window", backend, window=2)(q, k, v, causal=True, key_padding_mask=mask)
        assert (out[:, :6] == 0).all() and torch.isfinite(out).all()
        (grad_q,) = torch.autograd.grad(out[:, :6].sum(), (q,))
        assert (grad_q == 0).all()
    out = ai.build("dense", "sdpa")(q, k, v, causal=True, key_padding_mask=mask)
    assert (out[:, :6] == 0).all() and torch.isfinite(out).all()  # torch's SDPA alone gives NaN there


@pytest.mark.parametrize("mechanism", ["sliding_window", "dilated"])
def test_the_reference_lets_a_nan_value_reach_exactly_the_queries_that_see_it(mechanism):
    attn = ai.build(mechanism, "reference", **PARAMS[mechanism])
    q, k, v = _qkv(batch=1, queries=16, keys=16)
    for poisoned in ("k", "v"):
        tensors = {"k": k.clone(), "v": v.clone()}
        tensors[poisoned][0, 9, 1, 0] = float("nan")
        out = attn(q, tensors["k"], tensors["v"], causal=False)
        count = get_mechanism(mechanism).reference_multiplicity(attn.params, 16, 4, False)
        sees = count[1, :, 9] > 0  # head 1: the queries that see key 9
        assert torch.isnan(out[0, sees, 1]).any(-1).all() and torch.isfinite(out[0, ~sees, 1]).all()
        assert torch.isfinite(out[0, :, [0, 2, 3]]).all()


@st.composite
def calls(draw):
    mechanism = draw(st.sampled_from(list(PARAMS)))
    batch, heads = draw(st.integers(1, 2)), draw(st.sampled_from([2, 4]))
    keys = draw(st.integers(2, 14))
    queries = draw(st.integers(1, keys))
    options = {"causal": draw(st.booleans())}
    if queries != keys or draw(st.booleans()):
        options["query_offset"] = draw(st.integers(0, keys - queries))
    if draw(st.booleans()):
        options["position_offsets"] = torch.tensor(draw(st.lists(st.integers(0, keys - 1), min_size=batch,
                                                                 max_size=batch)))
    if draw(st.booleans()):
        options["key_lengths"] = torch.tensor(draw(st.lists(st.integers(0, keys), min_size=batch, max_size=batch)))
    if draw(st.booleans()):
        options["scale"] = draw(st.floats(0.05, 2.0))
    kv_heads = draw(st.sampled_from([h for h in (1, 2, heads) if heads % h == 0]))
    return mechanism, batch, heads, kv_heads, queries, keys, options, draw(st.integers(0, 2**16))


@given(calls())
@settings(max_examples=60, deadline=None)
def test_the_backend_that_takes_every_feature_matches_the_reference(case):
    """Outputs and gradients, in float64, for any mix of query block, offsets, padding, scale and grouped heads."""
    mechanism, batch, heads, kv_heads, queries, keys, options, seed = case
    q, k, v = (x.requires_grad_() for x in _qkv(batch, queries, keys, heads, kv_heads, seed=seed))
    expected = ai.build(mechanism, "reference", **PARAMS[mechanism])(q, k, v, **options)
    attn = ai.build(mechanism, FULL[mechanism], **PARAMS[mechanism])
    out = attn(q, k, v, **options)
    assert torch.allclose(out, expected, atol=1e-10)
    grad_out = torch.randn_like(out)
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(torch.autograd.grad(out, (q, k, v), grad_out),
                                                                 torch.autograd.grad(expected, (q, k, v), grad_out)))


@pytest.mark.parametrize("mechanism", ["sliding_window", "dilated", "longformer"])
def test_dropout_is_the_references_under_the_same_mask(mechanism):
    q, k, v = _qkv()
    torch.manual_seed(7)
    out = ai.build(mechanism, "masked_sdpa", **PARAMS[mechanism])(q, k, v, causal=True, dropout_p=0.3)
    torch.manual_seed(7)
    expected = ai.build(mechanism, "reference", **PARAMS[mechanism])(q, k, v, causal=True, dropout_p=0.3)
    assert torch.allclose(out, expected, atol=1e-12)
    assert not torch.allclose(out, ai.build(mechanism, "reference", **PARAMS[mechanism])(q, k, v, causal=True))


def test_backend_none_picks_a_backend_that_takes_the_call_and_a_fixed_one_says_why_not():
    q, k, v = _qkv()
    mask = torch.zeros(2, 12, dtype=torch.bool)
    attn = ai.build("dilated", **PARAMS["dilated"])
    attn(q.float(), k.float(), v.float(), key_padding_mask=mask)
    assert attn.backend == "masked_sdpa"
    attn(q.float(), k.float(), v.float())
    assert attn.backend == "masked_sdpa"  # N = 12: the short-sequence pick
    with pytest.raises(RuntimeError, match=r"backend 'gather' cannot run these inputs: key padding \(key_padding_mask "
                                           r"or key_lengths\) is not supported\. Backends that can: \['masked_sdpa', 'reference'\]"):
        ai.build("dilated", "gather", **PARAMS["dilated"])(q.float(), k.float(), v.float(), key_padding_mask=mask)


def test_every_backend_takes_a_per_call_scale_and_grouped_heads():
    """Attention rescales q, or repeats k and v, for a backend that has no way of its own."""
    q, k, v = _qkv(heads=4, kv_heads=2, dtype=torch.float32)
    for mechanism, params in PARAMS.items():
        expected = ai.build(mechanism, "reference", **params)(q, k, v, causal=True, scale=0.5)
        for info in ai.backends(mechanism):
            cls = ai.registry.REGISTRY[mechanism][info.name]
            if not info.available or cls.needs_compile or cls.not_supported_reasons("cpu", torch.float32, True, False):
                continue
            out = ai.build(mechanism, info.name, **params)(q, k, v, causal=True, scale=0.5)
            assert torch.allclose(out, expected, atol=1e-5), (mechanism, info.name)


@pytest.mark.parametrize("options, error, message", [
    (dict(causal="false"), TypeError, "causal='false' must be a bool"),
    (dict(query_offset=-1), ValueError, "query_offset=-1 must be in [0, 0]"),
    (dict(query_offset=1.5), TypeError, "query_offset=1.5 must be an int"),
    (dict(position_offsets=[0]), ValueError, "position_offsets must have shape (batch,) = (2,), got (1,)"),
    (dict(position_offsets=[0, 12]), ValueError, "position_offsets=[0, 12] must be in [0, 11]"),
    (dict(key_padding_mask=torch.zeros(2, 12)), TypeError, "key_padding_mask must be a bool tensor"),
    (dict(key_padding_mask=torch.zeros(2, 11, dtype=torch.bool)), ValueError, "must have shape (batch, keys) = (2, 12)"),
    (dict(key_lengths=[3, 13]), ValueError, "key_lengths=[3, 13] must be in [0, 12]"),
    (dict(scale=float("inf")), ValueError, "scale=inf must be a positive finite number"),
    (dict(scale=1e300), ValueError, "scale=1e+300 must be a positive finite number below 1e+30"),
    (dict(dropout_p=1.0), ValueError, "dropout_p=1.0 must be a number in [0, 1)"),
    (dict(attn_mask=torch.zeros(3, 12, 12)), ValueError, "attn_mask of shape (3, 12, 12) does not broadcast"),
])
def test_a_bad_call_names_its_value_before_any_kernel_runs(options, error, message):
    q, k, v = _qkv()
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("+", r"\+")):
        make_call(q, k, v, **options)


def test_shapes_of_a_call_are_checked():
    q, k, v = _qkv(queries=4, keys=12)
    with pytest.raises(ValueError, match="causal attention of 4 queries against 12 keys needs query_offset="):
        make_call(q, k, v, causal=True)
    with pytest.raises(ValueError, match="dilated attention of 4 queries against 12 keys needs query_offset="):
        ai.build("dilated", **PARAMS["dilated"])(q, k, v)
    ai.build("dense")(q, k, v)  # cross-attention: dense only
    with pytest.raises(ValueError, match="a multiple of the key/value heads"):
        make_call(*_qkv(heads=4, kv_heads=3))
    assert make_call(*_qkv()).features == frozenset()
    assert set(make_call(q, k, v, query_offset=8, scale=0.1).features) == {"query_block", "scale"}
    assert set(FEATURES) >= {"query_block", "key_padding", "grouped_heads", "scale", "dropout", "attn_mask"}


@pytest.mark.parametrize("mechanism", ["sliding_window", "dilated"])
@given(keys=st.integers(1, 40), first=st.integers(0, 39), length=st.integers(1, 6), causal=st.booleans(),
       start=st.integers(-5, 5))
@settings(max_examples=80, deadline=None)
def test_the_key_range_holds_every_key_a_query_block_sees(mechanism, keys, first, length, causal, start):
    spec = ai.make_params(mechanism, **{"sliding_window": {"window": 3},
                                        "dilated": {"segment_lengths": [4, 8, 16], "dilation_rates": [1, 2, 4]}}[
        mechanism])
    first = min(first, keys - 1) + start
    queries = torch.arange(first, first + length)
    key_positions = torch.arange(-8, keys + 8)
    seen = get_mechanism(mechanism).reference_visible(spec, queries, key_positions, 4, causal, keys) > 0
    low, high = get_mechanism(mechanism).key_range(spec, first, first + length - 1, keys, causal)
    seen_positions = key_positions[seen.any(0).any(0)]
    assert seen_positions.numel() == 0 or (low <= seen_positions.min() and seen_positions.max() < high)


@pytest.mark.parametrize("mechanism", ["sliding_window", "dilated"])
def test_a_decoding_step_reads_only_the_keys_in_reach_and_equals_the_full_call(mechanism, monkeypatch):
    from attention_impls.ops import masked_sdpa

    attn = ai.build(mechanism, "masked_sdpa", **PARAMS[mechanism])
    q, k, v = _qkv(batch=2, queries=64, keys=64)
    full = ai.build(mechanism, "reference", **PARAMS[mechanism])(q, k, v, causal=True)
    held = []
    original = masked_sdpa._MaskedSdpa.forward_call

    def spy(self, q, k, v, call):
        held.append(k.shape[1])
        return original(self, q, k, v, call)

    monkeypatch.setattr(masked_sdpa._MaskedSdpa, "forward_call", spy)
    pad = torch.tensor([0, 5])  # the second sequence left-padded by 5
    padding = torch.arange(64)[None] < pad[:, None]
    for p in (10, 37, 63):
        step = attn(q[:, p:p + 1], k[:, :p + 1], v[:, :p + 1], causal=True, query_offset=p)
        torch.testing.assert_close(step[:, 0], full[:, p], atol=1e-12, rtol=0)
        attn(q[:, p:p + 1], k[:, :p + 1], v[:, :p + 1], causal=True, query_offset=p, position_offsets=pad,
             key_padding_mask=padding[:, :p + 1])
    reach = {"sliding_window": 4, "dilated": 8}[mechanism]  # window 3 + the query; the longest segment, 8
    assert max(held) <= reach + 5  # + 5: the padded sequence's positions sit 5 later


@st.composite
def dilated_decode_steps(draw):
    params = draw(get_mechanism("dilated").param_strategy())
    params["head_offsets"] = draw(st.sampled_from(["cyclic", "blocked"]))
    heads = draw(st.sampled_from([1, 2, 4, 6]))
    keys = draw(st.integers(1, 90))
    options = {"causal": draw(st.booleans()), "query_offset": draw(st.integers(0, keys - 1))}
    if draw(st.booleans()):
        options["scale"] = draw(st.floats(0.05, 2.0))
    kv_heads = draw(st.sampled_from([h for h in (1, 2, heads) if heads % h == 0]))
    return params, heads, kv_heads, keys, options, draw(st.integers(0, 2**16))


@given(dilated_decode_steps())
@settings(max_examples=80, deadline=None)
def test_dilated_decoding_gathers_exactly_the_keys_it_sees(case):
    """A decoding step through `gather` (each branch's strided slice of the cache, merged by log-sum-exp) equals
    the reference's row, outputs and gradients in float64, at any position, with scale and grouped heads, with
    autograd (plain PyTorch) and without (the fused kernel), float32 too."""
    params, heads, kv_heads, keys, options, seed = case
    q, k, v = (x.requires_grad_() for x in _qkv(2, 1, keys, heads, kv_heads, seed=seed))
    try:
        attn = ai.build("dilated", "gather", **params)
        out = attn(q, k, v, **options)
    except ValueError as error:  # blocked offsets can leave a (position, head) uncovered: refused, by name
        assert "blocked" in str(error) or "cover" in str(error)
        return
    expected = ai.build("dilated", "reference", **params)(q, k, v, **options)
    assert attn.backend == "gather" and torch.allclose(out, expected, atol=1e-10)
    with torch.no_grad():  # without autograd the fused kernel reads the cache's strided rows in place
        assert torch.allclose(attn(q, k, v, **options), expected, atol=1e-10)
        fast = attn(*(x.float() for x in (q, k, v)), **options)
    assert torch.allclose(fast.double(), expected, atol=1e-5)
    grad_out = torch.randn_like(out)
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(torch.autograd.grad(out, (q, k, v), grad_out),
                                                                 torch.autograd.grad(expected, (q, k, v), grad_out)))


def test_a_dilated_decoding_step_reads_its_visible_keys_not_the_cache():
    """backend=None decodes through gather, whose keys per head are the keys the query sees, each as often as
    branches score it: at most sum(w / r) + the branches, a fraction of the cache of N = 1024."""
    params = {"segment_lengths": [128, 256, 512], "dilation_rates": [1, 2, 4]}
    mechanism = get_mechanism("dilated")
    built = mechanism.make_params(**params)
    visible = mechanism.visible_keys(built, 1023, 1024, 8, True)
    assert max(len(held) for held in visible) <= 128 + 256 // 2 + 512 // 4 + 3
    count = mechanism.multiplicity(built, 1024, 8, True)(torch.tensor(1023), torch.arange(1024)[None],
                                                          torch.arange(8)[:, None])
    for head, held in enumerate(visible):
        assert torch.equal(torch.bincount(held, minlength=1024), count[head].long())
    q, k, v = _qkv(1, 1, 1024, 8, 8, dtype=torch.float32)
    attn = ai.build("dilated", **params)
    with torch.no_grad():
        attn(q, k, v, causal=True, query_offset=1023)
    assert attn.backend == "gather"


def _rows_non_finite(out: torch.Tensor) -> torch.Tensor:
    return ~torch.isfinite(out).all(-1)


CPU_BACKENDS = [(mechanism, info.name) for mechanism in PARAMS for info in ai.backends(mechanism)
                if info.available and "cpu" in info.devices and not ai.registry.get_backend_class(
                    mechanism, info.name).needs_compile and info.name != "reference"]


@pytest.mark.parametrize("mechanism, backend", CPU_BACKENDS)
@given(keys=st.integers(2, 40), causal=st.booleans(), poisoned=st.sampled_from(["q", "k", "v"]),
       value=st.sampled_from([float("nan"), float("inf")]), where=st.data())
@settings(max_examples=25, deadline=None)
def test_a_non_finite_input_reaches_exactly_the_outputs_that_see_it(mechanism, backend, keys, causal, poisoned,
                                                                   value, where):
    """The spec's "Non-finite inputs", on every CPU backend: a NaN in q, k or v, or an Inf in a value, makes
    exactly the reference's rows non-finite (a masked pair's 0 x NaN must not leak), and the other rows agree."""
    if poisoned == "k" and value == float("inf"):
        value = float("nan")  # an Inf key can score -inf, weight 0 (finite in the reference): see the closing note
    tensors = dict(zip("qkv", _qkv(batch=2, queries=keys, keys=keys, dtype=torch.float32, seed=keys)))
    row = where.draw(st.integers(0, keys - 1))
    tensors[poisoned][where.draw(st.integers(0, 1)), row, where.draw(st.integers(0, 3)), 0] = value
    attn = ai.build(mechanism, backend, **PARAMS[mechanism])
    try:
        attn.resolve(torch.device("cpu"), torch.float32, causal, False, 8, keys)
    except RuntimeError:
        return  # a shape or mode this backend declares it cannot take
    expected = ai.build(mechanism, "reference", **PARAMS[mechanism])(
        *(tensors[name].double() for name in "qkv"), causal=causal)
    out = attn(tensors["q"], tensors["k"], tensors["v"], causal=causal)
    assert torch.equal(_rows_non_finite(out), _rows_non_finite(expected)), (backend, poisoned)
    finite = ~_rows_non_finite(expected)
    assert torch.allclose(out[finite].double(), expected[finite], atol=1e-4)


@given(calls(), st.sampled_from(["q", "k", "v"]), st.data())
@settings(max_examples=40, deadline=None)
def test_a_nan_reaches_exactly_the_outputs_that_see_it_in_any_call(case, poisoned, where):
    """Query blocks, offsets, padding (a padded NaN key is never seen), grouped heads: the backend that takes
    every feature marks the reference's rows, no more."""
    mechanism, batch, heads, kv_heads, queries, keys, options, seed = case
    tensors = dict(zip("qkv", _qkv(batch, queries, keys, heads, kv_heads, seed=seed)))
    target = tensors[poisoned]
    target[where.draw(st.integers(0, batch - 1)), where.draw(st.integers(0, target.shape[1] - 1)),
           where.draw(st.integers(0, target.shape[2] - 1)), 0] = float("nan")
    expected = ai.build(mechanism, "reference", **PARAMS[mechanism])(tensors["q"], tensors["k"], tensors["v"],
                                                                       **options)
    out = ai.build(mechanism, FULL[mechanism], **PARAMS[mechanism])(tensors["q"], tensors["k"], tensors["v"],
                                                                     **options)
    assert torch.equal(_rows_non_finite(out), _rows_non_finite(expected))
    finite = ~_rows_non_finite(expected)
    assert torch.allclose(out[finite], expected[finite], atol=1e-10)


@pytest.mark.parametrize("backend", ["chunked", "masked_sdpa"])
def test_a_window_past_any_length_is_dense_and_a_scale_that_overflows_is_refused(backend):
    q, k, v = _qkv(batch=1, queries=16, keys=16, dtype=torch.float32)
    wide = ai.build("sliding_window", backend, window=2**63)(q, k, v, causal=True)
    assert torch.allclose(wide, ai.build("dense", "sdpa")(q, k, v, causal=True), atol=1e-5)
    with pytest.raises(ValueError, match="below 1e\\+30"):
        ai.build("sliding_window", backend, window=4)(q, k, v, scale=1e300)


@pytest.mark.parametrize("mechanism, backend", [("sliding_window", "masked_sdpa"), ("dense", "sdpa"),
                                                ("dilated", "gather")])
def test_a_nan_the_loss_does_not_see_leaves_every_gradient_finite(mechanism, backend):
    """The rows a bad value reaches are NaN; the gradients through the other rows stay finite (the first call,
    which saw the NaN, is not in the graph)."""
    q, k, v = (x.requires_grad_() for x in _qkv(batch=1, queries=64, keys=64, heads=2, dim=16,
                                                 dtype=torch.float32))
    poisoned = v.detach().clone()
    poisoned[0, 63, 0, 0] = float("nan")
    poisoned.requires_grad_()
    out = ai.build(mechanism, backend, **PARAMS[mechanism])(q, k, poisoned, causal=True)
    out[:, :32].sum().backward()  # causal: queries 0..31 never see key 63
    assert all(torch.isfinite(t.grad).all() for t in (q, k))
    assert torch.isfinite(poisoned.grad[:, :32]).all()


def test_a_grouped_heads_decoding_step_never_copies_the_whole_cache(monkeypatch):
    """Grouped KV heads (Llama, Mistral): each branch copies only the rows it sees of its KV heads; expanding the
    cache to every query head would copy all N rows at every step."""
    params = {"segment_lengths": [8, 16], "dilation_rates": [1, 2]}
    q, k, v = _qkv(batch=1, queries=1, keys=64, heads=8, kv_heads=2)
    expected = ai.build("dilated", "reference", **params)(q, k, v, causal=True, query_offset=63)
    attn = ai.build("dilated", "gather", **params)

    def refuse(*args, **kwargs):
        raise AssertionError("the cache was expanded to every query head")

    monkeypatch.setattr(torch.Tensor, "repeat_interleave", refuse)
    with torch.no_grad():
        out = attn(q, k, v, causal=True, query_offset=63)
    assert attn.backend == "gather" and torch.allclose(out, expected, atol=1e-12)


def test_a_decoding_step_without_grad_after_one_in_inference_mode():
    attn = ai.build("dilated", "gather", **PARAMS["dilated"])
    q, k, v = _qkv(batch=1, queries=1, keys=32, dtype=torch.float32)
    with torch.inference_mode():
        first = attn(q, k, v, causal=True, query_offset=31)
    with torch.no_grad():
        again = attn(q, k, v, causal=True, query_offset=31)  # the kept buffers were inference tensors
    assert torch.equal(first, again)
