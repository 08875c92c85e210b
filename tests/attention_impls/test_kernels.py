"""The kernels' calling conventions. torch's CUDA flash kernel is checked here on meta tensors (its schema, the
shapes and dtypes it returns, our plumbing around it); its numbers are checked against the reference on a GPU
(test_backends.py, CUDA tests)."""

from __future__ import annotations

import pytest
import torch

import attention_impls as ai
from attention_impls.dilated_merge import dilated_backward, dilated_forward
from attention_impls.kernels import CpuFlashKernel, CudaFlashKernel, MathKernel
from attention_impls.ops._optional import cuda_flash_unsupported
from attention_impls.ops.dilated_gather import branch_kernel
from attention_impls.registry import get_backend_class


@pytest.mark.parametrize("window", [None, (3, 0), (5, 7)])
def test_cuda_flash_kernel_calls_match_torch_schemas(window):
    q, k, v, grad_out = (torch.empty(2, 40, 4, 64, device="meta", dtype=torch.bfloat16) for _ in range(4))
    kernel = CudaFlashKernel(window)
    out, lse = kernel.forward(q, k, v, causal=window is None, scale=0.125)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == (2, 4, 40) and lse.dtype == torch.float32  # (batch, heads, seq): the LseKernel layout
    grads = kernel.backward(grad_out, q, k, v, out, lse, causal=window is None, scale=0.125)
    assert [g.shape for g in grads] == [q.shape] * 3


def test_dilated_merge_runs_through_the_cuda_flash_kernel():
    params = ai.make_params("dilated", segment_lengths=[8, 16, 32], dilation_rates=[1, 2, 4])
    q, k, v, grad_out = (torch.empty(1, 50, 4, 16, device="meta", dtype=torch.float16) for _ in range(4))
    out, lse = dilated_forward(q, k, v, params, CudaFlashKernel(), causal=True)
    assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == (1, 4, 50)
    grads = dilated_backward(grad_out, q, k, v, out, lse, params, CudaFlashKernel(), causal=True)
    assert [(g.shape, g.dtype) for g in grads] == [(q.shape, q.dtype)] * 3


def test_flash_backends_say_why_they_cannot_run_on_cpu():
    reasons = get_backend_class("sliding_window", "flash").not_supported_reasons("cpu", torch.float32, True, True)
    text = "; ".join(reasons)
    assert "device=cpu (supported: cuda)" in text and "dtype=float32 (supported: bfloat16, float16)" in text
    assert cuda_flash_unsupported(torch.zeros(1, 4, 1, 8)) == "device=cpu (the kernel runs on cuda)"
    # head_dim is part of what the backend declares, so that backend=None passes over it for a head_dim it can't take
    flash = get_backend_class("sliding_window", "flash")
    odd = flash.not_supported_reasons("cuda", torch.bfloat16, True, True, head_dim=12)
    assert "head_dim=12 (supported: multiples of 8 up to 256)" in odd
    assert not any("head_dim" in r for r in flash.not_supported_reasons("cuda", torch.bfloat16, True, True, 64))
    if not torch.backends.cuda.is_flash_attention_available():  # a CPU build of torch, as in CI
        (flash,) = [b for b in ai.backends("sliding_window") if b.name == "flash"]
        assert not flash.available and "built without CUDA flash attention" in flash.reason
        # and gather falls back to plain PyTorch off the CPU
        assert isinstance(branch_kernel(torch.empty(1, 4, 1, 8, device="meta", dtype=torch.bfloat16)), MathKernel)
    assert isinstance(branch_kernel(torch.zeros(1, 4, 1, 8)), CpuFlashKernel)


def test_flash_says_why_on_a_gpu_older_than_the_kernel(monkeypatch):
    # a pre-Ampere GPU, as torch reports it: the reason comes from not_supported_reasons, before any forward
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    flash = get_backend_class("sliding_window", "flash")
    assert "compute capability (7, 0) (needs >= (8, 0))" in flash.not_supported_reasons("cuda", torch.bfloat16,
                                                                                         True, True, head_dim=64)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert not any("capability" in r for r in flash.not_supported_reasons("cuda", torch.bfloat16, True, True, 64))
