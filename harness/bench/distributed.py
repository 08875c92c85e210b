"""The distributed job: sequence-parallel dense and dilated attention measured on every rank (job=distributed).

    shootout experiment=distributed                        # starts the ranks itself: one group per world size
    torchrun --nproc-per-node 4 -m harness experiment=distributed   # joins torchrun's group instead

Two ways to get ranks:
- `shootout` alone (no RANK/WORLD_SIZE in the environment): for each of `distributed.world_sizes` this process
  hosts a rendezvous store and spawns that many rank processes (gloo on CPU, NCCL with one GPU per rank). Ranks
  send their rows back over a pipe and this process writes them to the run's store part. It watches the ranks:
  a rank that dies, or stays silent past `benchmark.timeout_s`, fails the point with a row naming it; the rest of
  the points continue in a fresh group. It never waits forever.
- under torchrun (RANK and WORLD_SIZE set): every rank runs the same job, joins torchrun's group (or the one
  already initialised) and appends its own rows to its own store part. A failed point is fatal: the rank records
  it and exits non-zero, and torchrun stops the others.

The sweep axes are the speed job's (`benchmark.seq_lens`, `dtypes`, `causal`, `passes`, `batch`, `heads`,
`head_dim`, `warmup`, `min_run_time_s`, `min_repeats`, `threads`, `device`, `timeout_s`); the variants are
`attention` + `variants`. Dense and dilated run sequence-parallel (attention_impls.distributed; a variant's
`backend` does not apply there); other mechanisms become `unsupported` rows.

Per point and rank (measure order, as in the speed job):
  1. the correctness check when seq_len <= distributed.check_max_seq_len: every rank builds the same full q, k, v
     (and output gradient), compares its output shard (and its gradient shards, forward_backward) with the
     single-process attention in the same dtype; above benchmark.correctness.out_atol / grad_atol: `wrong`;
  2. benchmark.warmup untimed calls; one call with the byte counters reset, compared with
     attention_impls.distributed.predicted_bytes_sent (`bytes_match`; `wrong` when they differ); one call for
     peak memory;
  3. timed samples of distributed.calls_per_sample calls each. Before each sample, all ranks all-reduce (MAX)
     the time taken so far: that synchronises them (not timed) and gives every rank the same answer to "enough
     samples yet?" (benchmark.min_repeats and min_run_time_s), so every rank runs the same collectives.
     blocked_autorange cannot be used: it picks the number of calls per rank, and ranks that disagree deadlock.
"""

from __future__ import annotations

import datetime
import importlib
import json
import multiprocessing.connection
import os
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from typing import Any, Callable

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

import attention_impls
from attention_impls.distributed import shard_lengths

from .. import environment
from ..config import ConfigError
from ..store import ResultsStore, config_hash
from .measure import DTYPES, Timing, _sync, peak_memory_bytes
from .worker import death_status, die_with_parent, oom_kill_count, signal_name
from .plan import (check_benchmark, check_device, check_hook, check_positive, check_seconds, check_seq_lens,
                   check_shapes, grid, point_columns, read_variants)

KIND = "distributed"
MECHANISMS = ("dense", "dilated")  # what attention_impls.distributed implements
BACKEND = "sequence_parallel"
DIST_BACKENDS = ("auto", "gloo", "nccl")
DISTRIBUTED_TIMING_METHOD = ("all_reduce(MAX) of the time so far (untimed, synchronises the ranks and decides when to stop), "
                             "then perf_counter around calls_per_sample calls (device synchronised), per rank")
# After a rank fails, how long the others may take to notice and record it, beyond the collective and health
# timeouts (process start-up and a slow last row included).
FAILURE_GRACE_S = 5.0


