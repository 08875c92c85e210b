"""Every available backend against the float64 reference: outputs, gradients, causality.

Tolerances (unit-variance inputs, errors against float64): float32 output max abs error < 1e-4 and gradient
relative L2 error < 1e-4; float64 1e-10 / 1e-10; bfloat16 output 3e-2 (8 bits of mantissa).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attention_impls as ai
from attention_impls.dilated_merge import dilated_attention
from attention_impls.kernels import CpuFlashKernel, MathKernel
from attention_impls.mechanisms import get_mechanism
from attention_impls.registry import REGISTRY

TOLERANCE = {torch.float32: (1e-4, 1e-4), torch.float64: (1e-10, 1e-10)}

CPU_BACKENDS = {
    mechanism: sorted(
        name for name, cls in REGISTRY[mechanism].items()
        if name != "reference" and not cls.needs_compile and not cls.not_supported_reasons("cpu", torch.float32,
                                                                                         False, True)
    )
    for mechanism in ai.MECHANISMS
}
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def shapes(draw):
    return dict(
        batch=draw(st.integers(1, 2)),
        seq_len=draw(st.sampled_from([1, 2, 3, 7, 16, 31, 50])),
        heads=draw(st.integers(1, 5)),
        head_dim=draw(st.sampled_from([1, 4, 8, 16])),
        causal=draw(st.booleans()),
    )


def dilated_params():
    return get_mechanism("dilated").param_strategy()


window_params = get_mechanism("sliding_window").param_strategy()
# Each mechanism draws its own valid parameters (attention_impls/mechanisms/<name>.py, param_strategy).
PARAMS = {mechanism: get_mechanism(mechanism).param_strategy() for mechanism in ai.MECHANISMS}


def _inputs(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    size = (shape["batch"], shape["seq_len"], shape["heads"], shape["head_dim"])
    return [torch.randn(size, generator=g, dtype=torch.float64) for _ in range(3)] + [
        torch.randn(size, generator=g, dtype=torch.float64)]


def _reference(mechanism, params, q, k, v, grad_out, causal):
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out = ai.build(mechanism, "reference", **params)(*leaves, causal=causal)
    out.backward(grad_out)
    return out.detach(), [x.grad for x in leaves]


def assert_matches_reference(attn_fn, mechanism, params, shape, dtype=torch.float32, backward=True, seed=0):
    q, k, v, grad_out = _inputs(shape, dtype, seed)
    expected, expected_grads = _reference(mechanism, params, q, k, v, grad_out, shape["causal"])
    leaves = [x.to(dtype).requires_grad_(backward) for x in (q, k, v)]
    out = attn_fn(*leaves, causal=shape["causal"])
    assert out.shape == q.shape and out.dtype == dtype
    out_tol, grad_tol = TOLERANCE[dtype]
    err = (out.double() - expected).abs().max().item()
    assert err < out_tol, f"max abs error {err:.2e} >= {out_tol} for {mechanism} {params} {shape}"
    if backward:
        out.backward(grad_out.to(dtype))
        for name, leaf, ref in zip("qkv", leaves, expected_grads):
            # relative L2, with an absolute floor for gradients that are exactly zero (a query with one key)
            diff = (leaf.grad.double() - ref).norm().item()
            assert diff <= grad_tol * ref.norm().item() + 1e-5 * ref.numel() ** 0.5, (
                f"d{name} relative L2 error {diff / max(ref.norm().item(), 1e-30):.2e} for {mechanism} {params} {shape}")


@pytest.mark.parametrize(
    "mechanism, backend", [(m, b) for m in ai.MECHANISMS for b in CPU_BACKENDS[m]]
)
def test_backend_matches_reference_outputs_and_gradients(mechanism, backend):
    @SETTINGS
    @given(shape=shapes(), params=PARAMS[mechanism], seed=st.integers(0, 2**16))
    def check(shape, params, seed):
        assert_matches_reference(ai.build(mechanism, backend, **params), mechanism, params, shape, seed=seed)

    check()


@pytest.mark.parametrize("kernel", [CpuFlashKernel(), MathKernel()], ids=lambda k: k.name)
def test_dilated_merge_is_exact_with_each_kernel(kernel):
    @SETTINGS
    @given(shape=shapes(), params=dilated_params(), seed=st.integers(0, 2**16))
    def check(shape, params, seed):
        dilated = ai.make_params("dilated", **params)
        fn = lambda q, k, v, causal: dilated_attention(q, k, v, dilated, kernel, causal)  # noqa: E731
        assert_matches_reference(fn, "dilated", params, shape, seed=seed)

    check()


@pytest.mark.parametrize(
    "mechanism, backend, params",
    [("dense", "sdpa", {}), ("sliding_window", "chunked", {"window": 5}),
     ("dilated", "gather", {"segment_lengths": [4, 8, 32], "dilation_rates": [1, 2, 4]})],
)
def test_float64_is_exact(mechanism, backend, params):
    shape = dict(batch=2, seq_len=29, heads=3, head_dim=8, causal=True)
    assert_matches_reference(ai.build(mechanism, backend, **params), mechanism, params, shape, dtype=torch.float64)


@pytest.mark.parametrize(
    "mechanism, backend, params",
    [("dense", "sdpa", {}), ("sliding_window", "chunked", {"window": [3, 9]}),
     ("dilated", "gather", {"segment_lengths": [4, 8, 32], "dilation_rates": [1, 2, 4]})],
)
def test_bfloat16_within_its_tolerance(mechanism, backend, params):
    q, k, v, _ = _inputs(dict(batch=1, seq_len=40, heads=4, head_dim=16), torch.bfloat16, 3)
    expected = ai.build(mechanism, "reference", **params)(q, k, v, causal=False)
    out = ai.build(mechanism, backend, **params)(*(x.bfloat16() for x in (q, k, v)))
    assert (out.double() - expected).abs().max().item() < 3e-2


# FlexAttention compiles per shape and pattern (seconds each on CPU), so it gets a few fixed cases, forward only.
FLEX_CASES = [
    ("sliding_window", {"window": [3, 9]}, dict(batch=1, seq_len=70, heads=2, head_dim=16, causal=False)),
    ("sliding_window", {"window": 5}, dict(batch=2, seq_len=33, heads=3, head_dim=8, causal=True)),
    ("dilated", {"segment_lengths": [8, 16, 64], "dilation_rates": [1, 2, 4]},
     dict(batch=1, seq_len=50, heads=5, head_dim=8, causal=False)),
    ("dilated", {"segment_lengths": [6, 20], "dilation_rates": [1, 3]},
     dict(batch=1, seq_len=41, heads=4, head_dim=16, causal=True)),
]


@pytest.mark.parametrize("mechanism, params, shape", FLEX_CASES)
def test_flex_matches_reference_forward(mechanism, params, shape):
    if REGISTRY[mechanism]["flex"].not_supported_reasons("cpu", torch.float32, shape["causal"], False):
        pytest.skip("; ".join(REGISTRY[mechanism]["flex"].not_supported_reasons("cpu", torch.float32, True, False)))
    assert_matches_reference(ai.build(mechanism, "flex", **params), mechanism, params, shape, backward=False)


CAUSAL_PARAMS = {"dense": {}, "sliding_window": {"window": [4, 6]},
                 "dilated": {"segment_lengths": [5, 12, 40], "dilation_rates": [1, 2, 3]}}
CAUSAL_CASES = [(m, b, CAUSAL_PARAMS.get(m, get_mechanism(m).example_params))
                for m in ai.MECHANISMS for b in CPU_BACKENDS[m]]


@pytest.mark.parametrize("mechanism, backend, params", CAUSAL_CASES)
def test_perturbing_the_future_never_changes_a_causal_output(mechanism, backend, params):
    attn = ai.build(mechanism, backend, **params)
    q, k, v, _ = (x.float() for x in _inputs(dict(batch=1, seq_len=37, heads=3, head_dim=8), torch.float32, 5))
    base = attn(q, k, v, causal=True)
    for cut in (0, 11, 36):
        perturbed = [x.clone() for x in (q, k, v)]
        for x in perturbed:
            x[:, cut + 1:] = torch.randn_like(x[:, cut + 1:]) * 10
        out = attn(*perturbed, causal=True)
        assert torch.equal(out[:, : cut + 1], base[:, : cut + 1])


@pytest.mark.parametrize("forward_block, backward_block, edge_rows", [(1, 2, 3), (3, 1, 256), (4, 5, 2)])
def test_band_path_with_many_blocks_and_edge_chunks_is_exact(forward_block, backward_block, edge_rows,
                                                             monkeypatch):
    """The CPU band path cuts queries into interior blocks against overlapping key views and edge chunks with
    masks of their own; small sizes make many of each, in batches, in the test's short sequences."""
    from attention_impls.ops import _window_band

    monkeypatch.setattr(_window_band, "FORWARD_BLOCK", forward_block)
    monkeypatch.setattr(_window_band, "backward_block", lambda left, right: backward_block)
    monkeypatch.setattr(_window_band, "EDGE_ROWS", edge_rows)
    monkeypatch.setattr(_window_band, "BACKWARD_GROUP_ROWS", 2 * backward_block)

    @SETTINGS
    @given(shape=shapes(), params=window_params, seed=st.integers(0, 2**16))
    def check(shape, params, seed):
        assert_matches_reference(ai.build("sliding_window", "chunked", **params), "sliding_window", params, shape,
                                 seed=seed)

    check()


