"""Train a TinyDecoder on a retrieval task with AdamW, and score it item by item on held-out sequences.

Training draws a fresh batch every step from the training seed stream; validation and evaluation draw from
their own streams, so no held-out sequence is ever trained on. Training stops at the first of (TrainConfig):
the pattern's ceiling reached, a validation plateau, train.max_steps, the train.max_seconds safety cap; the
rules themselves are in protocol.py.
"""

from __future__ import annotations

import sys

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from harness.loggers import Logger, NullLogger

from .config import RetrievalConfig, TaskConfig
from .model import TinyDecoder
from .protocol import learning_floor, plateaued
from .tasks import IGNORE, RetrievalBatch, make_batch


def seed_stream(seed: int, purpose: str) -> random.Random:
    """An independent, platform-stable random stream per purpose ('train', 'val', 'eval/256', ...)."""
    return random.Random(f"{seed}/{purpose}")  # str seeds are hashed with SHA-512: stable across runs


@dataclass
class ItemScores:
    """One entry per scored item (an MQAR query, a passkey key) of a set of batches."""

    correct: torch.Tensor  # (I,) bool: every label of the item predicted right (greedy decoding would match)
    token_accuracy: torch.Tensor  # (I,) float: fraction of the item's labels predicted right
    distance: torch.Tensor  # (I,) int64
    query_pos: torch.Tensor  # (I,) int64
    sources: torch.Tensor  # (I, S) int64
    depth: torch.Tensor  # (I,) float (nan for MQAR)
    loss: float  # mean cross-entropy over the labels

    @property
    def accuracy(self) -> float:
        return float(self.correct.float().mean()) if len(self.correct) else float("nan")