def under_torchrun() -> bool:
    """True when this process is one rank of a launcher-made group (torchrun, or srun with its variables set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


# ---- what to measure -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DistPoint:
    """One distributed measurement: a variant at one global shape on world_size ranks."""

    variant: str
    mechanism: str
    params: dict
    seq_len: int
    world_size: int
    batch: int
    heads: int
    head_dim: int
    dtype: str
    causal: bool
    pass_name: str
    device: str  # cpu | cuda (rank r of a node uses cuda:<local rank>)
    dist_backend: str  # gloo | nccl
    backend: str | None = None  # the variant's single-process backend as requested; not used by the distributed path

    @property
    def backward(self) -> bool:
        return self.pass_name == "forward_backward"

    @property
    def shard_lengths(self) -> list[int]:
        return shard_lengths(self.seq_len, self.world_size)

    def identity(self) -> dict[str, Any]:
        """What makes two rows the same point (every rank shares it; the `rank` column tells them apart)."""
        identity = asdict(self)
        for key in ("variant", "backend"):
            identity.pop(key)
        return {"kind": KIND, **identity, "shard_lengths": self.shard_lengths}

    def describe(self) -> str:
        causal = " causal" if self.causal else ""
        return f"{self.variant} {self.pass_name} {self.dtype}{causal} N={self.seq_len} P={self.world_size}"


@dataclass(frozen=True)
class RankSettings:
    """How every rank measures (the same on all of them); picklable, so spawned ranks get it as an argument."""

    warmup: int
    min_repeats: int
    min_run_time_s: float
    calls_per_sample: int
    check_max_seq_len: int
    out_atol: dict
    grad_atol: dict
    collective_timeout_s: float
    health_timeout_s: float
    point_timeout_s: float
    threads: int | None
    seed: int
    fault_hook: str | None
    config_json: str


@dataclass
class DistributedPlan:
    device: str
    dist_backend: str
    launcher: str  # spawn | torchrun
    world_sizes: list[int]
    points: list[DistPoint]  # runnable points, world size by world size
    unsupported: list[DistPoint]  # variants with no sequence-parallel implementation
    settings: RankSettings

    def points_for(self, world_size: int) -> list[DistPoint]:
        return [p for p in self.points if p.world_size == world_size]


def plan_distributed(cfg: DictConfig) -> DistributedPlan:
    """Validate everything the distributed job needs and expand its points; raises ConfigError on bad input."""
    bench, dist_cfg = cfg.benchmark, cfg.distributed
    device = check_device(bench.device, allow_index=False)
    check_benchmark(bench, correctness=dist_cfg.check_max_seq_len > 0)
    check_positive("distributed.calls_per_sample", dist_cfg.calls_per_sample)
    check_positive("distributed.check_max_seq_len", dist_cfg.check_max_seq_len, 0)
    for name in ("collective_timeout_s", "health_timeout_s"):
        check_seconds(f"distributed.{name}", dist_cfg[name])
    if dist_cfg.dist_backend not in DIST_BACKENDS:
        raise ConfigError(f"distributed.dist_backend={dist_cfg.dist_backend!r} must be one of: "
                          f"{', '.join(DIST_BACKENDS)}")
    dist_backend = dist_cfg.dist_backend if dist_cfg.dist_backend != "auto" else (
        "nccl" if device == "cuda" else "gloo")
    if dist_backend == "nccl" and device != "cuda":
        raise ConfigError("distributed.dist_backend=nccl needs benchmark.device=cuda (NCCL moves GPU tensors); "
                          "use gloo on CPU")
    if dist_cfg.fault_hook:
        check_hook("distributed.fault_hook", dist_cfg.fault_hook)
    if "decode" in bench.passes:
        raise ConfigError("benchmark.passes: 'decode' is not a sequence-parallel job (one query shards over no "
                          "ranks); the distributed job takes forward, forward_backward")

    launcher = "torchrun" if under_torchrun() else "spawn"
    if launcher == "torchrun":
        world_sizes = [int(os.environ["WORLD_SIZE"])]  # the launcher decides; distributed.world_sizes is unused
    else:
        world_sizes = list(dist_cfg.world_sizes)
        if not world_sizes:
            raise ConfigError("distributed.world_sizes is empty; give at least one number of ranks, e.g. [2]")
        for world_size in world_sizes:
            check_positive("distributed.world_sizes entry", world_size)
            if device == "cuda" and world_size > torch.cuda.device_count():
                raise ConfigError(f"distributed.world_sizes has {world_size} ranks, but this machine has "
                                  f"{torch.cuda.device_count()} GPUs (one per rank); launch with torchrun across "
                                  f"nodes for more")

    seq_lens = check_seq_lens(list(bench.seq_lens))
    for world_size in world_sizes:
        if seq_lens[0] < world_size:
            raise ConfigError(f"benchmark.seq_lens: {seq_lens[0]} is shorter than {world_size} ranks (each rank "
                              f"needs at least one position)")
    variants = read_variants(cfg)
    for variant in variants:
        if variant.mechanism == "dilated" and variant.spec.head_offsets != "cyclic":
            raise ConfigError(f"{variant.where} ({variant.name}): head_offsets={variant.spec.head_offsets!r} is not "
                              "supported by the sequence-parallel attention, which splits heads by h mod r (use "
                              "head_offsets=cyclic)")
        check_shapes(variant, seq_lens, bench.heads)

    points, unsupported = [], []
    for world_size in world_sizes:
        for variant, dtype, causal, pass_name, seq_len in grid(variants, bench, seq_lens):
            point = DistPoint(variant.name, variant.mechanism, variant.params, seq_len, world_size, bench.batch,
                              bench.heads, bench.head_dim, dtype, causal, pass_name, device, dist_backend,
                              variant.backend)
            (points if variant.mechanism in MECHANISMS else unsupported).append(point)
    settings = RankSettings(
        warmup=bench.warmup, min_repeats=bench.min_repeats, min_run_time_s=bench.min_run_time_s,
        calls_per_sample=dist_cfg.calls_per_sample, check_max_seq_len=dist_cfg.check_max_seq_len,
        out_atol=dict(bench.correctness.out_atol), grad_atol=dict(bench.correctness.grad_atol),
        collective_timeout_s=float(dist_cfg.collective_timeout_s),
        health_timeout_s=float(dist_cfg.health_timeout_s), point_timeout_s=float(bench.timeout_s),
        threads=bench.threads, seed=cfg.seed, fault_hook=dist_cfg.fault_hook,
        config_json=json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True, default=str),
    )
    return DistributedPlan(device, dist_backend, launcher, world_sizes, points, unsupported, settings)


# ---- one rank ------------------------------------------------------------------------------------------------

def time_samples(call: Callable[[], Any], device: torch.device, settings: RankSettings, label: str,
                 health_timeout_s: float) -> dict[str, Any]:
    """Timed samples until every rank has min_repeats of them and the slowest rank min_run_time_s in total."""
    import torch.distributed as dist

    from attention_impls.distributed import guarded_collective

    raw_times: list[float] = []
    slowest_total = torch.zeros(1, dtype=torch.float64, device=device)
    while True:
        slowest_total.fill_(sum(raw_times))
        guarded_collective("timing all_reduce", lambda: dist.all_reduce(slowest_total, op=dist.ReduceOp.MAX),
                           health_timeout_s=health_timeout_s)
        if len(raw_times) >= settings.min_repeats and slowest_total.item() >= settings.min_run_time_s:
            break
        _sync(device)
        start = time.perf_counter()
        for _ in range(settings.calls_per_sample):
            call()
        _sync(device)
        raw_times.append(time.perf_counter() - start)
    # each sample timed calls_per_sample calls: per-call seconds, the same kind of sample as the speed job's
    return Timing(tuple(t / settings.calls_per_sample for t in raw_times), settings.calls_per_sample,
                  DISTRIBUTED_TIMING_METHOD).columns()


class RankRunner:
    """Measures points on this rank of an initialised process group; one row per point."""

    def __init__(self, settings: RankSettings, device: torch.device, launcher: str,
                 env: dict[str, Any]) -> None:
        import torch.distributed as dist

        self.settings, self.device, self.launcher, self.env = settings, device, launcher, env
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        self.hook = None
        if settings.fault_hook:
            module_name, _, function_name = settings.fault_hook.partition(":")
            self.hook = getattr(importlib.import_module(module_name), function_name)

    def base_row(self, point: DistPoint) -> dict[str, Any]:
        return {**_point_columns(point, self.settings, self.rank, self.local_rank, self.launcher),
                "threads": torch.get_num_threads(), "status": "ok", "reason": "", **self.env}

    def measure(self, point: DistPoint) -> tuple[dict[str, Any], bool]:
        """This rank's row for `point`, and whether the group is broken (the rank must stop after recording)."""
        from attention_impls.distributed import PeerFailureError

        row = self.base_row(point)
        try:
            if self.hook is not None:
                self.hook(asdict(point), self.rank)
            row.update(self._measure(point))
        except torch.OutOfMemoryError as error:
            return {**row, "status": "oom", "reason": f"rank {self.rank}: {str(error).splitlines()[0]}"}, True
        except PeerFailureError as error:
            return {**row, "status": "error", "reason": str(error), "missing_ranks": error.missing_ranks}, True
        except Exception as error:  # noqa: BLE001 - recorded as this point's row; the group is then unusable
            return {**row, "status": "error", "reason": f"rank {self.rank}: {type(error).__name__}: {error}"}, True
        return row, False

    def _inputs(self, point: DistPoint, check: bool) -> list[torch.Tensor]:
        """q, k, v and the output gradient of this rank's shard (the same full tensors on every rank when
        checking, so each rank can compare with one process)."""
        dtype, (start, length) = DTYPES[point.dtype], (sum(point.shard_lengths[: self.rank]),
                                                       point.shard_lengths[self.rank])
        if check:
            generator = torch.Generator().manual_seed(self.settings.seed)
            full = [torch.randn(point.batch, point.seq_len, point.heads, point.head_dim, generator=generator)
                    for _ in range(4)]
            return [t[:, start : start + length].to(self.device, dtype).contiguous() for t in full]
        generator = torch.Generator(device=self.device).manual_seed(self.settings.seed * 1_000_003 + self.rank)
        return [torch.randn(point.batch, length, point.heads, point.head_dim, generator=generator,
                            device=self.device, dtype=dtype) for _ in range(4)]

    def _check(self, point: DistPoint, out: torch.Tensor, grads: list[torch.Tensor] | None) -> dict[str, Any]:
        """Max |this rank's output (and gradients) - the single-process attention's matching slice|."""
        dtype = DTYPES[point.dtype]
        generator = torch.Generator().manual_seed(self.settings.seed)
        full = [torch.randn(point.batch, point.seq_len, point.heads, point.head_dim, generator=generator)
                .to(self.device, dtype) for _ in range(4)]
        q, k, v = (t.requires_grad_(grads is not None) for t in full[:3])
        single = attention_impls.build(point.mechanism, backend="gather" if point.mechanism == "dilated" else "math",
                                       **point.params)
        start = sum(point.shard_lengths[: self.rank])
        mine = slice(start, start + out.shape[1])
        with torch.set_grad_enabled(grads is not None):
            expected = single(q, k, v, causal=point.causal)
            if grads is not None:
                torch.autograd.backward(expected, full[3])
        columns: dict[str, Any] = {
            "max_abs_err": float((out.double() - expected[:, mine].detach().double()).abs().max()),
            "check_against": f"single-process {point.mechanism}/{single.backend}"}
        reasons = []
        if not columns["max_abs_err"] <= self.settings.out_atol[point.dtype]:
            reasons.append(f"output differs by {columns['max_abs_err']:.3g} > {self.settings.out_atol[point.dtype]:g}")
        if grads is not None:
            columns["max_abs_grad_err"] = max(float((mine_grad.double() - t.grad[:, mine].double()).abs().max())
                                              for mine_grad, t in zip(grads, (q, k, v)))
            if not columns["max_abs_grad_err"] <= self.settings.grad_atol[point.dtype]:
                reasons.append(f"gradients differ by {columns['max_abs_grad_err']:.3g} > "
                               f"{self.settings.grad_atol[point.dtype]:g}")
        if reasons:
            columns.update(status="wrong", reason=f"rank {self.rank}: {'; '.join(reasons)} (against the "
                                                  f"{columns['check_against']})")
        return columns

    def _measure(self, point: DistPoint) -> dict[str, Any]:
        from attention_impls.distributed import (DistributedDenseAttention, DistributedDilatedAttention,
                                                 predicted_bytes_sent)

        settings, lengths = self.settings, point.shard_lengths
        if point.mechanism == "dilated":
            attn = DistributedDilatedAttention(health_timeout_s=settings.health_timeout_s, **point.params)
        else:
            attn = DistributedDenseAttention(health_timeout_s=settings.health_timeout_s)
        check = 0 < point.seq_len <= settings.check_max_seq_len
        q, k, v, grad_out = self._inputs(point, check)
        if point.backward:
            q, k, v = (t.requires_grad_() for t in (q, k, v))

        def call() -> torch.Tensor:
            out = attn(q, k, v, causal=point.causal, shard_lengths=lengths)
            if point.backward:
                torch.autograd.backward(out, grad_out)
            return out

        columns: dict[str, Any] = {}
        if check:
            out = call().detach()
            grads = [t.grad.detach().clone() for t in (q, k, v)] if point.backward else None
            columns.update(self._check(point, out, grads))
        for _ in range(settings.warmup):
            call()
        attn.reset_comm_stats()
        call()
        comm, spec = attn.comm, attention_impls.make_params(point.mechanism, **point.params)
        predicted = predicted_bytes_sent(spec, rank=self.rank, shard_lengths=lengths, batch=point.batch,
                                         num_heads=point.heads, head_dim=point.head_dim, causal=point.causal,
                                         dtype=DTYPES[point.dtype])
        predicted_backward = predicted.backward if point.backward else 0
        sent = (comm.forward_bytes_sent, comm.backward_bytes_sent)
        columns.update(
            kernel=attn.kernel_name, bytes_sent_forward=sent[0], bytes_sent_backward=sent[1],
            bytes_received_forward=comm.forward_bytes_received,
            bytes_received_backward=comm.backward_bytes_received,
            predicted_bytes_sent_forward=predicted.forward, predicted_bytes_sent_backward=predicted_backward,
            bytes_match=sent == (predicted.forward, predicted_backward))
        if not columns["bytes_match"] and "status" not in columns:
            columns.update(status="wrong", reason=f"rank {self.rank}: sent {sent[0]} + {sent[1]} B, predicted "
                                                  f"{predicted.forward} + {predicted_backward} B")
        columns["peak_mem_bytes"], columns["mem_method"] = peak_memory_bytes(call, self.device)
        timing = time_samples(call, self.device, settings, f"{point.describe()} rank {self.rank}",
                              settings.health_timeout_s)
        flops = attention_impls.useful_flops(spec, point.batch, point.seq_len, point.heads, point.head_dim,
                                             point.causal, backward=point.backward)
        columns.update(timing, useful_flops=flops, tokens_per_s=point.batch * point.seq_len /
                       timing["latency_median_s"], flops_per_s=flops / timing["latency_median_s"])
        return columns


