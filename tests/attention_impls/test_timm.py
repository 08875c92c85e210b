"""attention_impls.timm in a tiny timm ViT built from its arguments (nothing downloaded): dense equals timm's own
attention, every mechanism equals timm's attention under the pattern's own mask, dropout only in training, the
state_dict keys unchanged, training lowers the loss, clear errors.

timm needs torchvision, and PyPI's torchvision is built against a CUDA torch: beside .venv's CPU torch 2.13.0 it
fails to import ('operator torchvision::nms does not exist'). So these tests run in .venv-timm (made by
scripts/setup_timm.sh, with the torch and torchvision this machine has as a matching pair), and the suite in .venv
runs them there as one test.
"""

import copy
import os
import subprocess
from pathlib import Path

import pytest
import torch

try:
    import timm
except ImportError:
    timm = None

ROOT = Path(__file__).resolve().parents[2]
TIMM_PYTHON = ROOT / ".venv-timm" / "bin" / "python"
PARAMS = {"dense": {}, "sliding_window": {"window": 3},
          "dilated": {"segment_lengths": [4, 8], "dilation_rates": [1, 2]},
          "longformer": {"window": 2, "global_tokens": 1}}
needs_timm = pytest.mark.skipif(timm is None, reason="timm is not importable here (run in .venv-timm)")


@pytest.mark.skipif(timm is not None, reason="timm is importable here: the tests below run in this process")
def test_the_timm_tests_pass_in_the_timm_environment():
    if not (TIMM_PYTHON.parent.parent / ".setup-stamp").exists():  # written once the environment is complete
        pytest.skip("no .venv-timm: scripts/setup_timm.sh makes it where the disk has room (it says so when not)")
    result = subprocess.run([str(TIMM_PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)),
                             "-k", "not the_timm_tests_pass"],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and " skipped" not in result.stdout, result.stdout[-2000:]


def _vit(**extra):
    """17 tokens: a class token and 4 x 4 patches of 8 x 8 pixels."""
    torch.manual_seed(0)
    arguments = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=10)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**arguments, **extra})


def _images(batch=2, seed=1):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _swapped(model, mechanism, **params):
    ours = copy.deepcopy(model)
    import attention_impls.timm as shootout_timm

    assert shootout_timm.swap_attention(ours, mechanism, **params) == len(model.blocks)
    return ours


@needs_timm
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_dense_equals_timm_attention_and_keeps_the_state_dict(mode):
    theirs = _vit()
    ours = _swapped(theirs, "dense")
    assert list(ours.state_dict()) == list(theirs.state_dict())
    getattr(theirs, mode)(), getattr(ours, mode)()
    assert torch.allclose(ours(_images()), theirs(_images()), atol=1e-5, rtol=0)
    ours.load_state_dict(theirs.state_dict())  # a timm checkpoint loads into the swapped model


def _pattern_bias(mechanism, tokens, heads):
    """(H, N, N): log of how often each pair is scored (-inf where never): the spec's pattern as an SDPA mask."""
    from attention_impls.mechanisms import get_mechanism

    rule = get_mechanism(mechanism)
    count = rule.multiplicity(rule.make_params(**PARAMS[mechanism]), tokens, heads, False)(
        torch.arange(tokens)[None, :, None], torch.arange(tokens)[None, None, :], torch.arange(heads)[:, None, None])
    return torch.log(count.to(torch.float64))


@needs_timm
@pytest.mark.parametrize("mechanism", sorted(PARAMS))
def test_every_mechanism_equals_timm_attention_under_its_pattern(mechanism):
    """Block by block in float64: the swapped attention equals timm's own (SDPA) with the pattern as attn_mask."""
    model = _vit().double().eval()
    ours = _swapped(model, mechanism, **PARAMS[mechanism])
    tokens = model.patch_embed.num_patches + model.num_prefix_tokens
    x = torch.randn(2, tokens, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    bias = _pattern_bias(mechanism, tokens, 4)
    for block, swapped in zip(model.blocks, ours.blocks):
        expected = block.attn(x, attn_mask=bias)
        assert torch.allclose(swapped.attn(x), expected, atol=1e-12, rtol=0), mechanism
        if mechanism != "dense":
            assert not torch.allclose(swapped.attn(x), block.attn(x), atol=1e-3)  # the pattern changes something
        # an attn_mask from the caller is applied on top of the pattern
        extra = torch.zeros(tokens, tokens, dtype=torch.float64).masked_fill(torch.eye(tokens, dtype=torch.bool),
                                                                            -1.0)
        assert torch.allclose(swapped.attn(x, attn_mask=extra), block.attn(x, attn_mask=bias + extra),
                              atol=1e-12, rtol=0)


@needs_timm
def test_attention_dropout_only_in_training():
    model = _swapped(_vit(attn_drop_rate=0.5), "dilated", **PARAMS["dilated"])
    plain = _swapped(_vit(), "dilated", **PARAMS["dilated"])
    model.eval(), plain.eval()
    assert torch.equal(model(_images()), plain(_images()))
    model.train()
    torch.manual_seed(3)
    first = model(_images())
    second = model(_images())
    assert not torch.allclose(first, second)


@needs_timm
def test_training_a_swapped_vit_lowers_the_loss():
    model = _swapped(_vit(), "sliding_window", **PARAMS["sliding_window"]).train()
    images, labels = _images(batch=16), torch.arange(16) % 10
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@needs_timm
def test_clear_errors_and_an_untouched_model():
    import attention_impls.timm as shootout_timm

    model = _vit()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="window"):
        shootout_timm.swap_attention(model, "sliding_window", window=-1)
    with pytest.raises(ValueError, match="mechanism"):
        shootout_timm.swap_attention(model, "dilatd")
    assert all(type(block.attn).__name__ == "Attention" for block in model.blocks)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    with pytest.raises(ValueError, match="no timm.layers.Attention"):
        shootout_timm.swap_attention(torch.nn.Sequential(torch.nn.Linear(2, 2)), "dense")
