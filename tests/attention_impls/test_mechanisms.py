"""What every mechanism declares (attention_impls/mechanisms/): the fast index function and the closed-form pair
count agree with the reference written from the spec, the parameter strategy yields valid parameters, and every
backend file registers a backend."""

from __future__ import annotations

import importlib

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import attention_impls as ai
from attention_impls import ops
from attention_impls.mechanisms import REGISTRY as MECHANISMS
from attention_impls.mechanisms import get_mechanism
from attention_impls.registry import REGISTRY

from test_backends import SETTINGS


@pytest.mark.parametrize("name", ai.MECHANISMS)
def test_index_function_and_pair_count_match_the_reference(name):
    mechanism = get_mechanism(name)

    @SETTINGS
    @given(params=mechanism.param_strategy(), seq_len=st.integers(1, 40), heads=st.integers(1, 5),
           causal=st.booleans())
    def check(params, seq_len, heads, causal):
        spec = mechanism.make_params(**params)
        expected = mechanism.reference_multiplicity(spec, seq_len, heads, causal)
        position = torch.arange(seq_len)
        fast = mechanism.multiplicity(spec, seq_len, heads, causal)(
            position[None, :, None], position[None, None, :], torch.arange(heads)[:, None, None])
        assert torch.equal(fast.long().expand(heads, seq_len, seq_len), expected)
        assert mechanism.pairs(spec, seq_len, heads, causal) == int(expected.sum())
        assert ai.useful_pairs(spec, seq_len, heads, causal) == int(expected.sum())

    check()


@pytest.mark.parametrize("name", ai.MECHANISMS)
def test_each_mechanism_has_a_reference_backend_and_an_automatic_pick_on_cpu(name):
    assert "reference" in REGISTRY[name]
    mechanism = MECHANISMS[name]
    attn = ai.build(name, **mechanism.example_params)
    q = torch.randn(1, 48, 2, 8)
    torch.testing.assert_close(attn(q, q, q, causal=True), ai.build(name, "reference", **mechanism.example_params)(
        q, q, q, causal=True), atol=1e-5, rtol=1e-5)
    assert attn.backend != "reference"  # references are never picked automatically


def test_every_backend_module_registers_a_backend():
    registered = {cls.__module__ for backends in REGISTRY.values() for cls in backends.values()}
    for module in ops.BACKEND_MODULES:
        assert f"attention_impls.ops.{module}" in registered, f"ops/{module}.py registers no backend"
        importlib.import_module(f"attention_impls.ops.{module}")


def test_an_unknown_mechanism_names_the_known_ones():
    with pytest.raises(ValueError, match=r"mechanism='dilate' is not known \(did you mean 'dilated'\?\)"):
        get_mechanism("dilate")
