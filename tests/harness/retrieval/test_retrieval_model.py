import pytest
import torch

from harness.retrieval.config import ModelConfig
from harness.retrieval.model import Rotary, TinyDecoder

ATTENTIONS = [
    {"mechanism": "dense", "backend": None, "params": {}},
    {"mechanism": "sliding_window", "backend": None, "params": {"window": 4}},
    {"mechanism": "dilated", "backend": None, "params": {"segment_lengths": [8, 16], "dilation_rates": [1, 2]}},
]


@pytest.mark.parametrize("attention", ATTENTIONS, ids=lambda a: a["mechanism"])
@pytest.mark.parametrize("token_shift", [False, True])
def test_forward_backward_with_each_mechanism(attention, token_shift):
    torch.manual_seed(0)
    cfg = ModelConfig(layers=2, d_model=32, heads=4, mlp_ratio=2, token_shift=token_shift)
    model = TinyDecoder(cfg, vocab_size=20, attention=attention)
    tokens = torch.randint(20, (2, 24))
    logits = model(tokens)
    assert logits.shape == (2, 24, 20)
    logits.square().mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert model.blocks[0].attn.in_proj_weight.grad.abs().sum() > 0  # gradients reach through the attention
    assert all(b is not None for b in model.backends)


@pytest.mark.parametrize("attention", ATTENTIONS, ids=lambda a: a["mechanism"])
def test_model_is_causal(attention):
    torch.manual_seed(0)
    model = TinyDecoder(ModelConfig(d_model=32, heads=4, token_shift=True), vocab_size=20, attention=attention)
    tokens = torch.randint(20, (1, 24))
    changed = tokens.clone()
    changed[0, 15:] = (changed[0, 15:] + 1) % 20
    with torch.no_grad():
        assert torch.allclose(model(tokens)[0, :15], model(changed)[0, :15], atol=1e-6)


def test_rotary_scores_depend_only_on_the_offset():
    rotary = Rotary(head_dim=8, base=100.0)
    q = torch.randn(1, 1, 1, 8).expand(1, 32, 1, 8)
    k = torch.randn(1, 1, 1, 8).expand(1, 32, 1, 8)
    q_rot, k_rot = rotary(q, k)
    scores = torch.einsum("bphd,bjhd->pj", q_rot, k_rot)
    for offset in (0, 3, 17):
        diagonal = torch.diagonal(scores, offset=-offset)
        assert torch.allclose(diagonal, diagonal[0].expand_as(diagonal), atol=1e-5)
