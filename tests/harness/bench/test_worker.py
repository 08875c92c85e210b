"""The process worker: a point that hangs, runs out of real memory, crashes or is killed fails alone, recorded as
what it was; the next point still runs."""

import os

from harness.bench.measure import Point
from harness.bench.worker import Worker, death_status, oom_kill_count


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


def test_a_worker_killed_from_outside_is_killed_not_oom():
    """SIGKILL or SIGTERM sent by someone else while a point runs: status killed, naming the signal and the
    evidence that it was not the OOM killer; the next point gets a fresh worker."""
    import signal
    import threading

    with Worker("process") as worker:
        for sent in (signal.SIGKILL, signal.SIGTERM):
            assert worker.run("measure_point", {"point": point(64)}, timeout_s=120)["status"] == "ok"
            threading.Timer(1.0, os.kill, (worker._process.pid, sent)).start()
            row = worker.run("measure_point", {"point": point(128, fault_hook="shootout_faults:hang_at_128")},
                             timeout_s=60)
            assert row["status"] == "killed", row
            assert sent.name in row["reason"] and "measured again on resume" in row["reason"]
            if sent == signal.SIGKILL and oom_kill_count() is not None:
                assert "not the OOM killer" in row["reason"]
        assert worker.run("measure_point", {"point": point(64)}, timeout_s=120)["status"] == "ok"
        assert worker.starts == 3


def test_a_crash_is_an_error_with_what_the_worker_said_and_libgomp_out_of_memory_is_oom():
    with Worker("process") as worker:
        crash = worker.run("measure_point", {"point": point(128, fault_hook="shootout_faults:abort_at_128")},
                           timeout_s=120)
        assert crash["status"] == "error" and "SIGABRT" in crash["reason"] and "c10::Error" in crash["reason"]
    with Worker("process", memory_limit_gb=4) as worker:
        exit_1 = worker.run("measure_point", {"point": point(128, fault_hook="shootout_faults:libgomp_exit_at_128")},
                            timeout_s=120)
        assert exit_1["status"] == "oom", exit_1
        assert "worker_memory_limit_gb=4" in exit_1["reason"] and "Thread creation failed" in exit_1["reason"]


def test_death_status_reads_the_oom_kill_counter():
    where = "/sys/fs/cgroup/memory.events"
    assert death_status(-9, (where, 3), (where, 4))[0] == "oom"
    assert death_status(-9, (where, 3), (where, 3))[0] == "killed"
    assert death_status(-9, None, None)[0] == "killed"  # no counter: never called an OOM without evidence
    assert death_status(-15, (where, 3), (where, 4))[0] == "killed"  # the OOM killer sends SIGKILL only
    assert death_status(-11, None, None, "Segmentation fault") == ("error", "worker crashed with SIGSEGV: "
                                                                            "Segmentation fault")
    assert death_status(1, None, None, "libgomp: Thread creation failed")[0] == "error"  # no memory limit set
    assert death_status(3, None, None, "")[1] == "worker died with exit code 3"
    bad_alloc = "terminate called after throwing an instance of 'std::bad_alloc'"
    assert death_status(-6, None, None, bad_alloc, 2**30)[0] == "oom"  # abort() after a failed allocation
    assert death_status(-6, None, None, bad_alloc)[0] == "error"  # no limit set: a crash
