"""Sequence-parallel dilated and dense attention (gloo, 2 and 4 CPU processes) against the single-process reference.

Each spawned group runs many cases in one go (a process start costs seconds); workers return measurements and
the assertions run here, so a failure reads as a normal pytest diff. Every child is joined with a timeout and
killed if still alive, so a hang fails the test instead of the suite.
"""

from __future__ import annotations

import datetime
import os
import pickle
import socket
import time
import traceback

import pytest
import torch
import torch.multiprocessing as mp

from attention_impls import DenseParams, make_params
from attention_impls.distributed import (
    ShardLayout,
    build_plan,
    predicted_bytes_sent,
    shard_lengths,
    shard_sequence,
)

JOIN_TIMEOUT_S = 120  # per group, generous for 2 busy cores; a healthy group takes ~5-15 s
PG_TIMEOUT_S = 30
HANG_PG_TIMEOUT_S = 4  # process-group timeout in the hung-rank test: how long a survivor waits in a collective
HEALTH_TIMEOUT_S = 3.0
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5}

# (name, mechanism, params, seq_len, heads, head_dim, batch, shard_lengths or None for the default split)
CASES_2 = [
    # segments shorter than, equal-ish to and longer than a shard (clipped to N); N odd; heads 3 vs rate 2
    ("mixed-37", "dilated", dict(segment_lengths=[4, 10, 64], dilation_rates=[1, 2, 3]), 37, 3, 8, 2, None),
    # N not a multiple of P * segment, rate 4 with 5 heads, a short tail segment
    ("tail-50", "dilated", dict(segment_lengths=[8, 30], dilation_rates=[1, 4]), 50, 5, 4, 1, None),
    # a rate larger than its segment: offsets >= w have no positions in that branch
    ("rate-over-segment", "dilated", dict(segment_lengths=[3, 8, 40], dilation_rates=[1, 4, 5]), 41, 5, 2, 1,
     None),
    # uneven explicit shards: the boundary lands mid-segment
    ("uneven-23", "dilated", dict(segment_lengths=[6, 23], dilation_rates=[1, 3]), 23, 4, 4, 1, [5, 18]),
    ("dense-23", "dense", {}, 23, 2, 8, 2, None),
]
CASES_4 = [
    ("mixed-45", "dilated", dict(segment_lengths=[6, 16, 100], dilation_rates=[1, 2, 5]), 45, 4, 4, 1, None),
    # segments that fit inside shards exactly (no exchange for them) next to spanning ones
    ("aligned-48", "dilated", dict(segment_lengths=[12, 48], dilation_rates=[1, 3]), 48, 3, 4, 2, None),
    ("uneven-30", "dilated", dict(segment_lengths=[7, 30], dilation_rates=[1, 2]), 30, 3, 4, 1, [3, 11, 9, 7]),
    ("dense-30", "dense", {}, 30, 3, 4, 1, [10, 4, 9, 7]),
]


def _random_cases(world_size: int, count: int, seed: int) -> list[tuple]:
    """Seeded random shapes: arbitrary shard cuts, 1-3 branches, rates up to 7 (also above the segment)."""
    import random

    rng = random.Random(seed)
    cases = []
    for i in range(count):
        seq_len = rng.randint(world_size, 70)
        cuts = sorted(rng.sample(range(1, seq_len), world_size - 1))
        lengths = [b - a for a, b in zip([0, *cuts], [*cuts, seq_len])]
        branches = rng.randint(1, 3)
        params = dict(segment_lengths=[rng.randint(1, 80) for _ in range(branches)],
                      dilation_rates=[1] + [rng.randint(1, 7) for _ in range(branches - 1)])
        cases.append((f"random-{seed}-{i}", "dilated", params, seq_len, rng.randint(1, 6), 2, 1, lengths))
    return cases


CASES_2 += _random_cases(2, 8, seed=2)
CASES_4 += _random_cases(4, 8, seed=4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank: int, world_size: int, port: int, timeout_s: float = PG_TIMEOUT_S) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))


