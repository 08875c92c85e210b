import random

import pytest
import torch

from harness.retrieval.config import TaskConfig
from harness.retrieval.tasks import (FILL, IGNORE, KEY_MARK, QUESTION, key_token, make_batch, mqar_batch,
                                     passkey_batch, value_token)

MQAR = TaskConfig(name="mqar", layout="interleaved", seq_len=96, num_pairs=10, num_queries=7, num_keys=24, num_values=20, min_gap=5,
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


def test_mqar_log_uniform_gaps_fill_every_octave_alike():
    task = TaskConfig(name="mqar", layout="interleaved", seq_len=512, num_pairs=8, num_keys=16, num_values=16,
                      gap_distribution="log_uniform")
    gaps = mqar_batch(task, 500, 512, random.Random(2)).item_distance
    assert int(gaps.min()) >= 2 and int(gaps.max()) <= 511
    # [2, 4), [4, 8), ..., [256, 512): eight octaves, each 1/8 of the gaps (uniform gaps: [256, 512) holds half)
    shares = [float(((gaps >= 2 ** e) & (gaps < 2 ** (e + 1))).float().mean()) for e in range(1, 9)]
    assert all(0.10 <= share <= 0.15 for share in shares), shares


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


ZOOLOGY = TaskConfig(name="mqar", layout="zoology", seq_len=64, num_pairs=8, num_keys=20, num_values=24)


def test_zoology_layout_pairs_first_split_vocabularies_no_repeated_value():
    batch = mqar_batch(ZOOLOGY, 32, 64, random.Random(0))
    pairs = ZOOLOGY.num_pairs
    keys = range(key_token(ZOOLOGY, 0), key_token(ZOOLOGY, ZOOLOGY.num_keys))
    values = range(value_token(ZOOLOGY, 0), value_token(ZOOLOGY, ZOOLOGY.num_values))
    assert len(batch.item_query_pos) == 32 * pairs  # every pair is queried once
    for row in range(32):
        tokens = batch.tokens[row].tolist()
        context_keys, context_values = tokens[0:2 * pairs:2], tokens[1:2 * pairs:2]
        assert all(k in keys for k in context_keys) and all(v in values for v in context_values)
        assert len(set(context_keys)) == pairs and len(set(context_values)) == pairs  # no repeats
        labelled = (batch.targets[row] != IGNORE).nonzero().flatten().tolist()
        assert len(labelled) == pairs and torch.equal(batch.targets[row] != IGNORE, batch.item[row] >= 0)
        for query in labelled:
            # Queries sit at even offsets after the pairs, repeat one context key and are labelled with its value.
            assert query >= 2 * pairs and (query - 2 * pairs) % 2 == 0
            j = context_keys.index(tokens[query])
            assert batch.targets[row, query] == context_values[j]
        # Every other position is a random key, value or FILL token (zoology's random_non_queries).
        allowed = {FILL, *keys, *values}
        assert set(tokens) <= allowed
    for i in range(len(batch.item_query_pos)):
        key_pos, value_pos = (int(p) for p in batch.item_sources[i])
        assert key_pos % 2 == 0 and value_pos == key_pos + 1 and key_pos < 2 * pairs
        assert int(batch.item_distance[i]) == int(batch.item_query_pos[i]) - key_pos


def test_zoology_query_slots_follow_the_power_law():
    import math

    task = TaskConfig(name="mqar", layout="zoology", seq_len=128, num_pairs=4, num_keys=8, num_values=8)
    batch = mqar_batch(task, 2000, 128, random.Random(3))
    slots = ((batch.item_query_pos - 2 * task.num_pairs) // 2).tolist()
    space = (128 - 2 * task.num_pairs) // 2
    counts = torch.bincount(torch.tensor(slots), minlength=space).float()
    # power_a = 0.01: weight (g + 1)^(-0.99), so slot 0 is drawn far more often than slot 9, and slot 9 more than 59.
    assert counts[0] > 3 * counts[9] > 0 and counts[9] > counts[50:].mean()
    # The first slot's share against the exact without-replacement inclusion probability is hard to state in
    # closed form; its single-draw probability bounds it from below.
    weights = [(g + 1) ** (task.power_a - 1) for g in range(space)]
    assert counts[0] / 2000 >= weights[0] / sum(weights)
    uniform = TaskConfig(name="mqar", layout="zoology", seq_len=128, num_pairs=4, num_keys=8, num_values=8,
                         power_a=1.0)
    flat = mqar_batch(uniform, 2000, 128, random.Random(3))
    flat_counts = torch.bincount(((flat.item_query_pos - 8) // 2), minlength=space).float()
    assert math.isclose(float(flat_counts.mean()), 2000 * 4 / space, rel_tol=1e-5)
    # uniform: the spread of the counts is that of binomial noise (sd about sqrt(mean)), not of a power law
    assert float(flat_counts.std()) < 1.5 * math.sqrt(float(flat_counts.mean()))


def test_zoology_fill_can_be_plain():
    task = TaskConfig(name="mqar", layout="zoology", seq_len=64, num_pairs=8, num_keys=16, num_values=16,
                      random_non_queries=False)
    batch = mqar_batch(task, 4, 64, random.Random(0))
    assert int((batch.tokens == FILL).sum()) == 4 * (64 - 3 * 8)


def test_same_seed_same_batch():
    one = mqar_batch(ZOOLOGY, 8, 64, random.Random(5))
    two = mqar_batch(ZOOLOGY, 8, 64, random.Random(5))
    assert torch.equal(one.tokens, two.tokens) and torch.equal(one.targets, two.targets)
