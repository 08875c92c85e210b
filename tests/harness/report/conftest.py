"""Shared fixtures for the report tests.

FIXTURE DATA, not measurements: plausible rows in the store's format, built from simple cost models, so the
report code can be tested without running a sweep. Nothing here is a measured number."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from harness.store import config_hash

SEQ_LENS = (256, 512, 1024, 2048, 4096)
DILATED = {"segment_lengths": [64, 128, 256], "dilation_rates": [1, 2, 4]}
MATMUL_PEAK = 1.5e11  # fixture ceiling, FLOP/s

# (mechanism, backend, params, cost per (query, key) pair in ns, N -> status that replaces the measurement)
SPEED_VARIANTS = [
    ("dense", "sdpa", {}, 1.5, {}),
    ("dense", "math", {}, 3.0, {4096: "oom"}),
    ("sliding_window", "chunked", {"window": 64}, 4.0, {}),
    ("sliding_window", "masked_sdpa", {"window": 64}, 2.0, {2048: "timeout", 4096: "timeout"}),
    ("dilated", "gather", DILATED, 6.0, {}),
    ("dilated", "xformers", DILATED, 1.0, {n: "unsupported" for n in SEQ_LENS}),
    ("dilated", "flex", DILATED, 3.0, {1024: "wrong"}),
]
REASONS = {"oom": "out of memory: tried to allocate 512.00 MiB", "timeout": "exceeded 30 s budget",
           "unsupported": "device=cpu (supported: cuda)", "wrong": "max_abs_err=0.31 > atol=0.001"}


def _pairs(mechanism: str, params: dict, n: int) -> int:
    if mechanism == "dense":
        return n * n
    if mechanism == "sliding_window":
        w = params["window"]
        return n * (2 * w + 1) - w * (w + 1)
    return sum(n * min(s, n) // (r * r) for s, r in zip(params["segment_lengths"], params["dilation_rates"]))


def speed_rows() -> list[dict]:
    rows = []
    heads, head_dim, batch = 4, 32, 1
    for mechanism, backend, params, ns_per_pair, failures in SPEED_VARIANTS:
        for pass_name, factor in (("forward", 1.0), ("forward_backward", 3.5)):
            for n in SEQ_LENS:
                config = dict(mechanism=mechanism, backend=backend, params=params, batch=batch, seq_len=n,
                              heads=heads, head_dim=head_dim, dtype="float32", causal=False, pass_=pass_name)
                status = failures.get(n, "ok")
                pairs = _pairs(mechanism, params, n) * heads
                latency = factor * (pairs * ns_per_pair * 1e-9 + 2e-4)
                flops = factor * 4 * head_dim * pairs * batch
                row = dict(kind="speed", status=status, reason=REASONS.get(status, ""), mechanism=mechanism,
                           backend=backend, params=json.dumps(params), batch=batch, seq_len=n, heads=heads,
                           head_dim=head_dim, dtype="float32", causal=False, device="cpu", mem_method="tracemalloc",
                           config=json.dumps(config), config_hash=config_hash(config), useful_flops=flops,
                           matmul_peak_flops_per_s=MATMUL_PEAK, env_torch="2.13.0+cpu",
                           env_device_name="Fixture CPU", env_cpu_model="Fixture CPU", env_threads=2)
                row["pass"] = pass_name
                if status in ("ok", "wrong"):
                    row.update(latency_median_s=latency, latency_iqr_s=0.03 * latency, latency_min_s=0.97 * latency,
                               latency_count=20, tokens_per_s=batch * n / latency,
                               peak_mem_bytes=int(4 * (pairs if mechanism == "dense" else 3 * n * heads * 64) + 2**20),
                               flops_per_s=flops / latency, fraction_of_peak=flops / latency / MATMUL_PEAK,
                               max_abs_err=0.31 if status == "wrong" else 1e-6)
                rows.append(row)
    return rows


RETRIEVAL_VARIANTS = [
    ("dense", "sdpa", {}, math.inf),
    ("sliding_window", "chunked", {"window": 64}, 128.0),
    ("dilated", "gather", DILATED, 1024.0),
]
BUCKETS = ((0, 64), (64, 256), (256, 1024), (1024, 4096))


def retrieval_rows() -> list[dict]:
    rows = []
    for mechanism, backend, params, reach in RETRIEVAL_VARIANTS:
        common = dict(kind="retrieval", mechanism=mechanism, backend=backend, params=json.dumps(params),
                      reach=reach, config_hash=config_hash({"m": mechanism, "p": params}))
        for lo, hi in BUCKETS:
            accuracy = 0.97 if lo < reach else 0.08
            rows.append(dict(common, task="mqar", status="ok", reason="", seq_len=4096, distance_lo=lo,
                             distance_hi=hi, accuracy=accuracy, count=128))
        for context_len in (512, 1024, 2048):
            for depth in (0.0, 0.25, 0.5, 0.75, 1.0):
                distance = (1.0 - depth) * context_len
                lo, hi = next((lo, hi) for lo, hi in BUCKETS if lo <= distance < hi)
                if mechanism == "dilated" and context_len == 2048 and depth == 0.0:
                    rows.append(dict(common, task="passkey", status="oom", reason=REASONS["oom"], seq_len=context_len,
                                     context_len=context_len, depth=depth, distance_lo=lo, distance_hi=hi,
                                     accuracy=None, count=0))
                    continue
                rows.append(dict(common, task="passkey", status="ok", reason="", seq_len=context_len,
                                 context_len=context_len, depth=depth, distance_lo=lo, distance_hi=hi,
                                 accuracy=1.0 if distance <= reach else 0.1, count=16))
    return rows


def probe_rows() -> list[dict]:
    rows = []
    for mechanism, backend, params, reach in RETRIEVAL_VARIANTS:
        for distance in (1, 4, 16, 64, 128, 256, 1024):
            for head in range(4):
                rows.append(dict(kind="probe", status="ok", reason="", mechanism=mechanism, backend=backend,
                                 params=json.dumps(params), seq_len=2048, distance=distance, head=head,
                                 recovered=distance <= reach and not (mechanism == "dilated" and distance % 2 and head),
                                 config_hash=config_hash({"probe": mechanism})))
    return rows


def fixture_frame() -> pd.DataFrame:
    """Every kind together, as ResultsStore.read() returns them."""
    return pd.DataFrame(speed_rows() + retrieval_rows() + probe_rows())


@pytest.fixture(scope="session")
def fixture_rows() -> pd.DataFrame:
    return fixture_frame()
