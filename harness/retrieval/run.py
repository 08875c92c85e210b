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
from .protocol import ceiling, select_lr
from .reach import (answers_visible, distance_buckets, items_reachable, items_split, one_layer_visible, params_of,
                    receptive_field, theoretical_reach)
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
    """Train TinyDecoders with `attention` on cfg.task, evaluate held-out sequences, write kind="retrieval" rows.

    The protocol (TrainConfig): every rate of train.lrs at the first seed, then train.seeds - 1 more seeds at the
    rate with the best validation accuracy (protocol.select_lr). Each training run is one config_hash, stored as
    soon as it is evaluated (resume=True skips it next time); the runs of one sweep share a sweep_id, from which the
    report picks the same rate again. MQAR rows: one per (run, eval seq_len, distance bucket). Passkey rows: one per
    (run, context length, depth). Every row carries accuracy (exact items), count, chance, reachable_fraction, the
    counts within reach / answer visible / beyond reach (reach.py), theoretical_reach and the training summary.
    """
    logger = logger or NullLogger()
    cfg = cfg if isinstance(cfg, RetrievalConfig) else RetrievalConfig.from_mapping(cfg)
    cfg.validate()
    attention = normalize_attention(attention)
    store.check_writable()
    sweep = {"retrieval": _cfg_dict(cfg, drop=("progress", "threads", "seeds")), **_identity(attention)}
    sweep_id = config_hash(sweep)
    device, dtype = torch.device(cfg.train.device), getattr(torch, cfg.train.dtype)
    base = {"kind": "retrieval", "task": cfg.task.name, "task_layout": _layout(cfg), **_attention_columns(attention),
            "train_seq_len": cfg.task.seq_len, "layers": cfg.model.layers, "d_model": cfg.model.d_model,
            "heads": cfg.model.heads, "token_shift": cfg.model.token_shift, "device": cfg.train.device,
            "dtype": cfg.train.dtype, "chance": chance_accuracy(cfg.task), "sweep_id": sweep_id,
            "lrs": json.dumps(list(cfg.train.lrs)), "seeds_requested": cfg.train.seeds}

    reasons = _training_unsupported(attention, device, dtype, cfg.model.d_model // cfg.model.heads)
    if reasons:
        identity = {**sweep, "lr": None, "seed": cfg.train.seed}
        rows = [{**base, **fingerprint(cfg.train.device), "config_hash": config_hash(identity),
                 "config": json.dumps(identity, sort_keys=True), "seed": cfg.train.seed, "status": "unsupported",
                 "reason": reasons, "backend": attention["backend"]}]
        store.append(rows)
        return pd.DataFrame(rows)

    seeds = cfg.train.seed_list()
    frames = [_train_and_evaluate(attention, cfg, sweep, base, lr, seeds[0], store, logger, resume)
              for lr in cfg.train.lrs]
    best = cfg.train.lrs[0]
    if len(cfg.train.lrs) > 1:
        runs = pd.concat(frames, ignore_index=True).drop_duplicates("config_hash")
        best = float(select_lr(runs[["sweep_id", "lr", "seed", "val_accuracy"]]).loc[sweep_id])
    frames += [_train_and_evaluate(attention, cfg, sweep, base, best, seed, store, logger, resume)
               for seed in seeds[1:]]
    return pd.concat(frames, ignore_index=True)


def _layout(cfg: RetrievalConfig) -> str:
    return cfg.task.layout if cfg.task.name == "mqar" else ""


def _train_and_evaluate(attention: dict[str, Any], cfg: RetrievalConfig, sweep: dict[str, Any],
                        base: dict[str, Any], lr: float, seed: int, store: ResultsStore, logger: Logger,
                        resume: bool) -> pd.DataFrame:
    """One training run (rate `lr`, seed `seed`) and its evaluation rows, appended to the store."""
    identity = {**sweep, "lr": lr, "seed": seed}
    run_hash = config_hash(identity)
    if resume and run_hash in store.done_hashes():
        frame = store.read_resumable()
        return frame[frame["config_hash"] == run_hash].reset_index(drop=True)
    device, dtype = torch.device(cfg.train.device), getattr(torch, cfg.train.dtype)
    base = {**base, "config_hash": run_hash, "config": json.dumps(identity, sort_keys=True), "lr": lr, "seed": seed}
    params = params_of(attention)
    previous_threads = torch.get_num_threads()
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    try:
        env = fingerprint(cfg.train.device)  # after set_num_threads, so env_threads is what ran
        val_batches = held_out_batches(cfg.task, cfg.train.val_sequences, cfg.eval.batch_size, cfg.task.seq_len,
                                       seed_stream(seed, "val"))
        field = receptive_field(params, cfg.task.seq_len, cfg.model.heads, cfg.model.layers, causal=True,
                                token_shift=cfg.model.token_shift, device=device)
        # The ceiling counts every item whose answer the query can see (key or not): an upper bound, so a run
        # never stops on it before it has learnt all it could.
        visible = torch.cat([answers_visible(field, b.item_query_pos, b.item_sources) for b in val_batches])
        val_ceiling = ceiling(float(visible.float().mean()), chance_accuracy(cfg.task))
        torch.manual_seed(seed)
        model = TinyDecoder(cfg.model, cfg.task.vocab_size(), attention).to(device=device, dtype=dtype)
        name = attention.get("name", attention["mechanism"])
        try:
            result = train_model(model, cfg, device, lr=lr, seed=seed, val_batches=val_batches,
                                 val_ceiling=val_ceiling, chance=chance_accuracy(cfg.task), logger=logger,
                                 description=f"{name} lr={lr:g} seed={seed}",
                                 curve_name=f"retrieval/{name}/lr={lr:g}/seed={seed}")
        except torch.OutOfMemoryError as error:
            rows = [{**base, **env, "status": "oom", "reason": str(error).splitlines()[0],
                     "backend": attention["backend"]}]
            store.append(rows)
            return pd.DataFrame(rows)
        base.update(env, backend=model.backends[0], **summarize(result, cfg.train.batch_size))
        if result.stop_reason == "nan":
            rows = [{**base, "status": "nan", "reason": f"training loss became non-finite at step {result.steps}"}]
        else:
            rows = _evaluation_rows(base, model, cfg, attention, device, seed)
    finally:
        torch.set_num_threads(previous_threads)
    store.append(rows)
    return pd.DataFrame(rows)


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
                     device: torch.device, seed: int) -> list[dict[str, Any]]:
    params = params_of(attention)
    rows = []
    for seq_len in cfg.eval.lengths(cfg.task):
        field = receptive_field(params, seq_len, cfg.model.heads, cfg.model.layers, causal=True,
                                token_shift=cfg.model.token_shift, device=device)
        reach = theoretical_reach(params, seq_len, cfg.model.heads, cfg.model.layers, causal=True,
                                  token_shift=cfg.model.token_shift, field=field)
        common = {**base, "seq_len": seq_len, "theoretical_reach": reach, "eval_set": "distance",
                  "eval_pairs": cfg.task.num_pairs if cfg.task.name == "mqar" else None}
        heads_visible = (one_layer_visible(params, seq_len, cfg.model.heads, causal=True)
                         if cfg.model.layers == 1 else None)
        start = time.perf_counter()

        def scored(batches: list) -> tuple[ItemScores, tuple[torch.Tensor, ...]]:
            scores = evaluate(model, batches, device)
            return scores, (items_reachable(field, scores.query_pos, scores.sources),
                            answers_visible(field, scores.query_pos, scores.sources), _split(heads_visible, scores))

        if cfg.task.name == "mqar":
            scores, classes = scored(held_out_batches(cfg.task, cfg.eval.sequences, cfg.eval.batch_size, seq_len,
                                                      seed_stream(seed, f"eval/{seq_len}")))
            for lo, hi in distance_buckets(list(cfg.eval.bucket_edges), seq_len - 1):
                select = (scores.distance >= lo) & (scores.distance <= hi)
                if select.any():
                    rows.append({**common, **_scored(scores, *classes, select), "distance_lo": lo,
                                 "distance_hi": hi, "eval_seconds": time.perf_counter() - start})
            if seq_len == cfg.task.seq_len:
                rows += _noise_rows(common, cfg, seq_len, seed, scored)
        else:
            for depth in cfg.eval.depths:
                scores, classes = scored(held_out_batches(cfg.task, cfg.eval.sequences, cfg.eval.batch_size,
                                                          seq_len, seed_stream(seed, f"eval/{seq_len}/{depth}"),
                                                          [depth]))
                distance = int(scores.distance[0])  # one depth in one context length is one distance
                rows.append({**common, **_scored(scores, *classes, torch.ones_like(scores.correct)),
                             "depth": float(depth), "context_len": seq_len, "distance_lo": distance,
                             "distance_hi": distance, "eval_seconds": time.perf_counter() - start})
    return rows


