import pytest
import torch

import attention_impls as ai
from attention_impls.mechanisms import get_mechanism
from attention_impls.registry import PRIORITY, REGISTRY, SMALL_N_PRIORITY


def test_backends_lists_every_backend_with_a_reason_when_unavailable():
    rows = ai.backends()
    assert {(r.mechanism, r.name) for r in rows} == {(m, n) for m in REGISTRY for n in REGISTRY[m]}
    for row in rows:
        assert row.available == (row.reason == ""), row
    names = {r.name for r in ai.backends("dilated")}
    assert names == {"gather", "flex", "xformers", "masked_sdpa", "reference"}
    with pytest.raises(ValueError, match="mechanism='dense2'"):
        ai.backends("dense2")


def test_xformers_unavailable_on_cpu_says_why():
    rows = {(r.mechanism, r.name): r for r in ai.backends()}
    row = rows[("dense", "xformers")]
    assert row.devices == ("cuda",)
    if not torch.cuda.is_available():
        assert not row.available and ("xformers" in row.reason or "cuda" in row.reason)


def test_auto_pick_names_the_backend_and_respects_backward_support():
    attn = ai.build("sliding_window", window=4)
    q = torch.randn(1, 16, 2, 8, requires_grad=True)
    attn(q, q, q, causal=True).sum().backward()
    assert attn.backend in REGISTRY["sliding_window"]
    assert not REGISTRY["sliding_window"][attn.backend].not_supported_reasons("cpu", torch.float32, True, True)
    short = 16 <= SMALL_N_PRIORITY[("sliding_window", "cpu")][0]
    assert attn.picked[("cpu", "float32", True, 8, short)] == attn.backend  # keyed by head_dim and length too


def test_priority_lists_name_real_backends():
    for (mechanism, _device), order in PRIORITY.items():
        assert set(order) <= set(REGISTRY[mechanism]), order
        assert "reference" not in order


def test_a_backend_that_cannot_run_these_inputs_explains_and_lists_alternatives():
    attn = ai.build("sliding_window", "flex", window=4)
    q = torch.randn(1, 16, 2, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"backward is not supported on CPU.*Backends that can: .*chunked"):
        attn(q, q, q)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_selecting_unavailable_backend_raises_at_build_with_reason():
    with pytest.raises(RuntimeError, match=r"'xformers' is unavailable: xformers.*Available here: .*sdpa"):
        ai.build("dense", "xformers")


@pytest.mark.parametrize("mechanism, params", [("sliding_window", {"window": 8}),
                                                ("dilated", {"segment_lengths": [16, 32, 64],
                                                             "dilation_rates": [1, 2, 4]}),
                                                ("longformer", {"window": 8, "global_tokens": 2})])
def test_small_calls_pick_the_masked_kernel_large_ones_the_fast_backend(mechanism, params):
    """Small by the mechanism's own measure: N for the window, B x H x L x N for dilated and Longformer, whose
    crossover moves with the batch and the heads."""
    up_to, first = SMALL_N_PRIORITY[(mechanism, "cpu")]
    rule = get_mechanism(mechanism)
    for batch, heads in ((1, 2), (4, 4)):
        small = max(n for n in range(16, 4096, 16) if rule.small_n_size(n, batch * heads) <= up_to)
        attn = ai.build(mechanism, **params)
        for seq_len, expected in ((small, first[0]), (small + 16, PRIORITY[(mechanism, "cpu")][0])):
            q = torch.randn(batch, seq_len, heads, 8, requires_grad=True)
            attn(q, q, q, causal=True).sum().backward()
            assert attn.backend == expected, (batch, heads, seq_len, attn.picked)
