import pytest
import torch
from torch import nn

import attention_impls as ai


def test_dense_matches_torch_multihead_attention_with_the_same_weights():
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(32, 4, batch_first=True)
    ours = ai.MultiheadAttention(32, 4, mechanism="dense", backend="sdpa")
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 10, 32)
    for causal in (False, True):
        mask = nn.Transformer.generate_square_subsequent_mask(10) if causal else None
        expected, _ = theirs(x, x, x, need_weights=False, attn_mask=mask, is_causal=causal)
        got, weights = ours(x, x, x, need_weights=False, attn_mask=mask, is_causal=causal)
        assert weights is None
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mechanism, params", [
    ("sliding_window", {"window": 3}), ("dilated", {"segment_lengths": [4, 8], "dilation_rates": [1, 2]})])
def test_swaps_into_a_transformer_encoder_layer(mechanism, params):
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
    layer.self_attn = ai.MultiheadAttention(16, 2, mechanism=mechanism, **params)
    x = torch.randn(2, 12, 16, requires_grad=True)
    mask = nn.Transformer.generate_square_subsequent_mask(12)
    out = layer(x, src_mask=mask, is_causal=True)
    out.sum().backward()
    assert out.shape == x.shape and x.grad is not None and torch.isfinite(x.grad).all()
    # the causal layer ignores the future
    x2 = x.detach().clone()
    x2[:, 6:] += 5
    torch.testing.assert_close(layer(x2, src_mask=mask, is_causal=True)[:, :6], out[:, :6])


def test_unbatched_and_sequence_first_inputs():
    mha = ai.MultiheadAttention(8, 2, batch_first=False, mechanism="dense")
    x = torch.randn(5, 3, 8)  # (seq, batch, embed)
    out, _ = mha(x, x, x, need_weights=False)
    assert out.shape == (5, 3, 8)
    torch.testing.assert_close(mha(x[:, 0], x[:, 0], x[:, 0], need_weights=False)[0], out[:, 0])


def test_unsupported_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="dropout=0.1 is not supported"):
        ai.MultiheadAttention(8, 2, dropout=0.1)
    with pytest.raises(ValueError, match="embed_dim=10 must be a positive multiple of num_heads=4"):
        ai.MultiheadAttention(10, 4)
    mha = ai.MultiheadAttention(8, 2)
    x = torch.randn(1, 4, 8)
    with pytest.raises(ValueError, match="need_weights=True is not supported"):
        mha(x, x, x)
    with pytest.raises(ValueError, match="key_padding_mask is not supported"):
        mha(x, x, x, key_padding_mask=torch.zeros(1, 4, dtype=torch.bool), need_weights=False)


def test_qk_transform_runs_between_projection_and_attention():
    seen = {}

    def swap_heads(q, k):  # a transform the output must reflect: attend with k negated
        seen["shape"] = tuple(q.shape)
        return q, -k

    torch.manual_seed(0)
    plain = ai.MultiheadAttention(8, 2, mechanism="dense")
    transformed = ai.MultiheadAttention(8, 2, mechanism="dense", qk_transform=swap_heads)
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