def _noise_rows(common: dict[str, Any], cfg: RetrievalConfig, seq_len: int, seed: int, scored) -> list[dict]:
    """One row per eval.noise_pairs count: every query at eval.noise_distance among that many pairs, so accuracy
    at a fixed distance can be read against the number of distractors in the field (eval_set="noise")."""
    rows = []
    for pairs in cfg.eval.noise_pairs:
        start = time.perf_counter()
        task = cfg.eval.noise_task(cfg.task, pairs)
        scores, classes = scored(held_out_batches(task, cfg.eval.sequences, cfg.eval.batch_size, seq_len,
                                                  seed_stream(seed, f"noise/{seq_len}/{pairs}")))
        distance = cfg.eval.noise_distance
        rows.append({**common, **_scored(scores, *classes, torch.ones_like(scores.correct)), "eval_set": "noise",
                     "eval_pairs": pairs, "distance_lo": distance, "distance_hi": distance,
                     "eval_seconds": time.perf_counter() - start})
    return rows


def _split(heads_visible: Optional[torch.Tensor], scores: ItemScores) -> torch.Tensor:
    if heads_visible is None:  # stacked layers: not defined (reach.items_split), no item counts as split
        return torch.zeros_like(scores.correct)
    return items_split(heads_visible, scores.query_pos, scores.sources)


