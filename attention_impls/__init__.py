"""Dense, sliding-window and LongNet dilated attention, several backends each, one float64 reference.

    attn = attention_impls.build("dilated", segment_lengths=[2048, 4096], dilation_rates=[1, 2])
    out = attn(q, k, v, causal=True)       # q, k, v: (batch, seq, heads, head_dim)
    attn.backend                            # which backend ran
    attention_impls.backends("dilated")     # every backend, whether it runs here, and why not

Sequence-parallel versions over torch.distributed live in `attention_impls.distributed`.
"""

from .module import MultiheadAttention
from .params import MECHANISMS, DenseParams, DilatedParams, SlidingWindowParams, make_params
from .patterns import useful_flops, useful_pairs
from .registry import Attention, AttentionBackend, BackendInfo, backends, build
from . import ops  # noqa: E402,F401  (importing registers every backend)

__all__ = [
    "MECHANISMS",
    "Attention",
    "AttentionBackend",
    "BackendInfo",
    "DenseParams",
    "DilatedParams",
    "MultiheadAttention",
    "SlidingWindowParams",
    "backends",
    "build",
    "make_params",
    "useful_flops",
    "useful_pairs",
]
