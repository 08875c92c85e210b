import pytest
import torch

from harness.retrieval.config import ProbeConfig
from harness.retrieval.probe import probe_attention
from harness.retrieval.run import run_probe
from harness.store import ResultsStore

# 90 positions in blocks of 32: the last block is partial, which the construction must handle.
CFG = ProbeConfig(seq_len=90, heads=4, head_dim=32, chunk=64)


def _dilated_spec(segments, rates, n, heads):
    """The spec's reachable set, written from shared/spec/attention.md without the project's index functions."""
    seen = torch.zeros(heads, n, n, dtype=torch.bool)
    for h in range(heads):
        for p in range(n):
            for j in range(p + 1):  # causal
                for w, r in zip(segments, rates):
                    w = min(w, n)
                    o = h % r
                    if p // w == j // w and (p % w) % r == o and (j % w) % r == o:
                        seen[h, p, j] = True
    return seen


@pytest.mark.parametrize("segments, rates", [([16, 32, 64], [1, 2, 4]), ([10, 36], [1, 3])])
def test_probe_gives_exactly_the_dilated_reachable_set_of_the_spec(segments, rates):
    attention = {"mechanism": "dilated", "backend": "gather",
                 "params": {"segment_lengths": segments, "dilation_rates": rates}}
    result = probe_attention(attention, CFG)
    expected = _dilated_spec(segments, rates, CFG.seq_len, CFG.heads)
    assert torch.equal(result.recovered, expected)
    assert 0 < int(expected.sum()) < CFG.heads * CFG.seq_len * (CFG.seq_len + 1) // 2  # holes exist


def test_probe_sliding_window_edge_non_causal():
    cfg = ProbeConfig(seq_len=50, heads=2, head_dim=16, causal=False)
    result = probe_attention({"mechanism": "sliding_window", "params": {"window": [6, 3]}}, cfg)
    offset = torch.arange(50)[None, :] - torch.arange(50)[:, None]  # key - query
    assert torch.equal(result.recovered, ((offset >= -6) & (offset <= 3)).expand(2, 50, 50))


def test_run_probe_rows(tmp_path):
    store = ResultsStore(tmp_path, "probe", job_id="t")
    variants = [{"mechanism": "dense"}, {"mechanism": "sliding_window", "params": {"window": 10}},
                {"mechanism": "dense", "backend": "xformers"}]
    frame = run_probe(variants, {"seq_len": 64, "heads": 2, "head_dim": 16}, store)
    assert set(frame["status"]) <= {"ok", "unsupported"}
    ok = frame[frame["status"] == "ok"]
    assert (ok["mismatches"] == 0).all() and (ok["accuracy"] == ok["reachable_fraction"]).all()
    dense = ok[ok["mechanism"] == "dense"]
    assert (dense["accuracy"] == 1.0).all() and dense["count"].sum() == 2 * 64 * 65 // 2
    window = ok[ok["mechanism"] == "sliding_window"].set_index("distance_lo")
    # Distances 8..15 (64 - d queries each): only 8, 9 and 10 are within the window.
    seen, total = sum(64 - d for d in (8, 9, 10)), sum(64 - d for d in range(8, 16))
    assert window.loc[8, "accuracy"] == pytest.approx(seen / total)
    assert window.loc[16, "accuracy"] == 0.0 and (window["theoretical_reach"] == 10).all()
    assert len(store.read()) == len(frame)
