"""Check every backend against the float64 reference at a small size and print one table.

    python -m attention_impls.demo
"""

from __future__ import annotations

import time

import torch
from rich.console import Console
from rich.table import Table

from . import backends, build
from .mechanisms import REGISTRY as MECHANISM_REGISTRY
from .registry import REGISTRY

DEMO_PARAMS = {name: mechanism.example_params for name, mechanism in MECHANISM_REGISTRY.items()}


def check_backend(mechanism: str, backend: str, shape=(1, 512, 4, 32), causal: bool = True) -> tuple[float, float]:
    """(max abs error against the float64 reference, median forward seconds) at a small float32 shape."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(shape, generator=generator) for _ in range(3))
    expected = build(mechanism, "reference", **DEMO_PARAMS[mechanism])(q.double(), k.double(), v.double(),
                                                                       causal=causal)
    attn = build(mechanism, backend, **DEMO_PARAMS[mechanism])
    with torch.inference_mode():
        out = attn(q, k, v, causal=causal)  # also the warm-up (and compile, for flex)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            attn(q, k, v, causal=causal)
            times.append(time.perf_counter() - start)
    return (out.double() - expected).abs().max().item(), sorted(times)[len(times) // 2]


COLUMNS = ("mechanism", "backend", "available", "max |err| vs float64", "time (rough)", "supports / reason")


def rows(check=check_backend) -> list[tuple[str, ...]]:
    """One row per registered backend; `check(mechanism, backend)` -> (error, seconds) runs the runnable ones."""
    table = []
    for info in backends():
        cls = REGISTRY[info.mechanism][info.name]
        reasons = cls.not_supported_reasons("cpu", torch.float32, True, False)
        if reasons or info.name == "reference":
            error = time_text = "-"
            note = "; ".join(reasons) if reasons else "the oracle itself"
        else:
            err, seconds = check(info.mechanism, info.name)
            error, time_text = f"{err:.1e}" + (" ✓" if err < 1e-4 else " ✗ WRONG"), f"{seconds * 1e3:.2f} ms"
            note = f"devices {','.join(info.devices)}; backward on {','.join(info.backward) or 'none'}"
            if info.needs_compile:
                note += "; compiled"
        table.append((info.mechanism, info.name, "yes" if info.available else "no", error, time_text, note))
    return table


def main() -> None:
    console = Console(width=max(Console().width, 150))
    table = Table(title="attention_impls backends (float32, batch 1, N 512, 4 heads, head_dim 32, causal)")
    for column in COLUMNS:
        table.add_column(column)
    for row in rows():
        table.add_row(*row)
    console.print(table)
    console.print("Times are a median of 5 forward calls, for orientation only: run `shootout` to measure.")


if __name__ == "__main__":
    main()