def _compare_case(case, dtype, causal, rank, world_size) -> dict:
    from attention_impls import build
    from attention_impls.distributed import DistributedDenseAttention, DistributedDilatedAttention

    name, mechanism, params, seq_len, heads, head_dim, batch, lengths = case
    g = torch.Generator().manual_seed(1234)  # every rank draws the same full tensors
    size = (batch, seq_len, heads, head_dim)
    q, k, v, grad = (torch.randn(size, generator=g, dtype=torch.float64) for _ in range(4))

    full = [t.clone().requires_grad_() for t in (q, k, v)]
    expected = build(mechanism, backend="reference", **params)(*full, causal=causal)
    (expected * grad).sum().backward()

    split = lengths or shard_lengths(seq_len, world_size)
    start, stop = sum(split[:rank]), sum(split[: rank + 1])
    local = [t[:, start:stop].to(dtype).clone().requires_grad_() for t in (q, k, v)]
    attn = (DistributedDilatedAttention(**params) if mechanism == "dilated" else DistributedDenseAttention())
    out = attn(*local, causal=causal, shard_lengths=lengths)
    (out * grad[:, start:stop].to(dtype)).sum().backward()

    def err(a, b):
        return float((a.detach().double() - b.detach().double()).abs().max())

    spec = make_params(mechanism, **params)
    predicted = predicted_bytes_sent(spec, rank=rank, shard_lengths=split, batch=batch, num_heads=heads,
                                     head_dim=head_dim, causal=causal, dtype=dtype)
    return dict(
        case=name, dtype=str(dtype), causal=causal, rank=rank,
        out=err(out, expected[:, start:stop]),
        dq=err(local[0].grad, full[0].grad[:, start:stop]),
        dk=err(local[1].grad, full[1].grad[:, start:stop]),
        dv=err(local[2].grad, full[2].grad[:, start:stop]),
        sent=(attn.comm.forward_bytes_sent, attn.comm.backward_bytes_sent),
        predicted=(predicted.forward, predicted.backward),
        metadata=attn.comm.metadata_bytes_sent,
    )


def _worker(rank: int, world_size: int, port: int, cases, failure_mode: str, out_dir: str) -> None:
    """Every equivalence case, then one failure: the last rank dies ("exit") or hangs ("hang")."""
    results = []
    try:
        _init(rank, world_size, port)
        for case in cases:
            for causal in (False, True):
                results.append(_compare_case(case, torch.float64, causal, rank, world_size))
        results.append(_compare_case(cases[0], torch.float32, True, rank, world_size))
        results.append(_error_messages(rank, world_size))
    except BaseException:  # report anything, including the traceback, to the parent
        results.append({"error": traceback.format_exc()})
    _dump(results, out_dir, f"rank{rank}")
    _dump(_fail_one_rank(rank, world_size, failure_mode), out_dir, f"failure-rank{rank}")
    os._exit(0)  # skip tearing down a process group whose peer is gone


def _dump(obj, out_dir: str, name: str) -> None:
    with open(os.path.join(out_dir, f"{name}.pkl"), "wb") as f:
        pickle.dump(obj, f)


def _error_messages(rank: int, world_size: int) -> dict:
    """Bad calls fail on every rank before any collective (so no rank is left waiting)."""
    from attention_impls.distributed import DistributedDilatedAttention

    attn = DistributedDilatedAttention([4], [1])
    x = torch.randn(1, 5, 2, 4)
    messages = {}
    for label, lengths in (("wrong count", [5] * (world_size + 1)), ("wrong own", [6] * world_size),
                           ("empty shard", [5] * (world_size - 1) + [0])):
        if label == "empty shard" and rank == world_size - 1:
            lengths = [5] * world_size  # this rank's own length is right; another rank's is the bad one
            lengths[0] = 0
        try:
            attn(x, x, x, shard_lengths=lengths)
            messages[label] = None
        except ValueError as error:
            messages[label] = str(error)
    return {"messages": messages, "rank": rank}


def _fail_one_rank(rank: int, world_size: int, mode: str) -> dict:
    """The last rank dies, or stays alive outside the collective; the others must name it, in bounded time.

    The hang runs in a subgroup with a short timeout (new_group(timeout=...)), which also covers group= and
    group-rank to global-rank naming; the equivalence cases keep the generous default timeout."""
    import torch.distributed as dist

    from attention_impls.distributed import DistributedDilatedAttention, PeerFailureError

    try:
        group = None
        if mode == "hang":
            group = dist.new_group(list(range(world_size)), timeout=datetime.timedelta(seconds=HANG_PG_TIMEOUT_S))
        dist.barrier()  # every rank is here; now the last one fails
        if rank == world_size - 1:
            if mode == "exit":
                os._exit(3)
            time.sleep(HANG_PG_TIMEOUT_S + HEALTH_TIMEOUT_S + 3)  # alive, but never joins the collective
            return {}
        attn = DistributedDilatedAttention([4 * world_size], [1], group=group, health_timeout_s=HEALTH_TIMEOUT_S)
        x = torch.randn(1, 4, 2, 4)
        started = time.monotonic()
        try:
            attn(x, x, x, shard_lengths=[4] * world_size)
            return {"raised": None}
        except PeerFailureError as error:
            return {"raised": str(error), "missing": error.missing_ranks, "seconds": time.monotonic() - started}
    except BaseException:
        return {"error": traceback.format_exc()}