def _rank_device(device_type: str, local_rank: int, threads: int | None, local_world_size: int) -> torch.device:
    if device_type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        if threads:
            torch.set_num_threads(threads)
        return device
    # Ranks on one machine share its cores: by default each gets its share, so they do not oversubscribe.
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // local_world_size))
    return torch.device("cpu")


def _interrupted(signum: int, frame: Any) -> None:
    raise SystemExit(f"terminated by signal {signal.Signals(signum).name}")


# ---- spawned ranks (shootout starts them) ---------------------------------------------------------------------

def _rank_main(rank: int, world_size: int, store_port: int, conn: multiprocessing.connection.Connection,
               points: list[DistPoint], settings: RankSettings, device_type: str, dist_backend: str,
               env: dict[str, Any], parent: int | None = None) -> None:
    """A spawned rank: join the group through the parent's store, measure `points`, send each row back."""
    import torch.distributed as dist

    signal.signal(signal.SIGTERM, _interrupted)
    die_with_parent(parent)
    broken = True
    try:
        device = _rank_device(device_type, rank, settings.threads, world_size)
        timeout = datetime.timedelta(seconds=settings.collective_timeout_s)
        store = dist.TCPStore("127.0.0.1", store_port, is_master=False, timeout=timeout)
        dist.init_process_group(dist_backend, store=store, rank=rank, world_size=world_size, timeout=timeout,
                                device_id=device if dist_backend == "nccl" else None)
        runner = RankRunner(settings, device, "spawn", {**env, "env_device": str(device)})
        for point in points:
            row, broken = runner.measure(point)
            conn.send(("row", row))
            if broken:
                break
        else:
            broken = False
    except BaseException as error:  # noqa: BLE001 - the parent records it on this rank's unfinished point
        traceback.print_exc()
        try:
            conn.send(("fatal", f"rank {rank}: {type(error).__name__}: {error}".strip()))
        except OSError:
            pass  # the parent is gone; nobody is left to tell
    finally:
        conn.close()
    sys.stdout.flush()
    sys.stderr.flush()
    # A broken group cannot be torn down (destroy_process_group may wait on a dead peer): leave without it.
    os._exit(1 if broken else 0)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by signal {signal_name(-code)}"
    return f"exit code {code}"