def score_batch(logits_BNV: torch.Tensor, batch: RetrievalBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per item: (all labels right, fraction of labels right)."""
    labelled = batch.targets != IGNORE
    right = (logits_BNV.argmax(-1) == batch.targets)[labelled].float()
    item = batch.item[labelled]
    count = len(batch.item_query_pos)
    zeros = torch.zeros(count, device=right.device)
    hits = zeros.index_add(0, item, right)
    totals = zeros.index_add(0, item, torch.ones_like(right))
    return hits == totals, hits / totals


def labelled_loss(logits_BNV: torch.Tensor, batch: RetrievalBatch) -> torch.Tensor:
    return F.cross_entropy(logits_BNV.flatten(0, 1).float(), batch.targets.flatten(), ignore_index=IGNORE)


@torch.no_grad()
def evaluate(model: TinyDecoder, batches: Sequence[RetrievalBatch], device: torch.device) -> ItemScores:
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("correct", "token", "distance", "query", "sources",
                                                            "depth")}
    loss_sum, label_count = 0.0, 0
    for batch in batches:
        batch = batch.to(device)
        logits = model(batch.tokens)
        labels = int((batch.targets != IGNORE).sum())
        loss_sum += float(labelled_loss(logits, batch)) * labels
        label_count += labels
        correct, token = score_batch(logits, batch)
        for name, value in (("correct", correct), ("token", token), ("distance", batch.item_distance),
                            ("query", batch.item_query_pos), ("sources", batch.item_sources),
                            ("depth", batch.item_depth)):
            parts[name].append(value.cpu())
    model.train(was_training)
    cat = {name: torch.cat(values) for name, values in parts.items()}
    return ItemScores(cat["correct"], cat["token"], cat["distance"], cat["query"], cat["sources"], cat["depth"],
                      loss_sum / max(label_count, 1))


def held_out_batches(task: TaskConfig, sequences: int, batch_size: int, seq_len: int, rng: random.Random,
                     depths: Optional[Sequence[float]] = None) -> list[RetrievalBatch]:
    sizes = [min(batch_size, sequences - start) for start in range(0, sequences, batch_size)]
    return [make_batch(task, size, seq_len, rng, depths) for size in sizes]


@dataclass
class TrainResult:
    steps: int
    seconds: float
    stop_reason: str  # ceiling | plateau | max_steps | time_cap | nan
    final_loss: float
    train_accuracy: float  # on the last training batch
    val_accuracy: float  # on the validation set at the last check
    val_ceiling: float  # the most the pattern allows on the validation set
    plateaued: bool  # the plateau rule held at the last check (also when max_steps stopped the run)
    history: list[dict[str, float]] = field(default_factory=list)
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # (step, val accuracy, train loss)

    @property
    def converged(self) -> bool:
        return self.stop_reason == "ceiling" or (self.stop_reason != "nan" and self.plateaued)


def learning_rate(step: int, cfg: RetrievalConfig, lr: float) -> float:
    """Linear warmup to `lr`, then cosine decay to lr * min_lr_ratio at max_steps."""
    train = cfg.train
    if step < train.warmup_steps:
        return lr * (step + 1) / train.warmup_steps
    progress = (step - train.warmup_steps) / max(1, train.max_steps - train.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return lr * (train.min_lr_ratio + (1 - train.min_lr_ratio) * cosine)


def train_model(model: TinyDecoder, cfg: RetrievalConfig, device: torch.device, *, lr: float, seed: int,
                val_batches: Sequence[RetrievalBatch], val_ceiling: float = 1.0, chance: float = 0.0,
                logger: Optional[Logger] = None, description: str = "train",
                curve_name: str = "train") -> TrainResult:
    """Train in place at rate `lr` on seed `seed`'s stream; returns when a stopping rule holds (TrainConfig).

    val_ceiling: the most the pattern allows on `val_batches` (protocol.ceiling); reaching it within
    train.ceiling_margin stops the run; chance: the guessing accuracy, below whose neighbourhood a flat curve is a
    run that has not started, not a plateau. Each step's metrics go to the logger as the curve `curve_name`."""
    logger = logger or NullLogger()
    task, train = cfg.task, cfg.train
    train_rng = seed_stream(seed, "train")
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]  # norms and biases, as in nanoGPT
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": train.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))
    history: list[dict[str, float]] = []
    curve: list[tuple[int, float, float]] = []
    val_accuracy, loss_value, accuracy = float("nan"), float("nan"), float("nan")
    stop_reason, step, is_plateau = "max_steps", 0, False
    model.train()
    start = time.perf_counter()
    # In a log (no terminal) every redraw is a new line: redraw every 10 s there instead of ~10 times a second.
    interactive = sys.stderr.isatty()
    bar = tqdm(total=train.max_steps, desc=description, disable=not train.progress, leave=not interactive,
               dynamic_ncols=True, mininterval=0.1 if interactive else 10.0)
    try:
        for step in range(1, train.max_steps + 1):
            batch = make_batch(task, train.batch_size, task.seq_len, train_rng).to(device)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step - 1, cfg, lr)
            logits = model(batch.tokens)
            loss = labelled_loss(logits, batch)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                stop_reason = "nan"
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
            optimizer.step()
            accuracy = float(score_batch(logits.detach(), batch)[0].float().mean())
            metrics = {"train/loss": loss_value, "train/accuracy": accuracy, "train/lr": group["lr"]}
            if step % train.eval_every == 0 or step == train.max_steps:
                val_accuracy = evaluate(model, val_batches, device).accuracy
                metrics["val/accuracy"] = val_accuracy
                curve.append((step, val_accuracy, loss_value))
                is_plateau = step >= train.plateau_min_steps and plateaued(
                    [v for _, v, _ in curve], train.plateau_patience, train.plateau_min_delta,
                    floor=learning_floor(chance, val_ceiling, train.plateau_min_progress))
            metrics["train/seconds"] = time.perf_counter() - start
            logger.log_curve(curve_name, "step", step, metrics)
            history.append({"step": step, **metrics})
            # postfix first and without its own refresh, so redraws follow update()'s mininterval
            bar.set_postfix(loss=f"{loss_value:.3f}", acc=f"{accuracy:.2f}", val=f"{val_accuracy:.2f}", refresh=False)
            bar.update(1)
            if "val/accuracy" in metrics:
                if val_accuracy >= val_ceiling - train.ceiling_margin:
                    stop_reason = "ceiling"
                    break
                if is_plateau:
                    stop_reason = "plateau"
                    break
            if metrics["train/seconds"] >= train.max_seconds:
                stop_reason = "time_cap"
                break
    finally:
        bar.close()
    return TrainResult(step, time.perf_counter() - start, stop_reason, loss_value, accuracy, val_accuracy,
                       val_ceiling, is_plateau, history, curve)


def summarize(result: TrainResult, batch_size: int) -> dict[str, Any]:
    import json

    return {"train_steps": result.steps, "train_sequences": result.steps * batch_size,
            "train_seconds": result.seconds, "train_steps_per_s": result.steps / max(result.seconds, 1e-9),
            "train_stop": result.stop_reason, "converged": result.converged, "plateaued": result.plateaued,
            "train_final_loss": result.final_loss, "train_accuracy": result.train_accuracy,
            "val_accuracy": result.val_accuracy, "val_ceiling": result.val_ceiling,
            "learning_curve": json.dumps([[s, round(v, 5), round(l, 5)] for s, v, l in result.curve])}
