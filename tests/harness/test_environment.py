"""The environment fingerprint: what ran, where, with which code."""

from harness.environment import source_digest


def test_code_version_follows_the_measuring_sources_only(tmp_path):
    for relative in ("attention_impls/ops/x.py", "harness/bench/y.py", "harness/report/z.py"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("a = 1\n")
    before = source_digest(tmp_path)
    (tmp_path / "harness/report/z.py").write_text("a = 2\n")  # drawing changes no number
    assert source_digest(tmp_path) == before
    (tmp_path / "attention_impls/ops/x.py").write_text("a = 2\n")
    assert source_digest(tmp_path) != before
