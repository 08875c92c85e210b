"""One name and one colour per variant, used by every table and plot of a report.

A *variant* is what a reader compares: a mechanism, its parameters and the backend that ran it, e.g.
"sliding_window w=256 (chunked)" or "dilated w=[256,512] r=[1,2] (gather)". `variant_label` is the only place
that turns a row into that name, so a variant reads the same and has the same colour in every table and plot.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import pandas as pd

from attention_impls.mechanisms import MECHANISMS, REGISTRY
from attention_impls.mechanisms.base import compact

# Okabe & Ito (2008), the colour-blind-safe qualitative palette; yellow (#F0E442) is left out because it
# vanishes on white. Markers cycle on a different period, so variants 8 and up still differ from 1 to 7.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")

# How a failed point is drawn: one marker per status, shared by every plot and its legend.
STATUS_MARKERS = {"oom": "X", "timeout": "v", "wrong": "d", "nan": "p", "error": "x", "unsupported": "_",
                  "killed": "*", "skipped": "|"}


def parse_params(params: Any) -> dict[str, Any]:
    """A row's `params` (JSON text in the store, a dict in memory, missing for dense) as a dict."""
    if params is None or (isinstance(params, float) and math.isnan(params)):
        return {}
    if isinstance(params, Mapping):
        return dict(params)
    if isinstance(params, str):
        text = params.strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(f"params={params!r} is not JSON text (expected e.g. '{{\"window\": 256}}')") from None
        if not isinstance(value, dict):
            raise ValueError(f"params={params!r} must be a JSON object, got {type(value).__name__}")
        return value
    raise TypeError(f"params={params!r} must be JSON text or a dict, got {type(params).__name__}")


def params_summary(mechanism: str, params: Any) -> str:
    """Short parameter text: 'w=256', 'w=[128,0]', 'w=[256,512] r=[1,2]', '' for dense. The mechanism names
    its own parameters; any others (scale, or those of a mechanism this code no longer knows) follow as key=value."""
    values = parse_params(params)
    parts = []
    if mechanism in REGISTRY:
        parts.append(REGISTRY[mechanism].label(values))
    parts += [f"{key}={compact(value)}" for key, value in sorted(values.items()) if value is not None]
    return " ".join(part for part in parts if part)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def variant_label(mechanism: Any, backend: Any = None, params: Any = None) -> str:
    """'sliding_window w=256 (chunked)'; without a backend, the configuration alone: 'sliding_window w=256'."""
    mechanism = "unknown" if _is_missing(mechanism) else str(mechanism)
    summary = params_summary(mechanism, params)
    label = f"{mechanism} {summary}" if summary else mechanism
    return label if _is_missing(backend) else f"{label} ({backend})"


def add_variant_column(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of `frame` with a `variant` column (rows lacking mechanism get 'unknown')."""
    out = frame.copy()
    mechanisms = out["mechanism"] if "mechanism" in out else pd.Series([None] * len(out), index=out.index)
    backends = out["backend"] if "backend" in out else pd.Series([None] * len(out), index=out.index)
    params = out["params"] if "params" in out else pd.Series([None] * len(out), index=out.index)
    out["variant"] = [variant_label(m, b, p) for m, b, p in zip(mechanisms, backends, params)]
    return out


def _sort_key(mechanism: Any, backend: Any, params: Any) -> tuple:
    """Mechanisms in registry order (dense first); within one, by parameter size, then backend."""
    mechanism = "unknown" if _is_missing(mechanism) else str(mechanism)
    rank = MECHANISMS.index(mechanism) if mechanism in MECHANISMS else len(MECHANISMS)
    numbers = REGISTRY[mechanism].size(parse_params(params)) if mechanism in REGISTRY else []
    return (rank, numbers, params_summary(mechanism, params), "" if _is_missing(backend) else str(backend))


def variant_order(frame: pd.DataFrame) -> list[str]:
    """Every variant label in `frame`, dense first, then sliding window, then dilated, smaller parameters first."""
    if frame.empty or "mechanism" not in frame:
        return []
    nothing = [None] * len(frame)
    keys: dict[str, tuple] = {}
    for mechanism, backend, params in zip(frame["mechanism"], frame["backend"] if "backend" in frame else nothing,
                                          frame["params"] if "params" in frame else nothing):
        if _is_missing(mechanism):
            continue  # rows that name no mechanism (perf_target) are no variant
        keys.setdefault(variant_label(mechanism, backend, params), _sort_key(mechanism, backend, params))
    return sorted(keys, key=lambda label: (keys[label], label))


@dataclass(frozen=True)
class Style:
    color: str
    marker: str
    linestyle: str


@dataclass
class Palette:
    """Variant label -> Style, fixed once per report so every plot agrees."""

    styles: dict[str, Style] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> "Palette":
        """Assign styles to every variant in `frame` (all kinds together), in a reader-friendly order."""
        return cls.from_labels(variant_order(frame))

    @classmethod
    def from_labels(cls, labels: Iterable[str]) -> "Palette":
        palette = cls()
        for label in labels:
            palette.add(label)
        return palette

    def add(self, label: str) -> Style:
        if label not in self.styles:
            i = len(self.order)
            self.styles[label] = Style(OKABE_ITO[i % len(OKABE_ITO)], MARKERS[i % len(MARKERS)],
                                       LINESTYLES[(i // len(OKABE_ITO)) % len(LINESTYLES)])
            self.order.append(label)
        return self.styles[label]

    def __getitem__(self, label: str) -> Style:
        # A label first seen by one plot still gets a stable style for the rest of the report.
        return self.add(label)

    def colors(self) -> dict[str, str]:
        return {label: style.color for label, style in self.styles.items()}

    def sorted(self, labels: Iterable[str]) -> list[str]:
        """`labels` in palette order (unknown ones last, alphabetically)."""
        labels = set(labels)
        known = [label for label in self.order if label in labels]
        return known + sorted(labels - set(known))