class _Group:
    """One spawned process group running a list of points; the parent's side of it."""

    def __init__(self, plan: DistributedPlan, world_size: int, points: list[DistPoint], env: dict[str, Any]):
        import torch.distributed as dist
        import torch.multiprocessing as mp

        self.plan, self.world_size, self.points = plan, world_size, points
        settings = plan.settings
        # The rendezvous store lives here, not in rank 0: it outlives any rank, so survivors can always tell
        # which peer is missing.
        self.store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                                   timeout=datetime.timedelta(seconds=settings.collective_timeout_s))
        context = mp.get_context("spawn")
        self.conns: dict[Any, int] = {}
        self.procs = []
        self.oom_before = oom_kill_count()  # a rank that dies by SIGKILL was the OOM killer's only if this rises
        for rank in range(world_size):
            receiver, sender = context.Pipe(duplex=False)
            proc = context.Process(target=_rank_main, daemon=True, name=f"shootout-rank{rank}",
                                   args=(rank, world_size, self.store.port, sender, points, settings, plan.device,
                                         plan.dist_backend, env, os.getpid()))
            proc.start()
            sender.close()  # the child holds the only write end: EOF here means it is gone
            self.conns[receiver] = rank
            self.procs.append(proc)
        self.rows: list[list[dict[str, Any]]] = [[] for _ in range(world_size)]
        self.fatal: dict[int, str] = {}
        self.stopped: dict[int, str] = {}  # rank -> why the runner killed it

    def next_complete(self) -> int:
        return min(len(rows) for rows in self.rows)

    def run(self, on_point: Callable[[int, list[dict[str, Any]]], None]) -> int | None:
        """Collect rows until every rank finished or the group broke; on_point(index, rows) for each point all
        ranks finished. Returns the index of the point that failed (None when all completed)."""
        settings = self.plan.settings
        last_progress = time.monotonic()
        failure_at: float | None = None
        reported = 0
        while self.conns or any(p.is_alive() for p in self.procs):
            ready = multiprocessing.connection.wait(
                list(self.conns) + [p.sentinel for p in self.procs if p.is_alive()], timeout=0.5)
            for conn in [c for c in ready if c in self.conns]:
                rank = self.conns[conn]
                try:
                    kind, payload = conn.recv()
                except (EOFError, OSError):
                    del self.conns[conn]
                    continue
                last_progress = time.monotonic()
                if kind == "row":
                    self.rows[rank].append(payload)
                    if payload["status"] not in ("ok", "wrong") and failure_at is None:
                        failure_at = last_progress
                else:
                    self.fatal[rank] = payload
            while reported < self.next_complete():
                on_point(reported, [self.rows[r][reported] for r in range(self.world_size)])
                reported += 1
            now = time.monotonic()
            if failure_at is None and any(p.exitcode not in (None, 0) for p in self.procs):
                failure_at = now
            alive = [r for r, p in enumerate(self.procs) if p.is_alive()]
            if not alive:
                continue  # drain what the pipes still hold
            named = {m for rows in self.rows for row in rows[reported:] for m in row.get("missing_ranks") or []}
            if failure_at is not None:
                grace = settings.collective_timeout_s + settings.health_timeout_s + FAILURE_GRACE_S
                for rank in alive:
                    if rank in named:
                        self._stop(rank, f"alive but found missing by the other ranks after a failed collective "
                                         f"(hung); stopped by the runner")
                    elif now - failure_at > grace:
                        self._stop(rank, f"did not finish within {grace:g} s after another rank failed "
                                         f"(distributed.collective_timeout_s + health_timeout_s + {FAILURE_GRACE_S:g} "
                                         f"s); stopped by the runner")
            elif now - last_progress > settings.point_timeout_s:
                for rank in alive:
                    self._stop(rank, f"no result within benchmark.timeout_s={settings.point_timeout_s:g} s; "
                                     f"stopped by the runner")
        return None if reported == len(self.points) else reported

    def _stop(self, rank: int, why: str) -> None:
        proc = self.procs[rank]
        if proc.is_alive():
            self.stopped[rank] = why
            proc.kill()
            proc.join(timeout=10)

    def failure_rows(self, index: int) -> list[dict[str, Any]]:
        """The failed point's rows: what each rank recorded, and for the ranks that recorded nothing, why."""
        point = self.points[index]
        rows = []
        for rank in range(self.world_size):
            if len(self.rows[rank]) > index:
                rows.append(self.rows[rank][index])
                continue
            proc = self.procs[rank]
            if rank in self.stopped:
                status, reason = "timeout", f"rank {rank}: {self.stopped[rank]}"
            else:
                status, why = death_status(proc.exitcode, self.oom_before, oom_kill_count())
                reason = f"rank {rank} died during this point ({_describe_exit(proc.exitcode)}): {why}"
            if rank in self.fatal:
                reason += f": {self.fatal[rank]}"
            rows.append({**_point_columns(point, self.plan.settings, rank, rank, "spawn"),
                         "status": status, "reason": reason, "exitcode": proc.exitcode})
        return rows


