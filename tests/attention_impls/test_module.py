"""attention_impls.MultiheadAttention as torch.nn.MultiheadAttention: dense equals torch's module with equal weights
(masks, padding, weights, dropout, kdim/vdim), and every mechanism runs inside torch's Transformer layers in train
and eval mode, where torch's fused fast path must never run dense attention in its place."""

import copy

import pytest
import torch
from torch import nn

import attention_impls as ai

WINDOW = ("sliding_window", {"window": 1})
DILATED = ("dilated", {"segment_lengths": [4, 8], "dilation_rates": [1, 2]})


def _pair(embed=32, heads=4, **kwargs):
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(embed, heads, **kwargs)
    ours = ai.MultiheadAttention(embed, heads, mechanism="dense", backend="sdpa", **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


@pytest.mark.parametrize("batch_first", [False, True])
def test_dense_equals_torch_with_masks_padding_and_weights(batch_first):
    theirs, ours = _pair(batch_first=batch_first)
    x = torch.randn(2, 10, 32) if batch_first else torch.randn(10, 2, 32)
    padding = torch.zeros(2, 10, dtype=torch.bool)
    padding[1, 7:] = True
    causal = nn.Transformer.generate_square_subsequent_mask(10)
    banded = torch.ones(10, 10, dtype=torch.bool).triu(3)  # torch's bool convention: True = not allowed
    for kwargs in (dict(), dict(key_padding_mask=padding), dict(attn_mask=causal, is_causal=True),
                   dict(attn_mask=causal, key_padding_mask=padding), dict(attn_mask=banded),
                   dict(attn_mask=torch.randn(8, 10, 10))):
        for need_weights, average in ((False, True), (True, True), (True, False)):
            expected, expected_weights = theirs(x, x, x, need_weights=need_weights,
                                                average_attn_weights=average, **kwargs)
            got, weights = ours(x, x, x, need_weights=need_weights, average_attn_weights=average, **kwargs)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
            if need_weights:
                torch.testing.assert_close(weights, expected_weights, atol=1e-6, rtol=1e-5)
            else:
                assert weights is None


def test_dense_dropout_in_training_is_torchs_under_the_same_seed():
    theirs, ours = _pair(batch_first=True, dropout=0.25)
    x = torch.randn(2, 10, 32)
    for module in (theirs, ours):
        module.train()
    torch.manual_seed(3)
    expected, _ = theirs(x, x, x, need_weights=False)
    torch.manual_seed(3)
    got, _ = ours(x, x, x, need_weights=False)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    ours.eval()
    assert torch.equal(ours(x, x, x, need_weights=False)[0], ours(x, x, x, need_weights=False)[0])


def test_dense_cross_attention_with_kdim_and_vdim_equals_torch():
    theirs, ours = _pair(batch_first=True, kdim=12, vdim=20)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    query, key, value = torch.randn(2, 5, 32), torch.randn(2, 9, 12), torch.randn(2, 9, 20)
    expected, _ = theirs(query, key, value, need_weights=False)
    got, _ = ours(query, key, value, need_weights=False)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _swap(module: nn.Module, mechanism: str, params: dict, only_self: bool = False) -> None:
    """Replace every nn.MultiheadAttention inside `module` with ours, weights copied."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.MultiheadAttention) and not (only_self and name == "multihead_attn"):
            ours = ai.MultiheadAttention(child.embed_dim, child.num_heads, dropout=child.dropout,
                                         batch_first=child.batch_first, mechanism=mechanism, **params)
            ours.load_state_dict(child.state_dict())
            setattr(module, name, ours)
        else:
            _swap(child, mechanism, params, only_self)


@pytest.mark.parametrize("kind", ["encoder", "decoder", "transformer"])
def test_dense_inside_torchs_transformers_equals_torch_in_train_and_eval(kind):
    torch.manual_seed(0)
    if kind == "encoder":
        theirs = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True), 2,
                                       enable_nested_tensor=False)
    elif kind == "decoder":
        theirs = nn.TransformerDecoder(nn.TransformerDecoderLayer(16, 2, 32, dropout=0.1, batch_first=True), 2)
    else:
        theirs = nn.Transformer(16, 2, 1, 1, 32, dropout=0.1, batch_first=True)
    ours = copy.deepcopy(theirs)
    _swap(ours, "dense", {})
    src, tgt = torch.randn(2, 10, 16), torch.randn(2, 7, 16)
    causal = nn.Transformer.generate_square_subsequent_mask(7)
    padding = torch.zeros(2, 10, dtype=torch.bool)
    padding[0, 8:] = True

    def call(model):
        if kind == "encoder":
            return model(src, src_key_padding_mask=padding)
        if kind == "decoder":
            return model(tgt, src, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=padding)
        return model(src, tgt, tgt_mask=causal, src_key_padding_mask=padding, memory_key_padding_mask=padding)

    for train in (True, False):
        theirs.train(train)
        ours.train(train)
        torch.manual_seed(5)
        expected = call(theirs)
        torch.manual_seed(5)
        got = call(ours)
        if not train:  # in training the dropout masks of the two differ where torch takes its fused path
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        assert got.shape == expected.shape and torch.isfinite(got[~padding] if kind == "encoder" else got).all()


@pytest.mark.parametrize("mechanism, params", [WINDOW, DILATED])
def test_a_pattern_inside_an_encoder_is_never_replaced_by_dense_in_eval_mode(mechanism, params):
    """torch's fused encoder path runs when the attention says `_qkv_same_embed_dim`; it must not here."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)
    dense = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    ours = copy.deepcopy(dense)
    _swap(ours, mechanism, params)
    x = torch.randn(2, 12, 16)
    with torch.no_grad():
        out_eval = ours(x)
        assert not torch.allclose(out_eval, dense(x), atol=1e-3)  # the pattern ran, not dense attention
        ours.train()
        torch.manual_seed(1)
        out_train = ours(x)
    assert torch.isfinite(out_train).all() and not torch.allclose(out_train, out_eval)  # dropout in training
    # eval mode equals the pattern computed by hand: each layer's attention through the reference
    reference = copy.deepcopy(dense)
    _swap(reference, mechanism, params)
    for module in reference.modules():
        if isinstance(module, ai.MultiheadAttention):
            module.attention = ai.build(mechanism, "reference", **params)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), reference.eval()(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mechanism, params", [WINDOW, DILATED])
def test_a_pattern_in_a_decoder_layer_with_padding_and_a_causal_mask(mechanism, params):
    torch.manual_seed(0)
    layer = nn.TransformerDecoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    _swap(layer, mechanism, params, only_self=True)  # cross-attention stays dense: the spec defines only dense
    tgt, memory = torch.randn(2, 8, 16, requires_grad=True), torch.randn(2, 10, 16)
    causal = nn.Transformer.generate_square_subsequent_mask(8)
    padding = torch.zeros(2, 8, dtype=torch.bool)
    padding[1, 6:] = True
    out = layer(tgt, memory, tgt_mask=causal, tgt_key_padding_mask=padding, tgt_is_causal=True)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(tgt.grad).all()
    changed = tgt.detach().clone()
    changed[:, 5:] += 3  # the future of position 4
    torch.testing.assert_close(layer(changed, memory, tgt_mask=causal, tgt_key_padding_mask=padding)[:, :5],
                               out[:, :5])


def test_a_pattern_returns_its_own_weights():
    mha = ai.MultiheadAttention(8, 2, batch_first=True, mechanism="sliding_window", window=1)
    x = torch.randn(1, 6, 8)
    _, weights = mha(x, x, x, average_attn_weights=False, is_causal=True)
    assert weights.shape == (1, 2, 6, 6)
    band = torch.ones(6, 6, dtype=torch.bool).tril().triu(-1)  # the query and the key before it
    assert (weights[..., ~band] == 0).all() and (weights[..., band] > 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2, 6))


