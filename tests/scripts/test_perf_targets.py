import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd

import attention_impls as ai
from harness.bench import targets

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "perf_targets.py"


def test_smoke_run_measures_every_target_and_stores_rows(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("perf_targets", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["perf_targets"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    assert module.main(["--smoke", "--results-dir", str(tmp_path)]) == 0
    rows = pd.read_parquet(tmp_path / "perf_targets" / "results.parquet")
    # 19 targets (7 of them small N and decoding) plus one backend=None pick per mechanism
    per_mechanism = len(ai.MECHANISMS)
    assert len(rows) == 19 + per_mechanism and set(rows["kind"]) == {"perf_target"}
    assert rows["measured"].notna().all() and (rows["measured"] > 0).all()
    printed = capsys.readouterr().out
    assert printed.count("target") >= 19 + per_mechanism and f"of {16 + per_mechanism} issue targets met" in printed
    assert rows["issue_target"].sum() == 16 + per_mechanism  # context: the bidirectional window, the GPU target on CPU
    assert rows["target_key"].is_unique and rows["target_key"].str.fullmatch(r"[a-z_]+(\.[a-z_]+)+").all()
    # every ratio taken over interleaved rounds keeps their spread; the median lies inside it
    in_rounds = rows[rows["round_count"].notna()]
    assert len(in_rounds) == 17 and set(in_rounds["round_count"]) == {2, 3}  # 1M scaling: two brackets
    assert ((in_rounds["round_min"] <= in_rounds["measured"]) & (in_rounds["measured"] <= in_rounds["round_max"])).all()
    assert "of 3 meet it" in printed
    for row in rows.to_dict("records"):  # each target's two quantities are among what its measurement returned
        quantities = json.loads(row["quantities"])
        assert row["numerator"] in quantities and row["denominator"] in quantities


def test_a_measurement_that_raises_becomes_an_error_row_and_the_others_still_run(tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("perf_targets", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["perf_targets"] = module
    spec.loader.exec_module(module)

    def broken(bench):
        raise RuntimeError("kernel not built for this device")

    monkeypatch.setattr(targets, "measure_paper_scaling", broken)  # inline: the patch reaches the measurement
    argv = ["--smoke", "--inline", "--results-dir", str(tmp_path), "--only", "dilated_scaling", "--only", "auto_pick"]
    assert module.main(argv) == 1
    rows = pd.read_parquet(tmp_path / "perf_targets" / "results.parquet")
    error = rows[rows["status"] == "error"]
    assert error["target"].tolist() == error["target_key"].tolist() == ["dilated_scaling.per_token"]
    assert error["reason"].iloc[0].startswith("RuntimeError: kernel not built for this device")
    assert (rows["status"] == "ok").sum() == len(ai.MECHANISMS)  # the backend=None targets after it, one per mechanism
    assert "measurements that failed (status rows): dilated_scaling" in capsys.readouterr().out


