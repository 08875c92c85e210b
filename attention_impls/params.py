"""Parameters of each attention mechanism, validated once, at build time.

Every check names the parameter, the value and what is allowed, so a user mistake never surfaces as a
traceback from deep inside a kernel. Each mechanism owns its parameters (attention_impls/mechanisms/); this
module gathers the names the rest of the library imports. The semantics follow ../shared/spec/attention.md.
"""

from __future__ import annotations

from typing import Any

from .mechanisms import MECHANISMS, check_mechanism, get_mechanism, make_params
from .mechanisms.base import suggest
from .mechanisms.dense import DenseParams
from .mechanisms.dilated import HEAD_OFFSETS, DilatedParams, check_dilated_coverage
from .mechanisms.sliding_window import SlidingWindowParams

# Any mechanism's parameter object (each is a frozen dataclass with a `mechanism` name and a `scale`).
AttentionParams = Any

__all__ = ["AttentionParams", "DenseParams", "DilatedParams", "HEAD_OFFSETS", "MECHANISMS", "SlidingWindowParams",
           "check_dilated_coverage", "check_mechanism", "get_mechanism", "make_params", "suggest"]