def _scored(scores: ItemScores, reachable: torch.Tensor, visible: torch.Tensor, split: torch.Tensor,
            select: torch.Tensor) -> dict[str, Any]:
    """Accuracy of the selected items, and its split by what the pattern lets the query see: within reach (key
    and answer, no head cuts the pair), split (within reach, but a head sees the key without its answer:
    reach.items_split), answer only (the key out of sight: elimination can still pick it), beyond reach (no
    answer in sight). The four partition the items."""
    count = int(select.sum())
    out = {"status": "ok", "reason": "", "count": count, "correct": int(scores.correct[select].sum()),
           "accuracy": float(scores.correct[select].float().mean()),
           "token_accuracy": float(scores.token_accuracy[select].mean()),
           "reachable_fraction": float(reachable[select].float().mean()), "eval_loss": scores.loss}
    for part, members in (("within", reachable & ~split), ("split", reachable & split),
                          ("answer_only", visible & ~reachable), ("beyond", ~visible)):
        chosen = select & members
        out[f"{part}_count"] = int(chosen.sum())
        out[f"{part}_correct"] = int(scores.correct[chosen].sum())
    return out


def _cfg_dict(cfg: Any, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """The config as a plain dict, without keys that do not change results (progress bars, thread counts)."""
    from dataclasses import asdict

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in drop}
        return value

    return clean(asdict(cfg))
