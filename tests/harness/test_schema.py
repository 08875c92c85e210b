"""The row schema (harness/schema.py), checked by the store on every write."""

from __future__ import annotations

import math
import re

import pytest

from harness.schema import KINDS, check_row, columns
from harness.store import ResultsStore


def _row(**values):
    return {"kind": "speed", "status": "ok", "config_hash": "h", **values}


@pytest.mark.parametrize("row, message", [
    ({"status": "ok", "config_hash": "h"}, "result row lacks 'kind'"),
    (_row(kind="sped"), "kind='sped' is not a known kind of row; known: ['distributed', 'max_seq_len'"),
    (_row(status="fine"), "status='fine' is not one of"),
    (_row(latency_median_s="1.2"), "speed row: latency_median_s='1.2' (str) is not number"),
    (_row(seq_len=1024.5), "speed row: seq_len=1024.5 (float) is not int"),
    (_row(causal="false"), "speed row: causal='false' (str) is not bool"),
    (_row(latency_count=True), "speed row: latency_count=True (bool) is not int"),
])
def test_a_bad_row_is_refused_naming_its_column(row, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_row(row)


def test_good_rows_pass_with_missing_values_and_columns_the_schema_does_not_name(monkeypatch):
    from harness import schema

    monkeypatch.setattr(schema, "STRICT", False)  # outside the test suite, as users run it
    check_row(_row(seq_len=1024, latency_median_s=1e-3, latency_times_s=[1e-3, 2e-3], causal=True, noisy=None,
                   peak_mem_bytes=math.nan, env_torch="2.13.0", something_new=[1, 2]))
    check_row({"kind": "perf_target", "status": "error", "config_hash": "h", "target_key": "a.b", "measured": math.nan})
    assert columns("speed")[:3] == ("experiment", "kind", "status") and "latency_median_s" in columns("speed")
    assert set(KINDS) == {"speed", "max_seq_len", "probe", "retrieval", "distributed", "perf_target"}


def test_the_store_writes_nothing_of_a_refused_row(tmp_path):
    store = ResultsStore(tmp_path, "schema", job_id="job")
    store.append(_row(seq_len=64))
    with pytest.raises(ValueError, match="seq_len='64'"):
        store.append([_row(config_hash="g", seq_len=128), _row(config_hash="x", seq_len="64")])
    assert store.read()["config_hash"].tolist() == ["h"]
    store.append(_row(config_hash="c", seq_len=32))  # the refused batch's good row is not written later either
    assert store.read()["config_hash"].tolist() == ["h", "c"]


def test_numpy_and_pandas_values_pass():
    import numpy as np
    import pandas as pd

    check_row(_row(causal=np.True_, noisy=np.bool_(False), seq_len=np.int64(64), latency_median_s=np.float32(1e-3),
                   latency_count=pd.NA, rounds=np.float32("nan"), latency_times_s=np.array([1.0, 2.0])))


def test_the_readme_table_of_columns_is_the_schema():
    from pathlib import Path

    from harness import schema

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("<!-- columns: harness/schema.py -->\n", 1)[1].split("\n<!-- end of columns -->", 1)[0]
    assert block == schema.markdown(), "README.md's column table is stale: paste `python -m harness.schema` there"


def test_the_environment_columns_are_the_fingerprint():
    from harness import environment, schema

    assert tuple(environment.fingerprint("cpu")) == schema.ENVIRONMENT


def test_under_strict_a_column_no_schema_names_is_refused(monkeypatch):
    from harness import schema

    monkeypatch.setattr(schema, "STRICT", True)
    with pytest.raises(ValueError, match="column 'latency_p99' is named by no schema"):
        check_row(_row(latency_p99=1.0))
    check_row(_row(env_anything="x"))  # the environment fingerprint is open-ended
    monkeypatch.setattr(schema, "STRICT", False)
    check_row(_row(latency_p99=1.0))
