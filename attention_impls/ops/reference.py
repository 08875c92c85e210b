"""The float64 references as selectable backends, one per mechanism (small N only: they materialise N x N
scores). Registered for every mechanism by looping, so a new mechanism has its reference backend for free."""

from __future__ import annotations

import torch

from ..call import FEATURES, dropout_keep
from ..mechanisms import MECHANISMS, get_mechanism
from ..registry import AttentionBackend, register

_ALL_FLOATS = frozenset({torch.float64, torch.float32, torch.float16, torch.bfloat16})


class _Reference(AttentionBackend):
    name = "reference"
    description = "float64 oracle from the spec; O(N^2) memory"
    dtypes = _ALL_FLOATS

    def forward(self, q, k, v, causal):
        return get_mechanism(self.mechanism).reference(q, k, v, self.params, causal)

    def forward_call(self, q, k, v, call):
        keep = None
        if call.dropout_p > 0:  # drawn as the masked backend draws it: under one seed the two agree
            keep = dropout_keep((q.shape[0], q.shape[2], q.shape[1], k.shape[1]), call.dropout_p, q.device)
        return get_mechanism(self.mechanism).reference_call(q, k, v, self.params, call, keep)


for _mechanism in MECHANISMS:
    _name = "".join(part.title() for part in _mechanism.split("_")) + "Reference"
    # attention between unrelated sequences is defined for dense only (spec)
    _supports = frozenset(f for f in FEATURES if f != "cross" or _mechanism == "dense")
    register(type(_name, (_Reference,), {"mechanism": _mechanism, "supports": _supports, "__module__": __name__}))
