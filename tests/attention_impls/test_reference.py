"""The references themselves, checked against the spec's other formulations."""

import math

import torch
import torch.nn.functional as F

from attention_impls import make_params, reference


def _qkv(b, n, h, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, n, h, d, generator=g, dtype=torch.float64) for _ in range(3)]


def test_dense_and_sliding_window_references_equal_sdpa_with_a_mask():
    q, k, v = _qkv(2, 11, 3, 5)
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    for causal in (False, True):
        expected = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal).transpose(1, 2)
        torch.testing.assert_close(reference.dense(q, k, v, make_params("dense"), causal), expected)
    p = torch.arange(11)
    band = (p[None] >= p[:, None] - 2) & (p[None] <= p[:, None] + 4)
    expected = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=band).transpose(1, 2)
    got = reference.sliding_window(q, k, v, make_params("sliding_window", window=[2, 4]), causal=False)
    torch.testing.assert_close(got, expected)


def _mixture_of_branches(q, k, v, segments, rates, causal):
    """The paper's form: per-branch softmax outputs O_i mixed with weights alpha_i = S_i / sum_j S_j, by loops."""
    b, n, h, d = q.shape
    out = torch.zeros_like(q)
    for bi in range(b):
        for head in range(h):
            for p in range(n):
                outputs, denominators = [], []
                for w, r in zip(segments, rates):
                    w = min(w, n)
                    o = head % r
                    if (p % w) % r != o:
                        continue
                    keys = [j for j in range(n) if j // w == p // w and (j % w) % r == o and (not causal or j <= p)]
                    scores = torch.stack([q[bi, p, head] @ k[bi, j, head] / math.sqrt(d) for j in keys])
                    weights = torch.exp(scores)
                    denominators.append(weights.sum())
                    outputs.append((weights[:, None] * v[bi, keys, head]).sum(0) / weights.sum())
                total = sum(denominators)
                out[bi, p, head] = sum(s / total * o for s, o in zip(denominators, outputs))
    return out


def test_dilated_reference_equals_the_papers_mixture_of_branches():
    segments, rates = [4, 6, 16], [1, 2, 3]
    params = make_params("dilated", segment_lengths=segments, dilation_rates=rates)
    q, k, v = _qkv(1, 14, 4, 3, seed=1)
    for causal in (False, True):
        expected = _mixture_of_branches(q, k, v, segments, rates, causal)
        torch.testing.assert_close(reference.dilated(q, k, v, params, causal), expected)