# ---- the job --------------------------------------------------------------------------------------------------

def _completed(frame: pd.DataFrame) -> set[str]:
    """config_hash of distributed points that every rank recorded as ok."""
    if frame.empty or "rank" not in frame or "kind" not in frame:
        return set()
    ok = frame[(frame["kind"] == KIND) & (frame["status"] == "ok")]
    if ok.empty:
        return set()
    ranks = ok.groupby("config_hash")["rank"].nunique()
    world = ok.groupby("config_hash")["world_size"].max()
    return set(ranks[ranks >= world].index)


def _unsupported_row(point: DistPoint, settings: RankSettings, env: dict[str, Any]) -> dict[str, Any]:
    return {
        **point_columns(KIND, point), "backend": None, "dist_backend": point.dist_backend,
        "world_size": point.world_size, "status": "unsupported",
        "reason": f"mechanism={point.mechanism}: no sequence-parallel implementation (attention_impls.distributed "
                  f"has: {', '.join(MECHANISMS)})",
        "config": settings.config_json, "config_hash": config_hash(point.identity()), **env,
    }


def _point_columns(point: DistPoint, settings: RankSettings, rank: int, local_rank: int,
                   launcher: str) -> dict[str, Any]:
    """The columns of one rank's row for a point it ran (or died running)."""
    lengths = point.shard_lengths
    return {
        **point_columns(KIND, point), "backend": BACKEND, "dist_backend": point.dist_backend,
        "world_size": point.world_size, "shard_lengths": lengths, "rank": rank, "local_rank": local_rank,
        "local_seq_len": lengths[rank], "shard_start": sum(lengths[:rank]), "launcher": launcher,
        "config": settings.config_json, "config_hash": config_hash(point.identity()),
    }


