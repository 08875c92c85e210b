"""Backends declare what they support; one dispatcher picks; `build` turns names into a callable.

A backend is a small class (see ops/): class attributes say which devices, dtypes, causal modes and
backward passes it supports, `unavailable_reason()` says why it cannot run in this environment at all, and
`not_supported_reasons(...)` says why it cannot run on given inputs, in words (xformers' ops do the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .mechanisms import MECHANISMS, check_mechanism, get_mechanism
from .mechanisms.base import suggest
from .params import AttentionParams, make_params

REGISTRY: dict[str, dict[str, type["AttentionBackend"]]] = {mechanism: {} for mechanism in MECHANISMS}


# Views of what each mechanism declares, keyed (mechanism, device type), for scripts and tests that read them.
PRIORITY: dict[tuple[str, str], tuple[str, ...]] = {
    (m, device): order for m in MECHANISMS for device, order in get_mechanism(m).priority.items()}
SMALL_N_PRIORITY: dict[tuple[str, str], tuple[int, tuple[str, ...]]] = {
    (m, device): rule for m in MECHANISMS for device, rule in get_mechanism(m).small_n_priority.items()}


def priority(mechanism: str, device_type: str) -> tuple[str, ...]:
    """The order backend=None tries (the mechanism's measured ranking for this device type, else every
    registered backend but the reference). References are never picked automatically."""
    order = get_mechanism(mechanism).priority.get(device_type)
    return order if order is not None else tuple(n for n in REGISTRY[mechanism] if n != "reference")


def register(cls: type["AttentionBackend"]) -> type["AttentionBackend"]:
    REGISTRY[cls.mechanism][cls.name] = cls
    return cls


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class AttentionBackend:
    """One implementation of one mechanism. Subclasses set the ClassVars and implement `forward`."""

    mechanism: ClassVar[str]
    name: ClassVar[str]
    description: ClassVar[str] = ""
    devices: ClassVar[frozenset[str]] = frozenset({"cpu", "cuda"})
    dtypes: ClassVar[frozenset[torch.dtype]] = frozenset({torch.float32, torch.float16, torch.bfloat16})
    supports_causal: ClassVar[bool] = True
    backward_devices: ClassVar[frozenset[str]] = frozenset({"cpu", "cuda"})
    needs_compile: ClassVar[bool] = False

    def __init__(self, params: AttentionParams) -> None:
        self.params = params

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this backend cannot run in this environment at all (a missing package), or None."""
        return None

    @classmethod
    def not_supported_reasons(
        cls, device: torch.device | str, dtype: torch.dtype, causal: bool, requires_grad: bool,
        head_dim: int | None = None,
    ) -> list[str]:
        """Why this backend cannot run such inputs, in words ([] = it can); `head_dim` None: any head_dim."""
        reasons = []
        if (missing := cls.unavailable_reason()) is not None:
            reasons.append(missing)
        device_type = torch.device(device).type
        if device_type not in cls.devices:
            reasons.append(f"device={device_type} (supported: {', '.join(sorted(cls.devices))})")
        if dtype not in cls.dtypes:
            allowed = ", ".join(sorted(_dtype_name(d) for d in cls.dtypes))
            reasons.append(f"dtype={_dtype_name(dtype)} (supported: {allowed})")
        if causal and not cls.supports_causal:
            reasons.append("causal=True is not supported")
        if requires_grad and device_type not in cls.backward_devices:
            supported = ", ".join(sorted(cls.backward_devices)) or "none"
            reasons.append(f"backward is not supported on {device_type} (supported on: {supported})")
        return reasons

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
        raise NotImplementedError

    def executed_pairs(self, seq_len: int, num_heads: int, causal: bool, device: str = "cpu",
                       backward: bool = False) -> int | None:
        """(query, key) pairs this backend actually scores on `device`, where it scores more than the useful ones:
        in the forward, or in the backward pass when `backward` (where each pair costs 2.5 forward ones)."""
        return None


