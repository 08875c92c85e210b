"""Synthetic retrieval tasks, generated on the fly from a seed: multi-query associative recall and passkey.

Every batch is next-token prediction with labels only where the answer is due (elsewhere IGNORE), plus a small
table of *items*, the unit that is scored: one query for MQAR, one whole key for passkey. For each item we keep
where its first label sits (the query position), which earlier positions hold what it needs (its sources), and
its distance, query position minus the earliest source, so accuracy can be resolved by distance and compared
with what each attention pattern can reach (reach.py).

Token ids (one vocabulary for both tasks):
    0 FILL (MQAR filler), 1 KEY_MARK (passkey: "the key follows"), 2 QUESTION (passkey: "now say the key"),
    then task.num_keys key tokens, task.num_values value tokens, task.filler_vocab passkey filler tokens.

Sampling uses `random.Random(seed)`, whose sequence is fixed across platforms and Python versions, so one seed
gives the same data everywhere.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .config import TaskConfig

FILL, KEY_MARK, QUESTION = 0, 1, 2
IGNORE = -100  # cross_entropy's ignore_index
_PLACEMENT_TRIES = 200


def key_token(task: TaskConfig, index: int) -> int:
    return 3 + index


def value_token(task: TaskConfig, index: int) -> int:
    return 3 + task.num_keys + index


def filler_token(task: TaskConfig, index: int) -> int:
    return 3 + task.num_keys + task.num_values + index


@dataclass
class RetrievalBatch:
    tokens: torch.Tensor  # (B, N) int64 inputs
    targets: torch.Tensor  # (B, N) int64 next-token labels, IGNORE where nothing is asked
    item: torch.Tensor  # (B, N) int64 index of the item each label belongs to, -1 where unlabeled
    item_query_pos: torch.Tensor  # (I,) position of the item's first label (the query / the question)
    item_sources: torch.Tensor  # (I, S) positions the answer needs (key and value; marker and key), -1 padded
    item_distance: torch.Tensor  # (I,) query position - earliest source position
    item_depth: torch.Tensor  # (I,) float, passkey depth in [0, 1]; nan for MQAR

    @property
    def seq_len(self) -> int:
        return self.tokens.shape[1]

    def to(self, device: torch.device | str) -> "RetrievalBatch":
        return RetrievalBatch(*(getattr(self, name).to(device) for name in self.__dataclass_fields__))


def mqar_batch(task: TaskConfig, batch_size: int, seq_len: int, rng: random.Random) -> RetrievalBatch:
    """`batch_size` MQAR sequences of `seq_len` tokens.

    Layout of one sequence (g = the drawn gap): ... k v ... k? ... where `k v` is a pair at positions (t, t+1) and
    `k?` is the query at t + g, labelled with v. Keys are distinct within a sequence; values are drawn with
    replacement (chance = 1 / num_values). Unqueried pairs are distractors.
    """
    task.validate(seq_len, where="seq_len")
    if task.name != "mqar":
        raise ValueError(f"mqar_batch needs task.name='mqar', got {task.name!r}")
    min_gap, max_gap = task.gap_range(seq_len)
    tokens = torch.full((batch_size, seq_len), FILL, dtype=torch.long)
    targets = torch.full((batch_size, seq_len), IGNORE, dtype=torch.long)
    item = torch.full((batch_size, seq_len), -1, dtype=torch.long)
    query_pos, sources, distance = [], [], []
    for row in range(batch_size):
        layout = _mqar_layout(task, seq_len, min_gap, max_gap, rng)
        for key_pos, key, value, gap in layout:
            tokens[row, key_pos] = key_token(task, key)
            tokens[row, key_pos + 1] = value_token(task, value)
            if gap is not None:
                query = key_pos + gap
                tokens[row, query] = key_token(task, key)
                targets[row, query] = value_token(task, value)
                item[row, query] = len(query_pos)
                query_pos.append(query)
                sources.append((key_pos, key_pos + 1))
                distance.append(gap)
    count = len(query_pos)
    return RetrievalBatch(tokens, targets, item, torch.tensor(query_pos, dtype=torch.long),
                          torch.tensor(sources, dtype=torch.long).reshape(count, 2),
                          torch.tensor(distance, dtype=torch.long), torch.full((count,), float("nan")))


def _mqar_layout(task: TaskConfig, seq_len: int, min_gap: int, max_gap: int,
                 rng: random.Random) -> list[tuple[int, int, int, Optional[int]]]:
    """[(key position, key index, value index, gap or None if unqueried)], items in query-position order."""
    for _ in range(_PLACEMENT_TRIES):
        taken = bytearray(seq_len)
        keys = rng.sample(range(task.num_keys), task.num_pairs)
        values = [rng.randrange(task.num_values) for _ in keys]
        layout = []
        for i, (key, value) in enumerate(zip(keys, values)):
            queried = i < task.queries()
            for _ in range(_PLACEMENT_TRIES):
                gap = rng.randint(min_gap, max_gap) if queried else None
                key_pos = rng.randrange(seq_len - (gap if queried else 1))
                cells = (key_pos, key_pos + 1, key_pos + gap) if queried else (key_pos, key_pos + 1)
                if not any(taken[c] for c in cells):
                    for c in cells:
                        taken[c] = 1
                    layout.append((key_pos, key, value, gap))
                    break
            else:
                break  # this pair found no room; start the sequence over
        if len(layout) == task.num_pairs:
            # Items are numbered in order of their query position, so item ids read left to right.
            return sorted(layout, key=lambda e: (e[3] is None, e[0] + (e[3] or 0)))
    raise RuntimeError(f"could not place {task.num_pairs} pairs with gaps in [{min_gap}, {max_gap}] in "
                       f"seq_len={seq_len} after {_PLACEMENT_TRIES} tries; use fewer pairs or a longer sequence")


def passkey_batch(task: TaskConfig, batch_size: int, context_len: int, rng: random.Random,
                  depths: Optional[Sequence[float]] = None) -> RetrievalBatch:
    """`batch_size` passkey contexts of `context_len` tokens; depth per row from `depths` (cycled) or uniform.

    Layout: filler ... KEY_MARK k1..kK ... filler QUESTION k1..k(K-1), labels k1..kK on QUESTION..k(K-1). The key
    block starts at round(depth * (H - K - 1)) with H = context_len - K the length before the question, so depth 0
    is the first token and depth 1 ends the key block right before the question.
    """
    task.validate(context_len, where="context_len")
    if task.name != "passkey":
        raise ValueError(f"passkey_batch needs task.name='passkey', got {task.name!r}")
    for depth in depths or ():
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"depth={depth!r} is outside [0, 1]")
    key_len = task.key_len
    question = context_len - key_len
    span = question - (key_len + 1)
    tokens = torch.empty((batch_size, context_len), dtype=torch.long)
    targets = torch.full((batch_size, context_len), IGNORE, dtype=torch.long)
    item = torch.full((batch_size, context_len), -1, dtype=torch.long)
    starts, depth_used = [], []
    for row in range(batch_size):
        depth = depths[row % len(depths)] if depths else rng.random()
        start = round(depth * span)
        filler = [filler_token(task, rng.randrange(task.filler_vocab)) for _ in range(context_len)]
        key = [key_token(task, rng.randrange(task.num_keys)) for _ in range(key_len)]
        filler[start] = KEY_MARK
        filler[start + 1:start + 1 + key_len] = key
        filler[question] = QUESTION
        filler[question + 1:] = key[:-1]  # teacher-forced answer; its last token is only a label
        tokens[row] = torch.tensor(filler)
        targets[row, question:] = torch.tensor(key)
        item[row, question:] = row
        starts.append(start)
        depth_used.append(float(depth))
    start_t = torch.tensor(starts, dtype=torch.long)
    return RetrievalBatch(tokens, targets, item, torch.full((batch_size,), question, dtype=torch.long),
                          start_t[:, None] + torch.arange(key_len + 1), question - start_t,
                          torch.tensor(depth_used))


def make_batch(task: TaskConfig, batch_size: int, seq_len: int, rng: random.Random,
               depths: Optional[Sequence[float]] = None) -> RetrievalBatch:
    if task.name == "mqar":
        return mqar_batch(task, batch_size, seq_len, rng)
    return passkey_batch(task, batch_size, seq_len, rng, depths)


def chance_accuracy(task: TaskConfig) -> float:
    """Accuracy of guessing uniformly: one value for MQAR, every key token for passkey."""
    return 1.0 / task.num_values if task.name == "mqar" else (1.0 / task.num_keys) ** task.key_len
