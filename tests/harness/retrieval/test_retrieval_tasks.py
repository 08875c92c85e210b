import random

import pytest
import torch

from harness.retrieval.config import TaskConfig
from harness.retrieval.tasks import (FILL, IGNORE, KEY_MARK, QUESTION, key_token, make_batch, mqar_batch,
                                     passkey_batch, value_token)

MQAR = TaskConfig(name="mqar", seq_len=96, num_pairs=10, num_queries=7, num_keys=24, num_values=20, min_gap=5,
                  max_gap=60)
PASSKEY = TaskConfig(name="passkey", seq_len=80, key_len=5, num_keys=10, filler_vocab=12)


def test_mqar_answer_is_where_the_config_says():
    batch = mqar_batch(MQAR, 16, 96, random.Random(0))
    keys = range(key_token(MQAR, 0), key_token(MQAR, MQAR.num_keys))
    assert len(batch.item_query_pos) == 16 * 7  # every sequence has exactly num_queries items
    for i in range(len(batch.item_query_pos)):
        row = int((batch.item == i).nonzero()[0, 0])
        query = int(batch.item_query_pos[i])
        key_pos, value_pos = (int(p) for p in batch.item_sources[i])
        gap = int(batch.item_distance[i])
        assert value_pos == key_pos + 1 and query - key_pos == gap and 5 <= gap <= 60
        assert batch.tokens[row, query] == batch.tokens[row, key_pos]  # the query repeats the pair's key
        assert int(batch.tokens[row, key_pos]) in keys
        assert batch.targets[row, query] == batch.tokens[row, value_pos]  # and is labelled with its value
    for row in range(16):
        # Each key appears once as a pair and at most once more as its query; nothing else is labelled.
        labelled = batch.targets[row] != IGNORE
        assert int(labelled.sum()) == 7
        assert torch.equal(labelled, batch.item[row] >= 0)
        tokens = batch.tokens[row].tolist()
        assert sum(t in keys for t in tokens) == 10 + 7
        assert sum(value_token(MQAR, 0) <= t < value_token(MQAR, MQAR.num_values) for t in tokens) == 10
        assert tokens.count(FILL) == 96 - 27


def test_mqar_gaps_cover_the_requested_range():
    batch = mqar_batch(MQAR, 64, 96, random.Random(1))
    assert int(batch.item_distance.min()) <= 8 and int(batch.item_distance.max()) >= 56


@pytest.mark.parametrize("depth", [0.0, 0.3, 1.0])
def test_passkey_key_at_depth_and_labels_only_on_the_answer(depth):
    batch = passkey_batch(PASSKEY, 4, 80, random.Random(0), depths=[depth])
    question = 80 - 5
    start = round(depth * (question - 6))
    for row in range(4):
        tokens = batch.tokens[row]
        assert tokens[start] == KEY_MARK and tokens[question] == QUESTION
        assert int((tokens == KEY_MARK).sum()) == 1 and int((tokens == QUESTION).sum()) == 1
        key = tokens[start + 1:start + 6]
        assert torch.equal(batch.targets[row, question:], key)  # the model must produce the key
        assert torch.equal(tokens[question + 1:], key[:-1])  # teacher forcing
        assert bool((batch.targets[row, :question] == IGNORE).all())
    assert bool((batch.item_distance == question - start).all())
    if depth == 1.0:
        assert start + 6 == question  # the key block ends right before the question


def test_same_seed_same_data_other_seed_other_data():
    for task, n in ((MQAR, 96), (PASSKEY, 80)):
        a, b = (make_batch(task, 8, n, random.Random(5)) for _ in range(2))
        c = make_batch(task, 8, n, random.Random(6))
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.targets, b.targets)
        assert not torch.equal(a.tokens, c.tokens)


def test_generators_reject_lengths_the_task_does_not_fit():
    with pytest.raises(ValueError, match="key_len=5 is too long for context_len=10"):
        passkey_batch(PASSKEY, 1, 10, random.Random(0))
    with pytest.raises(ValueError, match="more than fit in seq_len=40"):
        mqar_batch(MQAR, 1, 40, random.Random(0))