@dataclass(frozen=True)
class BackendInfo:
    """One row of `backends()`: what a backend is, what it supports, and whether it can run here."""

    mechanism: str
    name: str
    available: bool
    reason: str
    devices: tuple[str, ...]
    dtypes: tuple[str, ...]
    causal: bool
    backward: tuple[str, ...]
    needs_compile: bool
    description: str


def backends(mechanism: str | None = None) -> list[BackendInfo]:
    """Every registered backend, with its support matrix and, when it cannot run here, why."""
    _load_backends()
    mechanisms = MECHANISMS if mechanism is None else (check_mechanism(mechanism),)
    host = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for mech in mechanisms:
        for name, cls in REGISTRY[mech].items():
            reasons = _environment_reasons(cls, host)
            rows.append(
                BackendInfo(
                    mechanism=mech,
                    name=name,
                    available=not reasons,
                    reason="; ".join(reasons),
                    devices=tuple(sorted(cls.devices)),
                    dtypes=tuple(sorted(_dtype_name(d) for d in cls.dtypes)),
                    causal=cls.supports_causal,
                    backward=tuple(sorted(cls.backward_devices)),
                    needs_compile=cls.needs_compile,
                    description=cls.description,
                )
            )
    return rows


def _environment_reasons(cls: type[AttentionBackend], host: str) -> list[str]:
    if (missing := cls.unavailable_reason()) is not None:
        return [missing]
    if host not in cls.devices:
        return [f"no supported device here: this machine has {host}, {cls.name} runs on "
                f"{', '.join(sorted(cls.devices))}"]
    return []


