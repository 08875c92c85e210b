"""Fault hooks for the runner's tests (benchmark.fault_hook=shootout_faults:<name>): each wraps the attention
module of a point and misbehaves at some sequence lengths, the way a real kernel or machine would."""

from __future__ import annotations

import os
import signal
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


def _in_a_worker() -> None:
    import multiprocessing

    if multiprocessing.current_process().name != "shootout-worker":
        raise RuntimeError("this fault hook ends its process: run it with benchmark.isolation=process")


def sigkill_once_at_128(point, attn):
    """At N=128 the worker gets a SIGKILL (as from `kill -9`: the OOM-kill counter does not move), once: the hook
    leaves the file named by SHOOTOUT_FAULT_MARKER behind and lets later calls run."""
    def fault(seq_len, call):
        marker = os.environ["SHOOTOUT_FAULT_MARKER"]
        if seq_len == 128 and not os.path.exists(marker):
            _in_a_worker()
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return call()
    return _Faulty(attn, fault)


def _dies_at_128(attn, last_words: bytes, end) -> _Faulty:
    def fault(seq_len, call):
        if seq_len == 128:
            _in_a_worker()
            os.write(2, last_words)
            end()
        return call()
    return _Faulty(attn, fault)


def abort_at_128(point, attn):
    """A kernel that crashes its process at N=128 (SIGABRT, raised by the process itself)."""
    return _dies_at_128(attn, b"terminate called after throwing an instance of 'c10::Error'\n", os.abort)


def libgomp_exit_at_128(point, attn):
    """What libgomp does when its threads cannot get memory: a line on stderr, then exit(1)."""
    return _dies_at_128(attn, b"libgomp: Thread creation failed: Resource temporarily unavailable\n",
                        lambda: os._exit(1))
