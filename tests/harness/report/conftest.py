"""Shared fixtures for the report tests.

FIXTURE DATA, not measurements: rows with exactly the columns the producers write (harness/bench/sweep.py for
kind="speed", harness/retrieval/run.py for "probe" and "retrieval", scripts/bench_distributed.py for
"distributed", scripts/perf_targets.py for "perf_target"; column sets copied from a real `shootout
experiment=default` store and real smoke runs of the two scripts), filled with values from simple cost models so
the report code can be tested without running anything. Nothing here is a measured number.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from harness.schema import check_row

from harness.store import config_hash

ENV = dict(env_torch="2.13.0+cpu", env_xformers="0.0.35", env_python="3.11.7", env_device="cpu",
           env_device_name="Fixture CPU", env_cpu_model="Fixture CPU", env_threads=2, env_git_commit="fixture",
           env_load_avg_1m=0.5, env_hostname="fixture-host")
FIXTURE_JOB = "fixture-job-1"
STAMP = "2025-01-01T00:00:00+0000"

SEQ_LENS = (256, 512, 1024, 2048, 4096)
DILATED = {"dilation_rates": [1, 2, 4], "segment_lengths": [64, 128, 256]}
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
           "unsupported": "device=cpu (supported: cuda)", "wrong": "max_abs_err=0.31 > atol=0.001",
           "error": "rank 0: interrupted (SystemExit: terminated by signal 15)"}


def _name(mechanism: str, params: dict) -> str:
    """The config name the producers carry (`variant` in speed rows, `name` in probe/retrieval rows)."""
    if mechanism == "sliding_window":
        return f"sliding_window_{params['window']}"
    if mechanism == "dilated":
        return "dilated_" + "_".join(str(s) for s in params["segment_lengths"])
    return "dense"


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
                row = dict(experiment="fixture", job_id=FIXTURE_JOB, timestamp=STAMP, reason=REASONS.get(status, ""),
                           kind="speed", variant=_name(mechanism, params), mechanism=mechanism, backend=backend,
                           backend_requested=backend, params=json.dumps(params, sort_keys=True), batch=batch,
                           seq_len=n, heads=heads, head_dim=head_dim, dtype="float32", causal=False, device="cpu",
                           status=status, config=json.dumps(config), config_hash=config_hash(config), **ENV)
                row["pass"] = pass_name
                if status in ("ok", "wrong"):
                    samples = [latency * (0.97 + 0.01 * i) for i in range(6)]
                    row.update(latency_median_s=latency, latency_iqr_s=0.03 * latency, latency_min_s=min(samples),
                               latency_mean_s=sum(samples) / len(samples), latency_count=len(samples),
                               calls_per_sample=1, latency_times_s=json.dumps(samples), noisy=False,
                               timing_method="torch.utils.benchmark.Timer.blocked_autorange",
                               tokens_per_s=batch * n / latency,
                               peak_mem_bytes=float(4 * (pairs if mechanism == "dense" else 3 * n * heads * 64)
                                                    + 2**20),
                               mem_method="fixture: no memory measured", useful_flops=flops, executed_flops=flops,
                               flops_per_s=flops / latency, executed_flops_per_s=flops / latency,
                               matmul_peak_flops_per_s=MATMUL_PEAK, matmul_method="fixture ceiling",
                               fraction_of_peak=flops / latency / MATMUL_PEAK, compile_s=0.0,
                               first_call_s=1.2 * latency, max_abs_err=0.31 if status == "wrong" else 1e-6,
                               max_abs_grad_err=1e-6 if pass_name == "forward_backward" else None,
                               gate_seq_len=256, threads=2)
                    if (mechanism, backend, n) == ("sliding_window", "chunked", 1024):
                        # a noisy point: samples spread 40 % around the median
                        samples = [latency * f for f in (0.7, 0.8, 1.0, 1.0, 1.2, 1.4)]
                        row.update(latency_times_s=json.dumps(samples), latency_iqr_s=0.35 * latency, noisy=True)
                    if (mechanism, backend, n, pass_name) == ("dense", "sdpa", 4096, "forward"):
                        # measured faster than the ceiling measured earlier: a stale ceiling
                        row.update(matmul_peak_flops_per_s=0.5 * flops / latency, fraction_of_peak=2.0)
                rows.append(row)
    return rows


# (mechanism, backend, params, theoretical reach at N=4096 in the fixture's 2-layer model)
RETRIEVAL_VARIANTS = [
    ("dense", "sdpa", {}, 4095.0),
    ("sliding_window", "chunked", {"window": 64}, 130.0),
    ("dilated", "gather", DILATED, 1020.0),
]
BUCKETS = ((2, 63), (64, 255), (256, 1023), (1024, 4095))  # inclusive, as harness.retrieval.reach writes them
PASSKEY_CONTEXTS = (512, 1024, 2048)
NOISE_PAIRS = (2, 4, 8, 16)
PASSKEY_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _retrieval_base(task: str, mechanism: str, backend: str, params: dict) -> dict:
    identity = {"retrieval": {"task": task}, "mechanism": mechanism, "backend": backend, "params": params}
    return dict(experiment="fixture", job_id=FIXTURE_JOB, timestamp=STAMP, kind="retrieval",
                config_hash=config_hash(identity), task=task, name=_name(mechanism, params), mechanism=mechanism,
                backend_requested=backend, params=json.dumps(params, sort_keys=True), train_seq_len=512, layers=2,
                d_model=64, heads=2, token_shift=True, seed=0, device="cpu", dtype="float32",
                chance=1 / 16 if task == "mqar" else 0.1, config=json.dumps(identity, sort_keys=True), **ENV)


def _trained(base: dict, backend: str, steps: int, stop: str, val_accuracy: float) -> dict:
    # The learning curve rises to val_accuracy by the last check (every 50 steps).
    curve = [[step, round(val_accuracy * step / steps, 4), round(2.0 * (1 - val_accuracy * step / steps), 4)]
             for step in range(50, steps + 1, 50)]
    return dict(base, backend=backend, train_steps=steps, train_seconds=steps * 0.05, train_stop=stop,
                train_final_loss=2.0 * (1 - val_accuracy), train_accuracy=val_accuracy, val_accuracy=val_accuracy,
                lr=3e-3, sweep_id=base["config_hash"], converged=stop in ("ceiling", "plateau"),
                val_ceiling=1.0 if base["mechanism"] == "dense" else 0.6, train_sequences=steps * 32,
                train_steps_per_s=20.0, learning_curve=json.dumps(curve))


def _split(count: int, reachable: float, within_accuracy: float, beyond_accuracy: float) -> dict:
    """The within / answer-only / beyond counts of a bucket whose `reachable` share is within reach."""
    within = round(count * reachable)
    return dict(within_count=within, within_correct=round(within * within_accuracy), split_count=0, split_correct=0,
                answer_only_count=0,
                answer_only_correct=0, beyond_count=count - within,
                beyond_correct=round((count - within) * beyond_accuracy))


def retrieval_rows() -> list[dict]:
    rows = []
    for mechanism, backend, params, reach in RETRIEVAL_VARIANTS:
        learned = mechanism == "dense"
        mqar = _trained(_retrieval_base("mqar", mechanism, backend, params), backend, 200 if learned else 400,
                        "ceiling" if learned else "max_steps", 0.99 if learned else 0.45)
        for lo, hi in BUCKETS:
            reachable = 1.0 if hi <= reach else (0.0 if lo > reach else 0.5)
            accuracy = 0.97 * reachable + 0.06 * (1 - reachable)
            count = 128
            rows.append(dict(mqar, status="ok", reason="", seq_len=4096, theoretical_reach=reach, distance_lo=lo,
                             distance_hi=hi, count=count, correct=round(accuracy * count), accuracy=accuracy,
                             token_accuracy=accuracy, reachable_fraction=reachable, eval_loss=1.0, eval_seconds=0.2,
                             eval_set="distance", eval_pairs=8, **_split(count, reachable, 0.97, 0.06)))
        for pairs in NOISE_PAIRS:  # every query at distance 6: accuracy falls as distractors grow
            accuracy = 0.97 - 0.02 * pairs
            rows.append(dict(mqar, status="ok", reason="", seq_len=512, theoretical_reach=reach, distance_lo=6,
                             distance_hi=6, count=128, correct=round(accuracy * 128), accuracy=accuracy,
                             token_accuracy=accuracy, reachable_fraction=1.0, eval_loss=1.0, eval_seconds=0.1,
                             eval_set="noise", eval_pairs=pairs, **_split(128, 1.0, accuracy, 0.0)))
        base = _retrieval_base("passkey", mechanism, backend, params)
        if mechanism == "dilated":
            # A training run that ran out of memory: one row, no evaluation columns (run_retrieval's oom row).
            rows.append(dict(base, status="oom", reason=REASONS["oom"], backend=backend))
            continue
        passkey = _trained(base, backend, 300, "ceiling", 0.9)
        for context_len in PASSKEY_CONTEXTS:
            for depth in PASSKEY_DEPTHS:
                distance = max(int((1.0 - depth) * (context_len - 1)), 1)
                reachable = 1.0 if distance <= reach else 0.0
                accuracy = 1.0 if reachable else 0.1
                rows.append(dict(passkey, status="ok", reason="", seq_len=context_len, theoretical_reach=min(
                    reach, context_len - 1), depth=depth, context_len=context_len, distance_lo=distance,
                    distance_hi=distance, count=16, correct=round(16 * accuracy), accuracy=accuracy,
                    token_accuracy=accuracy, reachable_fraction=reachable, eval_loss=0.5, eval_seconds=0.1,
                    **_split(16, reachable, 1.0, 0.1)))
    return rows


PROBE_N = 128
PROBE_BUCKETS = ((0, 0), (1, 1), (2, 3), (4, 7), (8, 15), (16, 31), (32, 63), (64, 127))
# (mechanism, backend, params, one-layer reach, a bucket index whose recovered share differs from the spec)
PROBE_VARIANTS = [
    ("dense", "sdpa", {}, PROBE_N - 1, None),
    ("sliding_window", "chunked", {"window": 8}, 8, None),
    ("sliding_window", "masked_sdpa", {"window": 8}, 8, 4),  # a broken backend: the fixture's "wrong" variant
    ("dilated", "gather", {"dilation_rates": [1, 2], "segment_lengths": [16, 64]}, 63, None),
]


def _probe_predicted(mechanism: str, params: dict, lo: int, hi: int) -> tuple[int, float]:
    """(count, spec's reachable share) of (query, head) pairs at distance lo..hi: synthetic, not the spec."""
    counts = {d: 4 * (PROBE_N - d) for d in range(lo, hi + 1)}
    if mechanism == "dense":
        share = {d: 1.0 for d in counts}
    elif mechanism == "sliding_window":
        share = {d: float(d <= params["window"]) for d in counts}
    else:
        share = {d: 1.0 if d == 0 else (0.8 / (1 + d / 16) if d < 64 else 0.0) for d in counts}
    total = sum(counts.values())
    return total, sum(counts[d] * share[d] for d in counts) / total


def probe_rows(job_id: str = FIXTURE_JOB, timestamp: str = STAMP, shift: float = 0.0) -> list[dict]:
    """One row per (variant, direction, bucket); `shift` perturbs accuracy to make a distinguishable older run."""
    rows = []
    for mechanism, backend, params, reach, broken in PROBE_VARIANTS:
        identity = {"probe": {"seq_len": PROBE_N}, "mechanism": mechanism, "backend": backend, "params": params}
        base = dict(experiment="fixture", job_id=job_id, timestamp=timestamp, kind="probe",
                    config_hash=config_hash(identity), task="probe", name=_name(mechanism, params),
                    mechanism=mechanism, backend_requested=backend, params=json.dumps(params, sort_keys=True),
                    seq_len=PROBE_N, heads=4, head_dim=32, causal=False, dtype="float32", device="cpu", layers=1,
                    config=json.dumps(identity, sort_keys=True), **ENV)
        variant_rows = []
        for direction in ("past", "future"):
            for i, (lo, hi) in enumerate(PROBE_BUCKETS):
                if direction == "future" and hi < 1:
                    continue
                lo = max(lo, 1) if direction == "future" else lo
                count, predicted = _probe_predicted(mechanism, params, lo, hi)
                recovered = predicted if i != broken else min(predicted + 0.25, 1.0)
                mismatches = round(abs(recovered - predicted) * count)
                variant_rows.append(dict(base, backend=backend, direction=direction, distance_lo=lo, distance_hi=hi,
                                         count=count, accuracy=min(recovered + shift, 1.0),
                                         reachable_fraction=predicted, mismatches=mismatches,
                                         theoretical_reach=reach, seconds=0.3))
        total = sum(r["mismatches"] for r in variant_rows)
        status, reason = ("wrong", f"{total} (query, key, head) pairs differ from the spec; first: head 0, "
                                   f"query 12, key 0: recovered=True, spec=False") if total else ("ok", "")
        rows += [dict(r, status=status, reason=reason) for r in variant_rows]
    # A backend that cannot run here: run_probe's single unsupported row, without buckets.
    identity = {"probe": {"seq_len": PROBE_N}, "mechanism": "dilated", "backend": "xformers", "params": DILATED}
    rows.append(dict(experiment="fixture", job_id=job_id, timestamp=timestamp, kind="probe",
                     config_hash=config_hash(identity), task="probe", name="dilated_xformers", mechanism="dilated",
                     backend_requested="xformers", params=json.dumps(DILATED, sort_keys=True), seq_len=PROBE_N,
                     heads=4, head_dim=32, causal=False, dtype="float32", device="cpu", layers=1,
                     config=json.dumps(identity, sort_keys=True), status="unsupported",
                     reason=REASONS["unsupported"], backend="xformers", **ENV))
    return rows


DIST_SEQ_LENS = (1024, 2048, 4096, 8192)
DIST_DILATED = {"dilation_rates": [1, 2, 4], "segment_lengths": [512, 1536, 4096]}


def distributed_rows() -> list[dict]:
    """Two ranks, causal forward+backward; dense at N=8192 failed (rank 1 out of memory, rank 0 interrupted)."""
    rows = []
    world = 2
    for mechanism, params in (("dilated", DIST_DILATED), ("dense", {})):
        for n in DIST_SEQ_LENS:
            lengths = [n // world] * world
            identity = {"kind": "distributed", "mechanism": mechanism, "params": params, "seq_len": n,
                        "world_size": world, "shard_lengths": lengths}
            # Causal: rank 0 sends forward, rank 1 returns gradients in the backward (fixture volumes).
            volume = (2 * 4 * 32 * 4 * (n // world)) // (1 if mechanism == "dense" else 3)
            for rank in range(world):
                row = dict(experiment="fixture", job_id=f"fixture-dist-rank{rank:04d}", timestamp=STAMP,
                           reason="", kind="distributed", mechanism=mechanism, seq_len=n, world_size=world, batch=1,
                           heads=4, head_dim=32, dtype="float32", causal=True, device="cpu", dist_backend="gloo",
                           params=json.dumps(params, sort_keys=True), shard_lengths=json.dumps(lengths),
                           backend="sequence_parallel", rank=rank, local_seq_len=lengths[rank],
                           shard_start=rank * lengths[0], local_rank=rank, config_hash=config_hash(identity),
                           status="ok", **ENV)
                row["pass"] = "forward_backward"
                if mechanism == "dense" and n == 8192:
                    row.update(status="oom" if rank == 1 else "error",
                               reason=f"rank {rank}: " + (REASONS["oom"] if rank == 1 else REASONS["error"]))
                    rows.append(row)
                    continue
                sent_forward, sent_backward = (volume, 0) if rank == 0 else (0, volume)
                latency = (n / 1024) ** (2 if mechanism == "dense" else 1) * 0.02 * (1.0 + 0.05 * rank)
                samples = [latency * (0.98 + 0.02 * i) for i in range(3)]
                row.update(max_abs_err=1e-7 if n <= 4096 else None,
                           check_against=f"single-process {mechanism}/{'gather' if mechanism == 'dilated' else 'math'}"
                           if n <= 4096 else None, kernel="cpu_flash", bytes_sent_forward=sent_forward,
                           bytes_sent_backward=sent_backward, bytes_received_forward=sent_backward,
                           bytes_received_backward=sent_forward, predicted_bytes_sent_forward=sent_forward,
                           predicted_bytes_sent_backward=sent_backward, bytes_match=True,
                           peak_mem_bytes=float(n * 4096), mem_method="fixture: no memory measured",
                           latency_median_s=latency, latency_iqr_s=0.02 * latency, latency_min_s=min(samples),
                           latency_mean_s=sum(samples) / 3, latency_count=3, calls_per_sample=1,
                           latency_times_s=json.dumps(samples), noisy=False,
                           timing_method="barrier, then perf_counter around calls_per_sample calls",
                           useful_flops=4.0 * 32 * 4 * n * n, tokens_per_s=n / latency,
                           flops_per_s=4.0 * 32 * 4 * n * n / latency)
                rows.append(row)
    return rows


def perf_target_rows() -> list[dict]:
    """Three issue targets, the first measured twice under two labels (the newer run decides), one missed; one
    context measurement (not an issue target), also missed; and a row stored before target keys existed, under a
    label no longer used, which a keyed store leaves out."""
    rows = []
    targets = [("dilated_gather.overhead", ["dilated gather: time / bare kernels (an older label)",
                                            "dilated gather: time / bare sum of branch kernels"], [1.30, 1.02],
                1.05, "<="),
               ("sliding_window.causal.forward", ["sliding window (chunked) useful FLOP/s / dense SDPA's, forward"],
                [0.14], 0.6, ">="),
               ("auto_pick.dense", ["backend=None for dense: picked time / fastest time"], [1.0], 1.1, "<="),
               ("sliding_window.bidirectional.forward", ["sliding window (chunked) [8, 8] non-causal (not an issue "
                                                         "target) useful FLOP/s / dense SDPA's, forward"], [0.5], 0.6,
                ">="),
               (None, ["sliding window (chunked) useful FLOP/s / dense SDPA's, forward+backward"], [0.58], 0.6, ">=")]
    for key, labels, measurements, limit, sign in targets:
        for run, (target, measured) in enumerate(zip(labels, measurements)):
            passed = measured <= limit if sign == "<=" else measured >= limit
            rows.append(dict(experiment="fixture", job_id=f"fixture-perf-{run}",
                             timestamp=f"2025-01-0{run + 1}T00:00:00+0000", reason="", kind="perf_target",
                             status="ok", target_key=key, target=target, measured=measured, limit=limit,
                             comparison=sign,
                             passed=passed, issue_target="not an issue target" not in target,
                             detail=f"fixture run {run}", device="cpu", dtype="float32",
                             smoke=True, matmul_peak_flops_per_s=MATMUL_PEAK, seq_len=512,
                             latency_median_s=1e-3, config_hash=config_hash({"target": target, "run": run}),
                             flops_per_s=1e9, peak_mem_bytes=None, mem_method=None, **ENV))
    # the newest gather run kept its three rounds (1.06, 1.02, 0.99): two meet the limit
    rows[1].update(round_min=0.99, round_max=1.06, rounds_passed=2, round_count=3)
    return rows


# (variant, mechanism, backend, params, largest N that fitted, first that did not, limited_by, reason)
MAX_SEQ_LEN_SEARCHES = [
    ("dense_sdpa", "dense", "sdpa", {}, 7168, 8192, "latency_budget",
     "largest fitting N=7168; N=8192 took 5.8 s, over the 5 s latency budget"),
    ("longnet_paper", "dilated", None, DILATED, 1048576, None, "limit",
     "every N up to benchmark.max_seq_len.limit=1048576 fits"),
    ("dense_math", "dense", "math", {}, 3072, 4096, "oom", "largest fitting N=3072; N=4096 ended with status oom"),
]


def max_seq_len_rows() -> list[dict]:
    """kind=max_seq_len rows with the columns harness/bench/sweep.py run_search writes."""
    rows = []
    for variant, mechanism, backend, params, best, worst, limited_by, reason in MAX_SEQ_LEN_SEARCHES:
        identity = dict(kind="max_seq_len", variant=variant, backend=backend, params=params)
        rows.append(dict(experiment="fixture", job_id=FIXTURE_JOB, timestamp=STAMP, kind="max_seq_len", status="ok",
                         variant=variant, mechanism=mechanism, backend_requested=backend or "auto",
                         params=json.dumps(params, sort_keys=True), batch=1, heads=4, head_dim=32, dtype="float32",
                         causal=False, device="cpu", max_seq_len=best, first_failing_seq_len=worst,
                         limited_by=limited_by, probes=json.dumps([[1024, "ok"]]), reason=reason,
                         config=json.dumps(identity), config_hash=config_hash(identity), **ENV, **{"pass": "forward"}))
    return rows


def fixture_frame() -> pd.DataFrame:
    """Every kind together, as ResultsStore.read() returns them; includes an older probe run of the same configs
    (job 0, accuracies off by 0.5) that the report must ignore in favour of the newer one."""
    older_probe = probe_rows(job_id="fixture-job-0", timestamp="2024-12-31T00:00:00+0000", shift=0.5)
    rows = (speed_rows() + retrieval_rows() + older_probe + probe_rows() + distributed_rows() + perf_target_rows()
            + max_seq_len_rows())
    for row in rows:
        check_row(row)  # the fixture holds what the store would accept (harness/schema.py), nothing else
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def fixture_rows() -> pd.DataFrame:
    return fixture_frame()