def test_unbatched_and_sequence_first_inputs():
    mha = ai.MultiheadAttention(8, 2, mechanism="dense")  # batch_first=False, torch's default
    x = torch.randn(5, 3, 8)  # (seq, batch, embed)
    out, _ = mha(x, x, x, need_weights=False)
    assert out.shape == (5, 3, 8)
    torch.testing.assert_close(mha(x[:, 0], x[:, 0], x[:, 0], need_weights=False)[0], out[:, 0])


def test_unsupported_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="add_bias_kv=True is not supported by attention_impls.MultiheadAttention"):
        ai.MultiheadAttention(8, 2, add_bias_kv=True)
    with pytest.raises(ValueError, match="add_zero_attn=True is not supported"):
        ai.MultiheadAttention(8, 2, add_zero_attn=True)
    with pytest.raises(ValueError, match="dropout=1.5 must be a probability in"):
        ai.MultiheadAttention(8, 2, dropout=1.5)
    with pytest.raises(ValueError, match="embed_dim=10 must be a positive multiple of num_heads=4"):
        ai.MultiheadAttention(10, 4)
    mha = ai.MultiheadAttention(8, 2, batch_first=True, mechanism="sliding_window", window=2)
    x = torch.randn(1, 4, 8)
    with pytest.raises(ValueError, match=r"key_padding_mask must be \(batch, S\) = \(1, 4\), got \(4,\)"):
        mha(x, x, x, key_padding_mask=torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="is_causal=True but attn_mask is not the causal mask"):
        mha(x, x, x, attn_mask=torch.zeros(4, 4), is_causal=True)
    with pytest.raises(ValueError, match="sliding_window attention of 3 queries against 4 keys needs query_offset="):
        mha(x[:, :3], x, x)


def test_qk_transform_runs_between_projection_and_attention():
    seen = {}

    def swap_heads(q, k):  # a transform the output must reflect: attend with k negated
        seen["shape"] = tuple(q.shape)
        return q, -k

    torch.manual_seed(0)
    plain = ai.MultiheadAttention(8, 2, batch_first=True, mechanism="dense")
    transformed = ai.MultiheadAttention(8, 2, batch_first=True, mechanism="dense", qk_transform=swap_heads)
    transformed.load_state_dict(plain.state_dict())
    x = torch.randn(1, 6, 8)
    out_plain = plain(x, x, x, need_weights=False)[0]
    out_transformed = transformed(x, x, x, need_weights=False)[0]
    assert seen["shape"] == (1, 6, 2, 4)
    assert not torch.allclose(out_plain, out_transformed)
    # negating k is the same as negating the key projection's weights
    with torch.no_grad():
        plain.in_proj_weight[8:16].neg_()
    torch.testing.assert_close(plain(x, x, x, need_weights=False)[0], out_transformed)
