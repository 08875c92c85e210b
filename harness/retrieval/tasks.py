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

import math
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
    """`batch_size` MQAR sequences of `seq_len` tokens in the task's layout (zoology or interleaved)."""
    task.validate(seq_len, where="seq_len")
    if task.name != "mqar":
        raise ValueError(f"mqar_batch needs task.name='mqar', got {task.name!r}")
    if task.layout == "zoology":
        return zoology_mqar_batch(task, batch_size, seq_len, rng)
    return interleaved_mqar_batch(task, batch_size, seq_len, rng)


def zoology_query_slot_weights(task: TaskConfig, seq_len: int) -> torch.Tensor:
    """(space,) float64: weight of query slot g (position 2 * num_pairs + 2g), (g + 1)^(power_a - 1) as zoology."""
    space = (seq_len - 2 * task.num_pairs) // 2
    return torch.arange(1, space + 1, dtype=torch.float64) ** (task.power_a - 1.0)


def zoology_mqar_batch(task: TaskConfig, batch_size: int, seq_len: int, rng: random.Random) -> RetrievalBatch:
    """HazyResearch/zoology's MQAR (zoology/data/multiquery_ar.py), re-implemented on this module's seed stream.

    Layout of one sequence with P = num_pairs: k1 v1 k2 v2 ... kP vP, then the queries: key j at position
    2P + 2 g_j, labelled with v_j, where the slots g_1..g_P are drawn without replacement with weights
    (g + 1)^(power_a - 1) (Efraimidis-Spirakis: the P largest u^(1/w)). Keys and values are distinct within a
    sequence (chance = 1 / num_values); every other position holds a token drawn
    uniformly from FILL, the keys and the values (`random_non_queries`, as zoology's fill from the whole vocabulary)
    or FILL. Scored as zoology scores it: one label per query, accuracy = correct labels / labels.
    """
    pairs = task.num_pairs
    weights = zoology_query_slot_weights(task, seq_len)
    space = len(weights)
    fill_vocab = [FILL, *range(key_token(task, 0), value_token(task, task.num_values))]
    tokens = torch.full((batch_size, seq_len), FILL, dtype=torch.long)
    targets = torch.full((batch_size, seq_len), IGNORE, dtype=torch.long)
    item = torch.full((batch_size, seq_len), -1, dtype=torch.long)
    query_pos, sources = [], []
    for row in range(batch_size):
        keys = rng.sample(range(task.num_keys), pairs)
        values = rng.sample(range(task.num_values), pairs)
        uniform = torch.tensor([rng.random() for _ in range(space)], dtype=torch.float64).clamp_min(1e-300)
        slots = torch.topk(uniform.log() / weights, pairs).indices.tolist()  # in draw order, as sequential sampling
        if task.random_non_queries:
            tokens[row] = torch.tensor([fill_vocab[rng.randrange(len(fill_vocab))] for _ in range(seq_len)])
        queries = []
        for j, (key, value, slot) in enumerate(zip(keys, values, slots)):
            tokens[row, 2 * j] = key_token(task, key)
            tokens[row, 2 * j + 1] = value_token(task, value)
            query = 2 * pairs + 2 * slot
            tokens[row, query] = key_token(task, key)
            targets[row, query] = value_token(task, value)
            queries.append((query, j))
        for query, j in sorted(queries):  # item ids read left to right
            item[row, query] = len(query_pos)
            query_pos.append(query)
            sources.append((2 * j, 2 * j + 1))
    count = len(query_pos)
    query_t = torch.tensor(query_pos, dtype=torch.long)
    sources_t = torch.tensor(sources, dtype=torch.long).reshape(count, 2)
    return RetrievalBatch(tokens, targets, item, query_t, sources_t, query_t - sources_t[:, 0],
                          torch.full((count,), float("nan")))


def interleaved_mqar_batch(task: TaskConfig, batch_size: int, seq_len: int, rng: random.Random) -> RetrievalBatch:
    """This project's first MQAR layout: pairs scattered over FILL, queries interleaved with them.

    Layout of one sequence (g = the drawn gap, `task.gap_distribution`): ... k v ... k? ... where `k v` is a pair
    at positions (t, t+1) and `k?` is the query at t + g, labelled with v. Keys are distinct within a sequence; values are drawn with
    replacement (chance = 1 / num_values). Unqueried pairs are distractors.
    """
    min_gap, max_gap = task.gap_range(seq_len)
    tokens = torch.full((batch_size, seq_len), FILL, dtype=torch.long)
    targets = torch.full((batch_size, seq_len), IGNORE, dtype=torch.long)
    item = torch.full((batch_size, seq_len), -1, dtype=torch.long)
    query_pos, sources, distance = [], [], []
    # every cell gathered first and written in one indexed store: a tensor write per cell took 40 % of a step
    cells, query_rows, answers = [], [], []
    for row in range(batch_size):
        layout = _mqar_layout(task, seq_len, min_gap, max_gap, rng)
        for key_pos, key, value, gap in layout:
            cells += [(row, key_pos, key_token(task, key)), (row, key_pos + 1, value_token(task, value))]
            if gap is not None:
                query = key_pos + gap
                cells.append((row, query, key_token(task, key)))
                query_rows.append(row)
                answers.append(value_token(task, value))
                query_pos.append(query)
                sources.append((key_pos, key_pos + 1))
                distance.append(gap)
    count = len(query_pos)
    if cells:
        rows, positions, values = torch.tensor(cells, dtype=torch.long).unbind(1)
        tokens[rows, positions] = values
    if count:
        rows, positions = torch.tensor(query_rows), torch.tensor(query_pos)
        targets[rows, positions] = torch.tensor(answers)
        item[rows, positions] = torch.arange(count)
    return RetrievalBatch(tokens, targets, item, torch.tensor(query_pos, dtype=torch.long),
                          torch.tensor(sources, dtype=torch.long).reshape(count, 2),
                          torch.tensor(distance, dtype=torch.long), torch.full((count,), float("nan")))


def _draw_gap(distribution: str, min_gap: int, max_gap: int, rng: random.Random) -> int:
    if distribution == "uniform":
        return rng.randint(min_gap, max_gap)
    # log-uniform over the integers: floor(exp(u)), u uniform on [ln min_gap, ln(max_gap + 1)).
    gap = int(math.exp(rng.uniform(math.log(min_gap), math.log(max_gap + 1))))
    return min(max(gap, min_gap), max_gap)


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
                gap = _draw_gap(task.gap_distribution, min_gap, max_gap, rng) if queried else None
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
    """Accuracy of guessing uniformly: one value for MQAR, every key token for passkey.

    MQAR's zoology layout repeats no value, so a model that tracks which values it has seen answered could do a
    little better on late queries; 1 / num_values is the guess that uses nothing of the sequence."""
    return 1.0 / task.num_values if task.name == "mqar" else (1.0 / task.num_keys) ** task.key_len
