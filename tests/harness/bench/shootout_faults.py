"""Fault hooks for the runner's tests (benchmark.fault_hook=shootout_faults:<name>): each wraps the attention
module of a point and misbehaves at some sequence lengths, the way a real kernel or machine would."""

from __future__ import annotations

import time

import torch


class _Faulty:
    def __init__(self, attn, fault) -> None:
        self.attn, self.fault = attn, fault

    @property
    def backend(self):
        return self.attn.backend

    def __call__(self, q, k, v, causal=False):
        return self.fault(q.shape[1], lambda: self.attn(q, k, v, causal=causal))


def _memory_error_from(limit):
    def fault(seq_len, call):
        if seq_len >= limit:
            raise MemoryError(f"simulated out-of-memory at seq_len={seq_len}")
        return call()
    return fault


def oom_from_128(point, attn):
    return _Faulty(attn, _memory_error_from(128))


def oom_above_320(point, attn):
    return _Faulty(attn, _memory_error_from(321))


def nan_at_128(point, attn):
    def fault(seq_len, call):
        out = call()
        return out * float("nan") if seq_len == 128 else out
    return _Faulty(attn, fault)


def off_by_a_bit(point, attn):
    return _Faulty(attn, lambda seq_len, call: call() + 1e-2)


def hang_at_128(point, attn):
    def fault(seq_len, call):
        if seq_len == 128:
            time.sleep(600)
        return call()
    return _Faulty(attn, fault)


def allocate_64_mib(point, attn):
    """Adds a 64 MiB temporary to every call: the memory measurement must see it."""
    def fault(seq_len, call):
        scratch = torch.ones(16 * 2**20)  # 64 MiB of float32, written so the pages are resident
        out = call()
        return out + 0 * scratch[0]
    return _Faulty(attn, fault)


def hang_in_paper_scaling(measurement: str) -> None:
    """targets.fault_hook: the 1M-token scaling measurement never returns (a kernel that hangs)."""
    if measurement == "dilated_scaling":
        time.sleep(3600)
