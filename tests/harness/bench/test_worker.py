"""The process worker: a point that hangs or runs out of real memory fails alone; the next point still runs."""

from harness.bench.measure import Point
from harness.bench.worker import Worker


def point(seq_len, **changes):
    base = dict(variant="v", mechanism="dense", backend="math", params={}, batch=1, seq_len=seq_len, heads=4,
                head_dim=16, dtype="float32", causal=False, pass_name="forward", device="cpu", warmup=0,
                min_run_time_s=0.005, min_repeats=2, threads=1)
    base.update(changes)
    return Point(**base)


def test_timeout_real_oom_and_recovery_in_one_worker():
    with Worker("process", memory_limit_gb=0.25) as worker:
        # dense math materialises (1, 4, N, N) float32 scores: 4 GiB at N=16384, far past a 0.25 GiB limit.
        oom = worker.run("measure_point", {"point": point(16384)}, timeout_s=120)
        assert oom["status"] == "oom", oom
        assert "allocate" in oom["reason"] or "MemoryError" in oom["reason"]
        hung = worker.run("measure_point", {"point": point(128, fault_hook="shootout_faults:hang_at_128")},
                          timeout_s=3)
        assert hung["status"] == "timeout" and "3 s" in hung["reason"]
        ok = worker.run("measure_point", {"point": point(64)}, timeout_s=120)
        assert ok["status"] == "ok", ok
        assert ok["peak_mem_bytes"] > 0 and ok["latency_count"] >= 2
        assert worker.starts == 2  # the hung worker was killed and replaced; the OOM did not need it
