"""The results store's resume rule: only rows recorded by this code count as done."""

from harness.environment import code_version
from harness.store import ResultsStore


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