def get_backend_class(mechanism: str, backend: str) -> type[AttentionBackend]:
    _load_backends()
    check_mechanism(mechanism)
    choices = REGISTRY[mechanism]
    if backend not in choices:
        hint = suggest(backend, list(choices)) if isinstance(backend, str) else ""
        raise ValueError(f"backend={backend!r} is not a {mechanism} backend{hint}; choose one of {sorted(choices)}")
    return choices[backend]


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Shape/dtype/device checks that must fail before any kernel runs."""
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, seq, heads, head_dim), got shape {tuple(tensor.shape)}")
        if not tensor.is_floating_point():
            raise TypeError(f"{name} must be floating point, got dtype={_dtype_name(tensor.dtype)}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(
            "q, k and v must have the same shape (batch, seq, heads, head_dim) for self-attention, got "
            f"q={tuple(q.shape)}, k={tuple(k.shape)}, v={tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v dtypes differ: {_dtype_name(q.dtype)}, {_dtype_name(k.dtype)}, "
                        f"{_dtype_name(v.dtype)}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v are on different devices: {q.device}, {k.device}, {v.device}")
    if q.shape[1] < 1:
        raise ValueError(f"seq_len={q.shape[1]} must be >= 1")
    if q.shape[3] < 1:
        raise ValueError(f"head_dim={q.shape[3]} must be >= 1")


class Attention(torch.nn.Module):
    """`attn(q, k, v, causal=False) -> out` for one mechanism, with a fixed or automatically picked backend.

    With backend=None the backend is picked on the first call for each (device, dtype, needs-backward, head_dim,
    short sequence or not: the mechanism's small_n_priority) and remembered; `.backend` names the one used last and `.picked`
    lists every choice made.
    """

    def __init__(self, mechanism: str, backend: str | None, params: AttentionParams) -> None:
        super().__init__()
        self.mechanism = mechanism
        self.params = params
        self.requested_backend = backend
        self._impls: dict[str, AttentionBackend] = {}
        self.picked: dict[tuple[str, str, bool], str] = {}
        self.backend: str | None = backend
        self._coverage_checked: set[tuple[int, int]] = set()
        if backend is not None:
            cls = get_backend_class(mechanism, backend)
            if (missing := cls.unavailable_reason()) is not None:
                raise RuntimeError(f"{mechanism} backend {backend!r} is unavailable: {missing}. "
                                   f"Available here: {_available_names(mechanism)}")

    def extra_repr(self) -> str:
        return f"mechanism={self.mechanism!r}, backend={self.backend!r}, params={self.params}"

    def _impl(self, name: str) -> AttentionBackend:
        if name not in self._impls:
            self._impls[name] = get_backend_class(self.mechanism, name)(self.params)
        return self._impls[name]

    def resolve(self, device: torch.device, dtype: torch.dtype, causal: bool, requires_grad: bool,
                head_dim: int | None = None, seq_len: int | None = None) -> str:
        """The backend name to run for these inputs; raises with every candidate's reasons when none fits.

        seq_len: the sequence length, where known; a short one puts the mechanism's small_n_priority first."""
        if self.requested_backend is not None:
            cls = get_backend_class(self.mechanism, self.requested_backend)
            reasons = cls.not_supported_reasons(device, dtype, causal, requires_grad, head_dim)
            if reasons:
                raise RuntimeError(
                    f"{self.mechanism} backend {self.requested_backend!r} cannot run these inputs: "
                    f"{'; '.join(reasons)}. Backends that can: "
                    f"{_fitting_names(self.mechanism, device, dtype, causal, requires_grad, head_dim) or 'none'}"
                )
            return self.requested_backend
        up_to, short_first = get_mechanism(self.mechanism).small_n_priority.get(device.type, (0, ()))
        short = seq_len is not None and seq_len <= up_to
        key = (str(device), _dtype_name(dtype), requires_grad, head_dim, short)
        if key in self.picked:
            return self.picked[key]
        order = priority(self.mechanism, device.type)
        if short:
            order = short_first + tuple(n for n in order if n not in short_first)
        report = []
        for name in order:
            reasons = get_backend_class(self.mechanism, name).not_supported_reasons(device, dtype, causal,
                                                                                   requires_grad, head_dim)
            if not reasons:
                self.picked[key] = name
                return name
            report.append(f"  {name}: {'; '.join(reasons)}")
        raise RuntimeError(f"no {self.mechanism} backend supports device={device}, dtype={_dtype_name(dtype)}, "
                           f"causal={causal}, backward={requires_grad}:\n" + "\n".join(report))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
        check_inputs(q, k, v)
        seq_len, num_heads = q.shape[1], q.shape[2]
        if (seq_len, num_heads) not in self._coverage_checked:
            get_mechanism(self.mechanism).check_shape(self.params, seq_len, num_heads)
            self._coverage_checked.add((seq_len, num_heads))
        requires_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        name = self.resolve(q.device, q.dtype, causal, requires_grad, head_dim=q.shape[-1], seq_len=q.shape[1])
        self.backend = name
        return self._impl(name).forward(q, k, v, causal)


def _available_names(mechanism: str) -> list[str]:
    return [name for name, cls in REGISTRY[mechanism].items() if cls.unavailable_reason() is None]


def _fitting_names(mechanism, device, dtype, causal, requires_grad, head_dim=None) -> list[str]:
    return [name for name, cls in REGISTRY[mechanism].items()
            if not cls.not_supported_reasons(device, dtype, causal, requires_grad, head_dim)]


def build(mechanism: str, backend: str | None = None, **params: Any) -> Attention:
    """`attn = build("dilated", segment_lengths=[2048, 4096], dilation_rates=[1, 2]); out = attn(q, k, v)`.

    Parameters are validated here; an unknown mechanism or backend, a bad parameter, or a backend that cannot
    run in this environment raises before any tensor is touched.
    """
    check_mechanism(mechanism)
    _load_backends()
    if backend is not None:
        get_backend_class(mechanism, backend)
    return Attention(mechanism, backend, make_params(mechanism, **params))


def _load_backends() -> None:
    from . import ops  # noqa: F401  (importing registers every backend; a no-op once imported)
