import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.report import write_report
from harness.report.tables import PROBE_SUMMARY_COLUMNS, SPEED_SUMMARY_COLUMNS
from harness.store import ResultsStore

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def store_root(fixture_rows, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results")
    store = ResultsStore(root, "fixture", job_id="job-0")
    store.append(fixture_rows.to_dict("records"))
    return root


def test_write_report_writes_tables_plots_markdown_and_self_contained_html(store_root):
    report = write_report(store_root, "fixture", env={"env_torch": "9.9-fixture", "env_threads": 2})
    folder = store_root / "fixture"
    assert report == folder / "report.md"
    for name in ("speed_summary", "max_seq_len_summary", "retrieval_summary", "retrieval_headline", "retrieval_noise", "retrieval_training", "passkey_summary",
                 "probe_summary",
                 "distributed_summary", "perf_targets", "failures"):
        assert (folder / "tables" / f"{name}.csv").stat().st_size > 0
        assert (folder / "tables" / f"{name}.md").read_text().startswith("|")
    header = (folder / "tables" / "speed_summary.csv").read_text().splitlines()[0]
    assert header.split(",") == list(SPEED_SUMMARY_COLUMNS)
    header = (folder / "tables" / "probe_summary.csv").read_text().splitlines()[0]
    assert header.split(",") == list(PROBE_SUMMARY_COLUMNS)
    text = report.read_text()
    assert "9.9-fixture" in text and "## Failed points" in text and "oom" in text
    for section in ("## Performance targets", "## Speed", "## Largest sequence length", "## Retrieval", "### Training runs", "## Probe",
                    "## Distributed (sequence-parallel)", "## Attention patterns"):
        assert f"\n{section}\n" in text, section
    assert "2 of 3 issue targets met" in text and "1 context measurements" in text
    assert "superseded by a later run" in text  # the fixture's older probe run
    assert "mismatched (query, key, head) triples" in text
    # The max_seq_len searches with what limited each, never "ok"
    assert "N=8192 took 5.8 s, over the 5 s latency budget" in text and "latency_budget" in text
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert len(images) == 12
    for image in images:
        assert (folder / image).stat().st_size > 0
    page = (folder / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 12 and 'src="plots/' not in page
    assert "<table" in page and "9.9-fixture" in page
    # Wide tables fit a page: settings shared by every row are one line above the table, not a column each
    points = text.split("### All speed points", 1)[1].split("\n## ", 1)[0]
    assert "Same in every row:" in points and "head_dim = 32" in points
    header = next(line for line in points.splitlines() if line.startswith("| variant"))
    assert "head_dim" not in header and "vs dense [rounds]" in header and "median ms" in header
    assert '<p class="same">Same in every row:' in page
    assert (report.stat().st_mode & 0o044) == 0o044  # shareable, not 0600


def test_make_report_script_regenerates_from_stored_rows(fixture_rows, tmp_path):
    # A small store (two dense variants) keeps this end-to-end run cheap; the full fixture is covered above.
    rows = fixture_rows[(fixture_rows["kind"] == "speed") & (fixture_rows["mechanism"] == "dense")]
    ResultsStore(tmp_path, "small", job_id="job-0").append(rows.to_dict("records"))
    (tmp_path / "small" / "parts" / "zz.parquet").write_bytes(b"")  # a damaged part: named, and the rest goes on
    script = str(ROOT / "scripts" / "make_report.py")
    result = subprocess.run([sys.executable, script, "small", "--results-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "damaged part file" in result.stderr and "zz.parquet" in result.stderr
    assert "report:" in result.stdout and "median latency" in result.stdout and "oom" in result.stdout
    text = (tmp_path / "small" / "report.md").read_text()
    assert "No rows for: Performance targets, Largest sequence length, Retrieval, Probe, Distributed (sequence-parallel)" in text
    assert "## Retrieval" not in text and "## Probe" not in text
    assert (tmp_path / "small" / "plots" / "latency_vs_seq_len.png").exists()
    missing = subprocess.run([sys.executable, script, "nope", "--results-dir", str(tmp_path)],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "small" in missing.stderr


def test_write_report_names_a_missing_experiment(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        write_report(tmp_path, "nope")
