"""The results store: the resume rule (only rows recorded by this code count as done), damaged parts, stale
temporary files."""

import os
import time

import pandas as pd

from harness.environment import code_version
from harness.store import STALE_TMP_S, ResultsStore


def test_resume_reuses_only_rows_recorded_by_this_code(tmp_path):
    store = ResultsStore(tmp_path, "e", job_id="j")
    store.append({"kind": "speed", "status": "ok", "config_hash": "same", "env_code_version": code_version()})
    store.append({"kind": "speed", "status": "ok", "config_hash": "older", "env_code_version": "0123456789ab"})
    store.append({"kind": "speed", "status": "error", "config_hash": "failed", "env_code_version": code_version()})
    assert store.done_hashes() == {"same"}  # an error is tried again; other code's rows are measured again
    assert len(store.read()) == 3 and list(store.read_resumable()["config_hash"]) == ["same", "failed"]


def test_rows_without_a_code_version_are_never_resumed(tmp_path):
    store = ResultsStore(tmp_path, "e", job_id="j")
    store.append({"kind": "speed", "status": "ok", "config_hash": "x"})
    assert store.done_hashes() == set() and store.read_resumable().empty


def _two_jobs(tmp_path):
    for job in ("a", "b"):
        store = ResultsStore(tmp_path, "e", job_id=job)
        store.append([{"kind": "speed", "status": "ok", "config_hash": f"{job}{i}", "reason": ""} for i in range(3)])
    return tmp_path / "e" / "parts"


def test_a_damaged_part_is_set_aside_and_rebuilt_from_its_csv_twin(tmp_path, caplog):
    parts = _two_jobs(tmp_path)
    (parts / "a.parquet").write_bytes(b"")  # a disk that filled mid-write elsewhere, a copy cut short
    rows = ResultsStore(tmp_path, "e").read()
    assert sorted(rows["config_hash"]) == ["a0", "a1", "a2", "b0", "b1", "b2"]
    assert (rows["reason"] == "").all()  # the CSV's empty reasons come back as text, not NaN
    assert (parts / "damaged" / "a.parquet").stat().st_size == 0
    assert len(pd.read_parquet(parts / "a.parquet")) == 3  # rebuilt in place: the next read is a plain one
    assert "damaged part file" in caplog.text and "a.parquet" in caplog.text and "rebuilt from a.csv" in caplog.text


def test_a_damaged_part_without_a_readable_twin_is_named_and_the_others_still_read(tmp_path, caplog):
    parts = _two_jobs(tmp_path)
    (parts / "a.parquet").write_bytes((parts / "a.parquet").read_bytes()[:100])  # truncated
    (parts / "a.csv").write_text('kind,status,config_hash\nspeed,ok,"a0')  # cut inside a quoted value
    store = ResultsStore(tmp_path, "e")
    assert sorted(store.read()["config_hash"]) == ["b0", "b1", "b2"]
    assert "no readable CSV twin" in caplog.text and not (parts / "a.parquet").exists()
    assert len(store.consolidate()) == 3


def test_stale_temporary_files_of_killed_writes_are_removed(tmp_path):
    parts = _two_jobs(tmp_path)
    stale, fresh = parts / ".a.parquet.x1.tmp", parts / ".b.parquet.x2.tmp"
    stale.write_bytes(b"half"), fresh.write_bytes(b"being written")
    old = time.time() - 2 * STALE_TMP_S
    os.utime(stale, (old, old))
    ResultsStore(tmp_path, "e").consolidate()
    assert not stale.exists() and fresh.exists()  # a fresh one may be another job's write in progress


def test_a_part_rebuilt_from_its_csv_keeps_its_types(tmp_path):
    """A hash of digits stays text (resume finds it), numbers are numbers, and the rebuilt store consolidates."""
    store = ResultsStore(tmp_path, "e", job_id="a")
    store.append({"kind": "speed", "status": "ok", "config_hash": "0123456789012345", "latency_median_s": 0.5,
                  "causal": True, "env_code_version": code_version()})
    store.append({"kind": "speed", "status": "oom", "config_hash": "abcdef0123456789", "latency_median_s": None,
                  "causal": False, "env_code_version": code_version()})
    (tmp_path / "e" / "parts" / "a.parquet").write_bytes(b"")
    rows = ResultsStore(tmp_path, "e").read()
    assert list(rows["config_hash"]) == ["0123456789012345", "abcdef0123456789"]
    assert rows["latency_median_s"].iloc[0] == 0.5 and pd.isna(rows["latency_median_s"].iloc[1])
    assert list(rows["causal"]) == [True, False]
    assert ResultsStore(tmp_path, "e").done_hashes() == {"0123456789012345", "abcdef0123456789"}
    assert len(ResultsStore(tmp_path, "e").consolidate()) == 2
