"""The two entry points the harness calls: the training-free probe and a retrieval training run.

Both write tidy rows through harness.store.ResultsStore, in the speed runner's row format (mechanism, backend,
params JSON, seq_len, status, reason, config_hash, env_*), so accuracy and speed of one configuration join on
(mechanism, backend, params, seq_len). One call = one config_hash; its rows differ by seq_len / distance bucket /
depth. Accuracy is always an exact count over held-out items: `accuracy = correct / count`.
"""

from __future__ import annotations

import json
import time
from typing import Any, Optional

import pandas as pd
import torch

from attention_impls import build
from harness.environment import fingerprint
from harness.loggers import Logger, NullLogger
from harness.store import ResultsStore, config_hash

from .config import ProbeConfig, RetrievalConfig
from .model import TinyDecoder
from .probe import probe_attention, probe_unsupported_reasons
from .reach import distance_buckets, items_reachable, params_of, receptive_field, theoretical_reach
from .tasks import chance_accuracy
from .train import ItemScores, evaluate, held_out_batches, seed_stream, summarize, train_model

ATTENTION_KEYS = ("name", "mechanism", "backend", "params")


def normalize_attention(attention: Any) -> dict[str, Any]:
    """{mechanism, backend, params[, name]} from a dict or OmegaConf node; parameters validated by the spec."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(attention, DictConfig):
            attention = OmegaConf.to_container(attention, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if not isinstance(attention, dict) or "mechanism" not in attention:
        raise ValueError(f"attention={attention!r} must be a mapping with keys mechanism, backend, params")
    unknown = sorted(set(attention) - set(ATTENTION_KEYS))
    if unknown:
        raise ValueError(f"attention has unknown keys {unknown}; allowed: {list(ATTENTION_KEYS)}")
    normalized = {"mechanism": attention["mechanism"], "backend": attention.get("backend"),
                  "params": dict(attention.get("params") or {})}
    params_of(normalized)  # raises naming the bad parameter
    if attention.get("name"):
        normalized["name"] = attention["name"]
    return normalized


def _attention_columns(attention: dict[str, Any]) -> dict[str, Any]:
    return {"name": attention.get("name") or attention["mechanism"], "mechanism": attention["mechanism"],
            "backend_requested": attention["backend"] or "auto",
            "params": json.dumps(attention["params"], sort_keys=True)}


def _identity(attention: dict[str, Any]) -> dict[str, Any]:
    return {k: attention[k] for k in ("mechanism", "backend", "params")}


# --------------------------------------------------------------------------------------------------- probe


def run_probe(attention_variants: list[Any], probe_cfg: Any, store: ResultsStore,
              logger: Optional[Logger] = None) -> pd.DataFrame:
    """The probe for each variant: rows per (variant, direction, distance bucket), kind="probe".

    accuracy = fraction of (query, head) pairs at that distance whose key's value came back; reachable_fraction is
    the same fraction predicted by the spec; mismatches counts (query, key, head) triples where the two differ, and
    any mismatch makes the variant's rows status="wrong".
    """
    logger = logger or NullLogger()
    cfg = probe_cfg if isinstance(probe_cfg, ProbeConfig) else ProbeConfig.from_mapping(probe_cfg)
    cfg.validate()
    variants = [normalize_attention(a) for a in attention_variants]  # every variant checked before any work
    store.check_writable()
    env = fingerprint(cfg.device)
    frames = []
    for attention in variants:
        identity = {"probe": _cfg_dict(cfg), **_identity(attention)}
        base = {"kind": "probe", "config_hash": config_hash(identity), "task": "probe", **_attention_columns(attention),
                "seq_len": cfg.seq_len, "heads": cfg.heads, "head_dim": cfg.head_dim, "causal": cfg.causal,
                "dtype": cfg.dtype, "device": cfg.device, "layers": 1, **env,
                "config": json.dumps(identity, sort_keys=True)}
        reasons = probe_unsupported_reasons(attention, cfg)
        if not reasons:
            try:
                result = probe_attention(attention, cfg)
            except RuntimeError as error:
                if "backend" not in str(error):  # only "no backend can run this" is an unsupported point
                    raise
                reasons = [str(error)]
        if reasons:
            rows = [{**base, "status": "unsupported", "reason": "; ".join(reasons), "backend": attention["backend"]}]
        else:
            rows = _probe_rows(base, result, cfg, attention)
        store.append(rows)
        frames.append(pd.DataFrame(rows))
    frame = pd.concat(frames, ignore_index=True)
    logger.log_rows(frame, name="probe")
    return frame


def _probe_rows(base: dict[str, Any], result, cfg: ProbeConfig, attention: dict[str, Any]) -> list[dict]:
    n = cfg.seq_len
    query = torch.arange(n)[:, None]
    key = torch.arange(n)[None, :]
    distance = (query - key).expand(cfg.heads, n, n)
    mismatches = result.mismatches
    total_mismatches = int(mismatches.sum())
    reason = ""
    if total_mismatches:
        h, p, j = (int(x) for x in mismatches.nonzero()[0])
        reason = (f"{total_mismatches} (query, key, head) pairs differ from the spec; first: head {h}, query {p}, key "
                  f"{j}: recovered={bool(result.recovered[h, p, j])}, spec={bool(result.spec[h, p, j])}")
    reach = theoretical_reach(params_of(attention), n, cfg.heads, 1, cfg.causal)
    rows = []
    for direction, sign in (("past", 1), ("future", -1)):
        if direction == "future" and cfg.causal:
            continue  # causal attention sees no future key; every row would say 0 of 0
        d = distance * sign
        for lo, hi in distance_buckets(list(cfg.bucket_edges), n - 1):
            if direction == "future" and hi < 1:
                continue
            lo = max(lo, 1) if direction == "future" else lo
            select = (d >= lo) & (d <= hi)
            count = int(select.sum())
            if count == 0:
                continue
            rows.append({**base, "status": "wrong" if total_mismatches else "ok", "reason": reason,
                         "backend": result.backend, "direction": direction, "distance_lo": lo, "distance_hi": hi,
                         "count": count, "accuracy": float(result.recovered[select].float().mean()),
                         "reachable_fraction": float(result.spec[select].float().mean()),
                         "mismatches": int(mismatches[select].sum()), "theoretical_reach": reach,
                         "seconds": result.seconds})
    return rows


# ----------------------------------------------------------------------------------------------- retrieval


def run_retrieval(attention: Any, cfg: Any, store: ResultsStore, logger: Optional[Logger] = None,
                  *, resume: bool = False) -> pd.DataFrame:
    """Train a TinyDecoder with `attention` on cfg.task, evaluate held-out sequences, write kind="retrieval" rows.

    MQAR rows: one per (eval seq_len, distance bucket). Passkey rows: one per (context length, depth), at that
    context's single distance. Every row carries accuracy (exact items), count, chance, reachable_fraction (share
    of the bucket's items whose sources the pattern can reach at this depth), theoretical_reach and the training
    summary. resume=True returns the stored rows of a run with the same config_hash instead of training again.
    """
    logger = logger or NullLogger()
    cfg = cfg if isinstance(cfg, RetrievalConfig) else RetrievalConfig.from_mapping(cfg)
    cfg.validate()
    attention = normalize_attention(attention)
    identity = {"retrieval": _cfg_dict(cfg, drop=("progress", "threads")), **_identity(attention)}
    run_hash = config_hash(identity)
    store.check_writable()
    if resume and run_hash in store.done_hashes():
        frame = store.read_resumable()
        return frame[frame["config_hash"] == run_hash].reset_index(drop=True)
    device, dtype = torch.device(cfg.train.device), getattr(torch, cfg.train.dtype)
    base = {"kind": "retrieval", "config_hash": run_hash, "task": cfg.task.name, **_attention_columns(attention),
            "train_seq_len": cfg.task.seq_len, "layers": cfg.model.layers, "d_model": cfg.model.d_model,
            "heads": cfg.model.heads, "token_shift": cfg.model.token_shift, "seed": cfg.train.seed,
            "device": cfg.train.device, "dtype": cfg.train.dtype, "chance": chance_accuracy(cfg.task),
            "config": json.dumps(identity, sort_keys=True)}

    reasons = _training_unsupported(attention, device, dtype, cfg.model.d_model // cfg.model.heads)
    if reasons:
        rows = [{**base, **fingerprint(cfg.train.device), "status": "unsupported", "reason": reasons,
                 "backend": attention["backend"]}]
        store.append(rows)
        return pd.DataFrame(rows)

    previous_threads = torch.get_num_threads()
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    try:
        env = fingerprint(cfg.train.device)  # after set_num_threads, so env_threads is what ran
        torch.manual_seed(cfg.train.seed)
        model = TinyDecoder(cfg.model, cfg.task.vocab_size(), attention).to(device=device, dtype=dtype)
        try:
            result = train_model(model, cfg, device, logger, description=attention.get("name",
                                                                                        attention["mechanism"]))
        except torch.OutOfMemoryError as error:
            rows = [{**base, **env, "status": "oom", "reason": str(error).splitlines()[0],
                     "backend": attention["backend"]}]
            store.append(rows)
            return pd.DataFrame(rows)
        base.update(env, backend=model.backends[0], **summarize(result))
        if result.stop_reason == "nan":
            rows = [{**base, "status": "nan", "reason": f"training loss became non-finite at step {result.steps}"}]
        else:
            rows = _evaluation_rows(base, model, cfg, attention, device)
    finally:
        torch.set_num_threads(previous_threads)
    store.append(rows)
    frame = pd.DataFrame(rows)
    logger.log_rows(frame, name="retrieval")
    return frame


def _training_unsupported(attention: dict[str, Any], device: torch.device, dtype: torch.dtype,
                          head_dim: int) -> str:
    """Why no backend can train this variant here ('' if one can): decided before the model is built."""
    try:
        attn = build(attention["mechanism"], attention["backend"], **attention["params"])
        attn.resolve(device, dtype, causal=True, requires_grad=True, head_dim=head_dim)
    except RuntimeError as error:  # build and resolve raise RuntimeError only for "cannot run here"
        return str(error)
    return ""


def _evaluation_rows(base: dict[str, Any], model: TinyDecoder, cfg: RetrievalConfig, attention: dict[str, Any],
                     device: torch.device) -> list[dict[str, Any]]:
    params = params_of(attention)
    rows = []
    for seq_len in cfg.eval.lengths(cfg.task):
        field = receptive_field(params, seq_len, cfg.model.heads, cfg.model.layers, causal=True,
                                token_shift=cfg.model.token_shift)
        reach = theoretical_reach(params, seq_len, cfg.model.heads, cfg.model.layers, causal=True,
                                  token_shift=cfg.model.token_shift)
        common = {**base, "seq_len": seq_len, "theoretical_reach": reach}
        start = time.perf_counter()
        if cfg.task.name == "mqar":
            batches = held_out_batches(cfg.task, cfg.eval.sequences, cfg.eval.batch_size, seq_len,
                                       seed_stream(cfg.train.seed, f"eval/{seq_len}"))
            scores = evaluate(model, batches, device)
            reachable = items_reachable(field, scores.query_pos, scores.sources)
            for lo, hi in distance_buckets(list(cfg.eval.bucket_edges), seq_len - 1):
                select = (scores.distance >= lo) & (scores.distance <= hi)
                if select.any():
                    rows.append({**common, **_scored(scores, reachable, select), "distance_lo": lo,
                                 "distance_hi": hi, "eval_seconds": time.perf_counter() - start})
        else:
            for depth in cfg.eval.depths:
                batches = held_out_batches(cfg.task, cfg.eval.sequences, cfg.eval.batch_size, seq_len,
                                           seed_stream(cfg.train.seed, f"eval/{seq_len}/{depth}"), [depth])
                scores = evaluate(model, batches, device)
                reachable = items_reachable(field, scores.query_pos, scores.sources)
                select = torch.ones_like(scores.correct)
                distance = int(scores.distance[0])  # one depth in one context length is one distance
                rows.append({**common, **_scored(scores, reachable, select), "depth": float(depth),
                             "context_len": seq_len, "distance_lo": distance, "distance_hi": distance,
                             "eval_seconds": time.perf_counter() - start})
    return rows


def _scored(scores: ItemScores, reachable: torch.Tensor, select: torch.Tensor) -> dict[str, Any]:
    count = int(select.sum())
    return {"status": "ok", "reason": "", "count": count, "correct": int(scores.correct[select].sum()),
            "accuracy": float(scores.correct[select].float().mean()),
            "token_accuracy": float(scores.token_accuracy[select].mean()),
            "reachable_fraction": float(reachable[select].float().mean()), "eval_loss": scores.loss}


def _cfg_dict(cfg: Any, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """The config as a plain dict, without keys that do not change results (progress bars, thread counts)."""
    from dataclasses import asdict

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in drop}
        return value

    return clean(asdict(cfg))
