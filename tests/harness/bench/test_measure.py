"""One point inside the worker code, run inline: gate, NaN, OOM, memory and timing statistics."""

import math
import statistics

import pytest
import torch

from harness.bench.measure import Point, classify_exception, measure_point, peak_memory_bytes, time_call

GATE = {"enabled": True, "seq_len": 32, "batch": 1, "out_atol": {"float32": 2e-4}, "grad_atol": {"float32": 1e-3}}


def point(**changes) -> Point:
    base = dict(variant="v", mechanism="dense", backend="sdpa", params={}, batch=1, seq_len=64, heads=2,
                head_dim=16, dtype="float32", causal=False, pass_name="forward", device="cpu", warmup=1,
                min_run_time_s=0.01, min_repeats=3, gate=GATE)
    base.update(changes)
    return Point(**base)


def test_ok_point_has_statistics_from_its_raw_samples():
    columns = measure_point(point(pass_name="forward_backward", mechanism="dilated", backend="gather",
                                  params={"segment_lengths": [16, 32], "dilation_rates": [1, 2]}))
    assert columns["status"] == "ok", columns["reason"]
    times = columns["latency_times_s"]
    assert len(times) == columns["latency_count"] >= 3
    assert columns["latency_median_s"] == pytest.approx(statistics.median(times))
    assert columns["latency_min_s"] == min(times)
    assert columns["max_abs_err"] < 2e-4 and columns["max_abs_grad_err"] < 1e-3
    assert columns["backend"] == "gather" and columns["compile_s"] == 0.0


def test_gate_marks_a_wrong_backend_and_does_not_time_it():
    columns = measure_point(point(fault_hook="shootout_faults:off_by_a_bit", variant="off"))
    assert columns["status"] == "wrong"
    assert "float64 reference" in columns["reason"] and columns["max_abs_err"] == pytest.approx(1e-2, rel=1e-3)
    assert "latency_median_s" not in columns


def test_nan_output_becomes_a_nan_status():
    columns = measure_point(point(seq_len=128, fault_hook="shootout_faults:nan_at_128", variant="nan"))
    assert columns["status"] == "nan" and "seq_len=128" in columns["reason"]


def test_out_of_memory_becomes_an_oom_status():
    columns = measure_point(point(seq_len=128, fault_hook="shootout_faults:oom_from_128", variant="oom"))
    assert columns["status"] == "oom" and "MemoryError" in columns["reason"]


def test_classify_exception():
    assert classify_exception(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))[0] == "oom"
    assert classify_exception(torch.OutOfMemoryError("CUDA out of memory"))[0] == "oom"
    status, reason = classify_exception(ValueError("bad"))
    assert status == "error" and reason.startswith("ValueError: bad")


def test_peak_memory_sees_a_64_mib_temporary_above_the_inputs():
    def call():
        scratch = torch.ones(16 * 2**20)  # 64 MiB, written
        return float(scratch[-1])

    peak, method = peak_memory_bytes(call, torch.device("cpu"))
    assert "VmHWM" in method
    assert 63 * 2**20 <= peak < 80 * 2**20  # RSS is page-granular and other pages come and go
    small, _ = peak_memory_bytes(lambda: torch.ones(1024).sum(), torch.device("cpu"))
    assert small < 8 * 2**20


def test_time_call_tops_up_to_min_repeats():
    timing = time_call(lambda: sum(range(1000)), min_run_time_s=1e-4, min_repeats=7)
    assert timing.count >= 7 and timing.min_s <= timing.median_s and timing.calls_per_sample >= 1
    result = timing.columns()
    assert result["latency_count"] >= 7 and len(result["latency_times_s"]) == result["latency_count"]
    assert result["latency_min_s"] <= result["latency_median_s"] and not math.isnan(result["latency_iqr_s"])


def test_timing_carries_its_samples_statistics_and_method():
    from harness.bench.measure import TIMING_METHOD, Timing

    timing = Timing((1.0, 2.0, 3.0, 4.0, 100.0), calls_per_sample=10)
    columns = timing.columns()
    assert columns["latency_times_s"] == [1.0, 2.0, 3.0, 4.0, 100.0] and columns["calls_per_sample"] == 10
    assert timing.median_s == columns["latency_median_s"] == 3.0 and timing.min_s == 1.0 and timing.count == 5
    assert timing.iqr_s == columns["latency_iqr_s"] > 0.1 * 3.0 and timing.noisy and columns["noisy"]
    assert columns["timing_method"] == TIMING_METHOD
    assert not Timing((1.0, 1.01, 0.99)).noisy


def test_backend_none_is_gated_on_the_backend_its_timed_shape_gets():
    """The gate runs at a smaller shape, where backend=None would pick masked SDPA: it must check the kernel the
    point is timed with."""
    from harness.bench.measure import build_attention

    timed = point(mechanism="dilated", backend=None, params={"segment_lengths": [64, 128], "dilation_rates": [1, 2]},
                  seq_len=4096, heads=8, head_dim=16)
    assert build_attention(timed).requested_backend == "gather"
    small = point(mechanism="dilated", backend=None, params={"segment_lengths": [64, 128], "dilation_rates": [1, 2]},
                  seq_len=64, heads=8, head_dim=16)
    assert build_attention(small).requested_backend == "masked_sdpa"