class _Reporter:
    """Writes each completed point's rows and tells the console and the logger."""

    def __init__(self, store: ResultsStore, logger: Any, console: Any) -> None:
        self.store, self.logger, self.console = store, logger, console
        self.rows: list[dict[str, Any]] = []

    def point(self, point: DistPoint, rows: list[dict[str, Any]]) -> None:
        self.store.append(rows)
        self.rows.extend(rows)
        statuses = sorted({row["status"] for row in rows})
        line = f"{point.describe()}: {', '.join(statuses)}"
        if statuses == ["ok"]:
            slowest = max(row["latency_median_s"] for row in rows)
            sent = sum(row["bytes_sent_forward"] + row["bytes_sent_backward"] for row in rows)
            predicted = sum(row["predicted_bytes_sent_forward"] + row["predicted_bytes_sent_backward"]
                            for row in rows)
            line += f", slowest rank {slowest * 1e3:.3g} ms, sent {sent} B in all (predicted {predicted})"
            self.logger.log_curve(f"distributed/{point.variant}/world_size={point.world_size}", "seq_len",
                                  point.seq_len, {"latency_max_over_ranks_s": slowest, "bytes_sent_total": sent})
        else:
            line += " | " + " | ".join(row["reason"] for row in rows if row.get("reason"))
        self.console.print(line, highlight=False, markup=False)