@SETTINGS
@given(shape=shapes(), params=window_params, seed=st.integers(0, 2**16))
def test_unfold_path_off_the_cpu_is_exact(shape, params, seed):
    """The path `chunked` takes off the CPU, run here on CPU tensors."""
    from attention_impls.ops.sliding_window_chunked import unfold_attention

    window = ai.make_params("sliding_window", **params).window

    def unfold(q, k, v, causal):
        left, right = (min(side, q.shape[1] - 1) for side in window(causal))
        return unfold_attention(q, k, v, left, right, 1.0 / q.shape[-1] ** 0.5)

    assert_matches_reference(unfold, "sliding_window", params, shape, seed=seed)


def test_band_backward_blocks_grow_with_the_window():
    from attention_impls.ops._window_band import WIDE_BACKWARD_BLOCK, backward_block

    blocks = [backward_block(left, right) for left, right in [(8, 0), (63, 0), (64, 0), (100, 91), (512, 0), (0, 4096)]]
    assert blocks == [32, 32, 64, 64, WIDE_BACKWARD_BLOCK, WIDE_BACKWARD_BLOCK]
    assert blocks == sorted(blocks)


CUDA_PARAMS = {
    "dense": [{}],
    "sliding_window": [{"window": 37}, {"window": [5, 20]}],
    "dilated": [{"segment_lengths": [16, 64, 128], "dilation_rates": [1, 2, 4]}],
}
# (mechanism, backend, params, causal); a backend that compiles per shape (flex: tens of seconds a case) gets one
# case per mechanism, so that the GPU check fits its few minutes
CUDA_CASES = [
    (mechanism, name, params, causal)
    for mechanism, cases in CUDA_PARAMS.items()
    for name, cls in REGISTRY[mechanism].items()
    if name != "reference"
    for params in (cases[:1] if cls.needs_compile else cases)
    for causal in ((True,) if cls.needs_compile else (True, False))
]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mechanism, backend, params, causal", CUDA_CASES)
def test_cuda_backend_in_bfloat16_matches_reference(mechanism, backend, params, causal):
    """Every backend that runs on this GPU, bf16, outputs and gradients against the float64 reference (on the CPU):
    output max abs error < 3e-2, gradient relative L2 error < 3e-2."""
    cls = REGISTRY[mechanism][backend]
    if reasons := cls.not_supported_reasons("cuda", torch.bfloat16, causal, True):
        pytest.skip("; ".join(reasons))
    q, k, v, grad_out = _inputs(dict(batch=2, seq_len=300, heads=4, head_dim=64), torch.float64, 11)
    expected, expected_grads = _reference(mechanism, params, q, k, v, grad_out, causal)
    leaves = [x.to("cuda", torch.bfloat16).requires_grad_() for x in (q, k, v)]
    out = ai.build(mechanism, backend, **params)(*leaves, causal=causal)
    out.backward(grad_out.to("cuda", torch.bfloat16))
    assert (out.double().cpu() - expected).abs().max().item() < 3e-2
    for name, leaf, ref in zip("qkv", leaves, expected_grads):
        error = (leaf.grad.double().cpu() - ref).norm().item() / ref.norm().item()
        assert error < 3e-2, f"d{name} relative L2 error {error:.2e}"
