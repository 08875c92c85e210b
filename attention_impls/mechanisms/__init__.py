"""Every attention mechanism, by name: one module each (its parameters, visibility rule, pair count, reach,
float64 reference, report label and test strategy; see base.Mechanism).

Adding a mechanism: write `mechanisms/<name>.py` ending in `MECHANISM = <YourMechanism>()`, add its module to
`_MODULES` below, and add its backends under `ops/` (one file each; every module there is imported, and its
`attention=<mechanism>_<backend>` config node is generated from the registry).
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import IndexFn, Mechanism, suggest

# Report order (dense first) and the order of ai.MECHANISMS.
_MODULES = ("dense", "sliding_window", "dilated", "longformer")

REGISTRY: dict[str, Mechanism] = {}
for _module in _MODULES:
    _mechanism = importlib.import_module(f"{__name__}.{_module}").MECHANISM
    REGISTRY[_mechanism.name] = _mechanism

MECHANISMS: tuple[str, ...] = tuple(REGISTRY)


def check_mechanism(mechanism: Any) -> str:
    if not isinstance(mechanism, str) or mechanism not in REGISTRY:
        hint = suggest(mechanism, MECHANISMS) if isinstance(mechanism, str) else ""
        raise ValueError(f"mechanism={mechanism!r} is not known{hint}; choose one of {list(MECHANISMS)}")
    return mechanism


def get_mechanism(mechanism: Any) -> Mechanism:
    """The mechanism object for a name (or for a parameter object's `.mechanism`)."""
    name = getattr(mechanism, "mechanism", mechanism)
    return REGISTRY[check_mechanism(name)]


def make_params(mechanism: str, **params: Any):
    """Validate user parameters for `mechanism` and return its frozen parameter object."""
    return get_mechanism(mechanism).make_params(**params)


__all__ = ["IndexFn", "MECHANISMS", "Mechanism", "REGISTRY", "check_mechanism", "get_mechanism", "make_params"]