def _run_group(target, world_size: int, args: tuple, out_dir) -> dict[str, object]:
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=target, args=(rank, world_size, port, *args, str(out_dir)), daemon=True)
             for rank in range(world_size)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    hung = [rank for rank, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(timeout=5)
    assert not hung, f"ranks {hung} still running after {JOIN_TIMEOUT_S} s: a collective hung"
    return {path.stem: pickle.loads(path.read_bytes()) for path in out_dir.glob("*.pkl")}


@pytest.fixture(scope="module")
def group_results(tmp_path_factory):
    """Spawn each group once (2 ranks: hang at the end; 4 ranks: a rank dies at the end); tests read the results."""
    runs = {}
    for world_size, cases, mode in ((2, CASES_2, "hang"), (4, CASES_4, "exit")):
        out_dir = tmp_path_factory.mktemp(f"ranks{world_size}")
        runs[world_size] = (cases, mode, _run_group(_worker, world_size, (cases, mode), out_dir))
    return runs


@pytest.mark.parametrize("world_size", [2, 4])
def test_distributed_equals_single_process(world_size, group_results):
    cases, _, files = group_results[world_size]
    results = {rank: files.get(f"rank{rank}") for rank in range(world_size)}
    assert all(rows is not None for rows in results.values()), f"ranks without results: {sorted(files)}"
    checked = 0
    for rank, rows in results.items():
        for row in rows:
            assert "error" not in row, f"rank {rank} failed:\n{row['error']}"
            if "messages" in row:
                messages = row["messages"]
                assert f"has {world_size + 1} entries; the group has {world_size} ranks" in messages["wrong count"]
                assert f"rank {rank} holds 5 positions but shard_lengths=" in messages["wrong own"]
                assert "must be a non-empty list of ints >= 1" in messages["empty shard"]
                continue
            tolerance = TOLERANCE[getattr(torch, row["dtype"].removeprefix("torch."))]
            where = f"{row['case']} causal={row['causal']} {row['dtype']} rank {rank}"
            for key in ("out", "dq", "dk", "dv"):
                assert row[key] < tolerance, f"{where}: max |{key} - reference| = {row[key]:.3g}"
            assert row["sent"] == row["predicted"], f"{where}: bytes sent {row['sent']} != predicted"
            checked += 1
    assert checked == world_size * (2 * len(cases) + 1)
    # The exchange really happens (and causal sends less): the hand-picked cases all have spanning segments.
    by_case = {}
    for rows in results.values():
        for row in rows:
            if "case" in row:
                by_case.setdefault((row["case"], row["causal"], row["dtype"]), []).append(row["sent"][0])
    for (name, causal, dtype), sent in by_case.items():
        if dtype == "torch.float64" and not causal and not name.startswith("random"):
            assert sum(sent) > sum(by_case[(name, True, dtype)]) > 0, name


@pytest.mark.parametrize("world_size", [2, 4], ids=["hang-of-2", "exit-of-4"])
def test_failed_rank_is_named_within_bounded_time(world_size, group_results):
    _, mode, files = group_results[world_size]
    failed = world_size - 1
    for rank in range(failed):
        result = files.get(f"failure-rank{rank}")
        assert result is not None, f"survivor rank {rank} wrote no result: {sorted(files)}"
        assert "error" not in result, f"rank {rank} failed otherwise:\n{result['error']}"
        assert result["raised"] is not None, f"rank {rank}: the attention returned although rank {failed} failed"
        assert f"rank(s) {failed} did not check in" in result["raised"], result["raised"]
        assert result["missing"] == [failed]
        limit = (HANG_PG_TIMEOUT_S if mode == "hang" else PG_TIMEOUT_S) + HEALTH_TIMEOUT_S + 5
        assert result["seconds"] < limit


def _brute_force_bytes(params, lengths, rank, batch, heads, head_dim, causal, element) -> tuple[int, int]:
    """Straight from the spec's membership rule, position by position: who holds which rows of each segment."""
    owner = [i for i, n in enumerate(lengths) for _ in range(n)]
    seq_len = sum(lengths)
    forward = backward = 0
    for segment, rate in params.branches(seq_len):
        for head in range(heads):
            for s in range(-(-seq_len // segment)):
                positions = [p for p in range(s * segment, min((s + 1) * segment, seq_len))
                             if (p % segment) % rate == head % rate]
                rows = [sum(1 for p in positions if owner[p] == i) for i in range(len(lengths))]
                if rows[rank] == 0:
                    continue
                for other, count in enumerate(rows):
                    if other != rank and count:
                        forward += rows[rank] if (not causal or other > rank) else 0
                        backward += count if (not causal or other < rank) else 0
    unit = 2 * batch * head_dim * element
    return forward * unit, backward * unit


@pytest.mark.parametrize("causal", [False, True])
def test_predicted_bytes_match_brute_force(causal):
    configs = [
        (make_params("dilated", segment_lengths=[4, 10, 64], dilation_rates=[1, 2, 3]), [19, 18], 3),
        (make_params("dilated", segment_lengths=[6, 16, 100], dilation_rates=[1, 2, 5]), [12, 11, 11, 11], 4),
        (make_params("dilated", segment_lengths=[7, 30], dilation_rates=[1, 2]), [3, 11, 9, 7], 3),
        (make_params("dilated", segment_lengths=[5, 9], dilation_rates=[1, 4]), [1, 2, 9, 4, 7], 6),
        (make_params("dilated", segment_lengths=[30], dilation_rates=[1]), [10, 4, 9, 7], 3),
    ]
    for params, lengths, heads in configs:
        for rank in range(len(lengths)):
            got = predicted_bytes_sent(params, rank=rank, shard_lengths=lengths, batch=2, num_heads=heads,
                                       head_dim=4, causal=causal, dtype=torch.float16)
            assert (got.forward, got.backward) == _brute_force_bytes(params, lengths, rank, 2, heads, 4, causal, 2)
    # Dense is the one-branch (w = N, r = 1) case of the same rule, and its closed form agrees.
    lengths = [10, 4, 9, 7]
    for rank in range(4):
        dense = predicted_bytes_sent(DenseParams(), rank=rank, shard_lengths=lengths, batch=1, num_heads=3,
                                     head_dim=8, causal=causal)
        as_dilated = predicted_bytes_sent(make_params("dilated", segment_lengths=[30], dilation_rates=[1]),
                                          rank=rank, shard_lengths=lengths, batch=1, num_heads=3, head_dim=8,
                                          causal=causal)
        assert dense == as_dilated


def test_plans_pair_up_across_ranks():
    """What each rank sends to j is exactly what j expects from it, item by item (row-head counts)."""
    params = make_params("dilated", segment_lengths=[5, 9, 40], dilation_rates=[1, 4, 3])
    layout = ShardLayout((1, 2, 9, 4, 7))
    for causal in (False, True):
        plans = [build_plan(params, layout, 6, causal, rank) for rank in range(layout.world_size)]
        for i, plan in enumerate(plans):
            for j, other in enumerate(plans):
                assert plan.send_counts[j] == other.recv_counts[i], (causal, i, j)
            assert plan.send_counts[i] == plan.recv_counts[i] == 0
        assert len({plan.any_exchange for plan in plans}) == 1


def test_shard_helpers_and_validation():
    assert shard_lengths(10, 4) == [3, 3, 2, 2]
    assert shard_lengths(8, 4) == [2, 2, 2, 2]
    x = torch.arange(10.0).view(1, 10, 1, 1)
    assert torch.equal(torch.cat([shard_sequence(x, r, 4) for r in range(4)], dim=1), x)
    assert [t.shape[1] for t in x.tensor_split(4, dim=1)] == shard_lengths(10, 4)
    with pytest.raises(ValueError, match="seq_len=3 is shorter than world_size=4"):
        shard_lengths(3, 4)
    with pytest.raises(ValueError, match=r"shard_lengths=\[3, 0\] must be"):
        ShardLayout((3, 0))
    with pytest.raises(ValueError, match="rank=4 must be in"):
        predicted_bytes_sent(DenseParams(), rank=4, shard_lengths=[1, 1], batch=1, num_heads=1, head_dim=1,
                             causal=False)


def test_call_without_process_group_fails_clearly():
    import torch.distributed as dist

    from attention_impls.distributed import DistributedDilatedAttention

    if dist.is_initialized():
        pytest.fail("this test process must not have a default process group")
    attn = DistributedDilatedAttention([4], [1])
    x = torch.randn(1, 4, 1, 2)
    with pytest.raises(RuntimeError, match="torch.distributed is not initialized"):
        attn(x, x, x)
    with pytest.raises(ValueError, match=r"leave position 0 of head 1 in no branch"):
        DistributedDilatedAttention([4], [2])
