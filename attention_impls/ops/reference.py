"""The float64 references as selectable backends, one per mechanism (small N only: they materialise N x N
scores). Registered for every mechanism by looping, so a new mechanism has its reference backend for free."""

from __future__ import annotations

import torch

from ..mechanisms import MECHANISMS, get_mechanism
from ..registry import AttentionBackend, register

_ALL_FLOATS = frozenset({torch.float64, torch.float32, torch.float16, torch.bfloat16})


class _Reference(AttentionBackend):
    name = "reference"
    description = "float64 oracle from the spec; O(N^2) memory"
    dtypes = _ALL_FLOATS

    def forward(self, q, k, v, causal):
        return get_mechanism(self.mechanism).reference(q, k, v, self.params, causal)


for _mechanism in MECHANISMS:
    _name = "".join(part.title() for part in _mechanism.split("_")) + "Reference"
    register(type(_name, (_Reference,), {"mechanism": _mechanism, "__module__": __name__}))
