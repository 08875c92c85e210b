"""FLOPs of a point: the spec's useful count (attention_impls.patterns) and what the backend executes.

Useful: 4 * head_dim * (query, key) pairs scored, counted exactly from the pattern (a pair seen by c dilated
branches counts c times); forward+backward is 3.5x forward (flash-attn's convention). Executed: the same formula
over the pairs the backend actually scores (whole tiles of a block mask, a dense N x N mask), when it scores more.
A decoding step (one query at position N - 1 against N keys) counts the pairs of that one query; what a backend
executes for it is not modelled (NaN).
"""

from __future__ import annotations

import torch

from attention_impls import make_params
from attention_impls.mechanisms import get_mechanism
from attention_impls.patterns import BACKWARD_FLOP_FACTOR, useful_flops
from attention_impls.registry import get_backend_class


def point_flops(mechanism: str, backend: str, params: dict, batch: int, seq_len: int, heads: int,
                head_dim: int, causal: bool, backward: bool, device: str = "cpu",
                decode: bool = False) -> dict[str, float]:
    """{"useful_flops", "executed_flops"} for one call (forward, or forward+backward, or one decoding step) on
    `device`."""
    spec_params = make_params(mechanism, **params)
    if decode:
        count = get_mechanism(mechanism).multiplicity(spec_params, seq_len, heads, causal)(
            torch.tensor(seq_len - 1), torch.arange(seq_len)[None], torch.arange(heads)[:, None])
        return {"useful_flops": 4.0 * head_dim * batch * float(count.sum()), "executed_flops": float("nan")}
    useful = useful_flops(spec_params, batch, seq_len, heads, head_dim, causal, backward=backward)
    instance = get_backend_class(mechanism, backend)(spec_params)
    pairs = instance.executed_pairs(seq_len, heads, causal, device=device)
    if pairs is None:
        executed = useful
    else:
        if backward:
            pairs += BACKWARD_FLOP_FACTOR * instance.executed_pairs(seq_len, heads, causal, device=device,
                                                                    backward=True)
        executed = 4.0 * head_dim * batch * pairs
    return {"useful_flops": useful, "executed_flops": executed}