def _run_spawned(plan: DistributedPlan, store: ResultsStore, reporter: _Reporter, done: set[str],
                 env: dict[str, Any]) -> None:
    for world_size in plan.world_sizes:
        remaining = [p for p in plan.points_for(world_size) if config_hash(p.identity()) not in done]
        while remaining:
            group = _Group(plan, world_size, remaining, env)
            failed = group.run(lambda index, rows: reporter.point(remaining[index], rows))
            if failed is None:
                break
            reporter.point(remaining[failed], group.failure_rows(failed))
            remaining = remaining[failed + 1:]  # the group is gone; the rest run in a fresh one


def _run_torchrun(plan: DistributedPlan, store: ResultsStore, reporter: _Reporter, resume: bool) -> None:
    import torch.distributed as dist

    from attention_impls.distributed import guarded_collective

    settings = plan.settings
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _rank_device(plan.device, local_rank, settings.threads, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    ours = not dist.is_initialized()
    if ours:
        dist.init_process_group(plan.dist_backend, timeout=datetime.timedelta(seconds=settings.collective_timeout_s),
                                device_id=device if plan.dist_backend == "nccl" else None)
    rank = dist.get_rank()
    # Every rank must agree on which points to run: rank 0 reads the store once and tells the others.
    box = [_completed(store.read_resumable()) if rank == 0 and resume else set()]
    guarded_collective("resume broadcast", lambda: dist.broadcast_object_list(box, src=0),
                       health_timeout_s=settings.health_timeout_s)
    env = environment.fingerprint(str(device))
    if rank == 0:  # one row per unsupported point, not one per rank
        for point in plan.unsupported:
            reporter.point(point, [_unsupported_row(point, settings, env)])
    runner = RankRunner(settings, device, "torchrun", env)
    for point in plan.points:
        if config_hash(point.identity()) in box[0]:
            continue
        row, broken = runner.measure(point)
        store.append(row)
        reporter.rows.append(row)
        if rank == 0 or row["status"] != "ok":
            reporter.console.print(f"rank {rank}: {point.describe()}: {row['status']} {row['reason']}",
                                   highlight=False, markup=False)
        if broken:
            print(f"shootout: distributed point failed on rank {rank}: {row['reason']}; row recorded in "
                  f"{store.part_path}. Exiting without tearing the group down (a peer may be gone).",
                  file=sys.stderr, flush=True)
            os._exit(1)
    guarded_collective("end barrier", dist.barrier, health_timeout_s=settings.health_timeout_s)
    if ours:
        dist.destroy_process_group()


def run_distributed(cfg: DictConfig, store: ResultsStore | None = None, logger: Any = None,
                    check_only: bool = False) -> pd.DataFrame | None:
    """Measure every distributed point of the config into `store`; returns the rows written here (None with
    check_only). harness.run owns the store and the logger (one per Hydra job; under torchrun, one per rank)."""
    from rich.console import Console

    from ..loggers import NullLogger

    plan = plan_distributed(cfg)
    if check_only:
        return None
    if store is None:
        raise ValueError("run_distributed needs a ResultsStore unless check_only=True")
    console = Console(stderr=True)
    if not console.is_terminal:
        console.width = max(console.width, 200)  # logs and CI: one line per point
    reporter = _Reporter(store, logger if logger is not None else NullLogger(), console)
    if plan.launcher == "torchrun":
        _run_torchrun(plan, store, reporter, cfg.resume)
    else:
        env = environment.fingerprint(plan.device)
        done = _completed(store.read_resumable()) if cfg.resume else set()
        recorded = store.done_hashes() if cfg.resume else set()
        for point in plan.unsupported:
            if config_hash(point.identity()) not in recorded:
                reporter.point(point, [_unsupported_row(point, plan.settings, env)])
        _run_spawned(plan, store, reporter, done, env)
    return pd.DataFrame(reporter.rows)
