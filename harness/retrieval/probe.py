"""The training-free probe: can one attention layer move the value of the key at distance d to the query?

Built so the answer is exact, not statistical. Keys are cut into blocks of D = head_dim positions; in a probe
sequence for block b only that block's keys are non-zero, key j = e_(j - bD) (one-hot), its value the same
vector, every other key and value zero. Query p = (margin / scale) * e_c picks code c, so the only key that
matches is j = bD + c, with score `margin`; every other key scores exactly 0. If the pattern lets p see j, the
output's coordinate c is that key's softmax weight, at least e^m / (e^m + N) > 1/2; if not, no visible value has
a non-zero coordinate c, so it is 0. "Recovered" = coordinate c > 1/2. Sequence (b, s) gives query p the code
(p + s) mod D, so the ceil(N/D) * D sequences cover every (query, key) pair exactly once, for all heads at once.

The recovered set is compared with the spec's pattern (reach.one_layer_visible); any difference is a wrong row.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attention_impls import build
from attention_impls.registry import get_backend_class

from .config import ProbeConfig
from .reach import one_layer_visible, params_of


@dataclass
class ProbeResult:
    backend: str  # the backend that ran
    recovered: torch.Tensor  # (H, N, N) bool: head h's query p got key j's value
    spec: torch.Tensor  # (H, N, N) bool: the spec says head h's query p sees key j
    seconds: float

    @property
    def mismatches(self) -> torch.Tensor:
        return self.recovered != self.spec


def probe_unsupported_reasons(attention: dict, cfg: ProbeConfig) -> list[str]:
    """Why this variant's backend cannot run the probe here ([] when it can, or when picked automatically)."""
    if attention.get("backend") is None:
        return []
    cls = get_backend_class(attention["mechanism"], attention["backend"])
    return cls.not_supported_reasons(torch.device(cfg.device), getattr(torch, cfg.dtype), cfg.causal, False)


@torch.no_grad()
def probe_attention(attention: dict, cfg: ProbeConfig) -> ProbeResult:
    """Run the probe for one variant {mechanism, backend, params}; see the module docstring."""
    cfg.validate()
    params = params_of(attention)
    attn = build(attention["mechanism"], attention.get("backend"), **(attention.get("params") or {}))
    n, heads, dim = cfg.seq_len, cfg.heads, cfg.head_dim
    device, dtype = torch.device(cfg.device), getattr(torch, cfg.dtype)
    scale = params.scale if params.scale is not None else 1.0 / math.sqrt(dim)
    blocks = math.ceil(n / dim)
    positions = torch.arange(n, device=device)
    recovered = torch.zeros(heads, n, n, dtype=torch.bool, device=device)
    # Every probe sequence is one (block, shift) pair.
    sequences = [(b, s) for b in range(blocks) for s in range(dim)]
    start = time.perf_counter()
    for first in range(0, len(sequences), cfg.chunk):
        chunk = torch.tensor(sequences[first:first + cfg.chunk], device=device)  # (E, 2)
        block, shift = chunk[:, :1], chunk[:, 1:]  # (E, 1) each
        key_code = positions[None, :] - block * dim  # (E, N); outside [0, D) means "not in this block"
        in_block = (key_code >= 0) & (key_code < dim)
        kv = F.one_hot(key_code.clamp(0, dim - 1), dim).to(dtype) * in_block[..., None].to(dtype)  # (E, N, D)
        query_code = (positions[None, :] + shift) % dim  # (E, N)
        q = F.one_hot(query_code, dim).to(dtype) * (cfg.margin / scale)  # (E, N, D)
        q_ENHD, kv_ENHD = (x[:, :, None, :].expand(-1, -1, heads, -1).contiguous() for x in (q, kv))
        out_ENHD = attn(q_ENHD, kv_ENHD, kv_ENHD, causal=cfg.causal)
        index = query_code[:, :, None, None].expand(-1, -1, heads, 1)
        weight_ENH = out_ENHD.gather(-1, index).squeeze(-1).float()  # the target key's softmax weight
        target = block * dim + query_code  # (E, N) key position each query asks for
        exists = target < n
        e_idx, p_idx = exists.nonzero(as_tuple=True)
        j_idx = target[e_idx, p_idx]
        for h in range(heads):
            recovered[h, p_idx, j_idx] = weight_ENH[e_idx, p_idx, h] > 0.5
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    spec = one_layer_visible(params, n, heads, cfg.causal).to(device)
    return ProbeResult(attn.backend, recovered.cpu(), spec.cpu(), seconds)
