"""Backends declare what they support; one dispatcher picks; `build` turns names into a callable.

A backend is a small class (see ops/): class attributes say which devices, dtypes, causal modes and
backward passes it supports, `unavailable_reason()` says why it cannot run in this environment at all, and
`not_supported_reasons(...)` says why it cannot run on given inputs, in words (xformers' ops do the same).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from .call import FALLBACKS, FEATURE_WORDS, Call, make_call
from .kernels import default_scale
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
    # Features of a call (attention_impls.call.FEATURES) this backend implements in `forward_call`. Per-call scale
    # and grouped heads work with every backend (Attention rescales q, or repeats k and v, for those without).
    supports: ClassVar[frozenset[str]] = frozenset()
    # True where the kernel can return finite outputs although a query or a key it sees is NaN or Inf (FlexAttention
    # masks them away): Attention then checks the inputs of every call, not only the outputs.
    hides_non_finite: ClassVar[bool] = False

    def __init__(self, params: AttentionParams) -> None:
        self.params = params

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this backend cannot run in this environment at all (a missing package), or None."""
        return None

    @classmethod
    def not_supported_reasons(
        cls, device: torch.device | str, dtype: torch.dtype, causal: bool, requires_grad: bool,
        head_dim: int | None = None, features: frozenset[str] = frozenset(),
    ) -> list[str]:
        """Why this backend cannot run such inputs, in words ([] = it can); `head_dim` None: any head_dim;
        `features`: what the call uses beyond plain self-attention (attention_impls.call.FEATURES)."""
        reasons = []
        for feature in sorted(features - cls.supports - FALLBACKS):
            reasons.append(f"{FEATURE_WORDS[feature]} is not supported")
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

    def forward_call(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: Call) -> torch.Tensor:
        """A call using some of `supports` (q is (B, L, H, D), k and v (B, M, H_kv, D))."""
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
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v dtypes differ: {_dtype_name(q.dtype)}, {_dtype_name(k.dtype)}, "
                        f"{_dtype_name(v.dtype)}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v are on different devices: {q.device}, {k.device}, {v.device}")
    if q.shape[1] < 1:
        raise ValueError(f"seq_len={q.shape[1]} must be >= 1")
    if q.shape[2] < 1:
        raise ValueError(f"heads={q.shape[2]} must be >= 1")
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
                head_dim: int | None = None, seq_len: int | None = None,
                features: frozenset[str] = frozenset(), batch_heads: int | None = None,
                query_len: int | None = None) -> str:
        """The backend name to run for these inputs; raises with every candidate's reasons when none fits.

        seq_len (keys; with batch_heads = batch x heads and query_len), where known: a small call puts the
        mechanism's small_n_priority first (Mechanism.small_n_size says what is small)."""
        if self.requested_backend is not None:
            cls = get_backend_class(self.mechanism, self.requested_backend)
            reasons = cls.not_supported_reasons(device, dtype, causal, requires_grad, head_dim, features)
            if reasons:
                raise RuntimeError(
                    f"{self.mechanism} backend {self.requested_backend!r} cannot run these inputs: "
                    f"{'; '.join(reasons)}. Backends that can: "
                    f"{_fitting_names(self.mechanism, device, dtype, causal, requires_grad, head_dim, features) or 'none'}"
                )
            return self.requested_backend
        mechanism = get_mechanism(self.mechanism)
        up_to, short_first = mechanism.small_n_priority.get(device.type, (0, ()))
        size = None if seq_len is None else mechanism.small_n_size(seq_len, batch_heads, query_len)
        short = size is not None and size <= up_to
        key = (str(device), _dtype_name(dtype), requires_grad, head_dim, short)
        if features - FALLBACKS:  # a call with padding, positions, ... may need another backend
            key = (*key, tuple(sorted(features - FALLBACKS)))
        if key in self.picked:
            return self.picked[key]
        order = priority(self.mechanism, device.type)
        if short:
            order = short_first + tuple(n for n in order if n not in short_first)
        report = []
        for name in order:
            reasons = get_backend_class(self.mechanism, name).not_supported_reasons(device, dtype, causal,
                                                                                   requires_grad, head_dim, features)
            if not reasons:
                self.picked[key] = name
                return name
            report.append(f"  {name}: {'; '.join(reasons)}")
        uses = f", using {', '.join(FEATURE_WORDS[f] for f in sorted(features))}" if features else ""
        raise RuntimeError(f"no {self.mechanism} backend supports device={device}, dtype={_dtype_name(dtype)}, "
                           f"causal={causal}, backward={requires_grad}{uses}:\n" + "\n".join(report))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                scale: float | None = None, query_offset: int | None = None,
                position_offsets: torch.Tensor | None = None, key_padding_mask: torch.Tensor | None = None,
                key_lengths: torch.Tensor | None = None, dropout_p: float = 0.0,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """q (B, L, H, D), k and v (B, M, H_kv, D) -> (B, L, H, D); ../shared/spec/attention.md defines every
        argument ("Positions, padding, grouped heads, scale, dropout"; attention_impls.call checks them).

        query_offset: the position of the first query (KV-cache decoding: M - 1); position_offsets (B,): where each
        sequence's real tokens start (left padding); key_padding_mask (B, M) bool, True = padding, or key_lengths
        (B,): keys at or past it are padding; scale replaces 1/sqrt(D); dropout_p drops attention weights (pass 0
        in eval); attn_mask (broadcasting to (B, H, L, M); bool True = may be seen, or float added to the scores)
        applies on top of the pattern. backend=None picks a backend that implements what the call uses."""
        check_inputs(q, k, v)
        call = make_call(q, k, v, causal=causal, scale=scale, query_offset=query_offset,
                         position_offsets=position_offsets, key_padding_mask=key_padding_mask,
                         key_lengths=key_lengths, dropout_p=dropout_p, attn_mask=attn_mask)
        key_len, num_heads = k.shape[1], q.shape[2]
        if "cross" in call.features and self.mechanism != "dense":
            raise ValueError(f"{self.mechanism} attention of {q.shape[1]} queries against {key_len} keys needs "
                             f"query_offset= (the position of the first query, {key_len - q.shape[1]} for the last "
                             f"{q.shape[1]}): the spec defines attention between unrelated sequences for dense only")
        if (key_len, num_heads) not in self._coverage_checked:
            get_mechanism(self.mechanism).check_shape(self.params, key_len, num_heads)
            self._coverage_checked.add((key_len, num_heads))
        if call.features & {"query_block", "decode"}:
            k, v, call = _keys_in_reach(get_mechanism(self.mechanism), self.params, k, v, call)
        requires_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        features = call.features
        name = self.resolve(q.device, q.dtype, causal, requires_grad, head_dim=q.shape[-1], seq_len=key_len,
                            batch_heads=q.shape[0] * num_heads, query_len=q.shape[1], features=features)
        self.backend = name
        impl = self._impl(name)
        if "scale" in features and "scale" not in impl.supports:
            # q.k * s = (q * s / s0).k * s0: the backend's own scale s0 then gives the call's s
            q = q * (call.scale / default_scale(q.shape[-1], self.params.scale))
            call = replace(call, scale=None)
        if "grouped_heads" in features and "grouped_heads" not in impl.supports:
            group = num_heads // call.kv_heads  # query head h uses key/value head h // group (torch, HF)
            k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
            call = replace(call, kv_heads=num_heads)
        def attend(q, k, v):
            return impl.forward(q, k, v, causal) if not call.features else impl.forward_call(q, k, v, call)

        out = attend(q, k, v)
        # The spec's "Non-finite inputs". A kernel scores a masked pair as weight 0, and 0 x NaN is NaN, so a bad
        # key or value can reach queries that never see it; torch's CPU flash kernel returns 0 for a NaN query.
        # Sums find either in one pass (a decoding step reads only its visible keys: its output tells), and the
        # rare call they flag is rerun with the bad inputs zeroed, the spec's reach marking the outputs they reach.
        with torch.no_grad():
            total = out.sum(dtype=torch.float32) + q.sum(dtype=torch.float32)
            if "decode" not in call.features or impl.hides_non_finite:
                total = total + k.sum(dtype=torch.float32) + v.sum(dtype=torch.float32)
        if impl.hides_non_finite or not bool(torch.isfinite(total)):
            out = _contain_non_finite(get_mechanism(self.mechanism), self.params, q, k, v, call, out, attend)
        return out


def _contain_non_finite(mechanism, params, q, k, v, call: Call, out: torch.Tensor, attend) -> torch.Tensor:
    """The spec's "Non-finite inputs": a NaN or Inf reaches exactly the outputs of the queries that see it."""
    reached = mechanism.non_finite_reach(params, q, k, v, call)
    if reached is None:
        return out  # finite inputs (an overflow in the scores is the kernel's own result)

    def zeroed(tensor):
        return torch.where(torch.isfinite(tensor).all(-1, keepdim=True), tensor, 0.0)

    clean = attend(zeroed(q), zeroed(k), zeroed(v))
    # keep a kernel's own +-inf; detached: the first call saw the bad inputs, and its backward would spread 0 x NaN
    # into the gradients of everything (the marked outputs are NaN, they carry no gradient)
    stale = out.detach()
    marked = torch.where(torch.isfinite(stale), torch.full_like(stale, float("nan")), stale)
    return torch.where(reached[..., None], marked, clean)


def _keys_in_reach(mechanism, params, k: torch.Tensor, v: torch.Tensor, call: Call):
    """A query block reads only the keys its pattern lets it see: a decoding step with a window of W reads W + 1
    keys of its cache, not all of them (Mechanism.key_range; the rules still clip to the whole cache's length)."""
    starts = call.position_offsets.tolist() if call.position_offsets is not None else [0]
    first, last = call.query_offset, call.query_offset + call.query_len - 1
    ranges = [mechanism.key_range(params, first - start, last - start, call.key_length, call.causal)
              for start in starts]
    if any(bounds is None for bounds in ranges):
        return k, v, call
    low = max(0, min(bounds[0] + start for bounds, start in zip(ranges, starts)))
    high = min(call.key_len, max(bounds[1] + start for bounds, start in zip(ranges, starts)))
    if low == 0 and high == call.key_len or high <= low:
        return k, v, call
    padding = call.key_padding_mask[:, low:high] if call.key_padding_mask is not None else None
    mask = call.attn_mask
    if mask is not None and mask.shape[-1] == call.key_len:
        mask = mask[..., low:high]
    call = replace(call, key_len=high - low, key_start=call.key_start + low, clip_length=call.key_length,
                   key_padding_mask=padding, attn_mask=mask)
    return k[:, low:high], v[:, low:high], call


def _available_names(mechanism: str) -> list[str]:
    return [name for name, cls in REGISTRY[mechanism].items() if cls.unavailable_reason() is None]


def _fitting_names(mechanism, device, dtype, causal, requires_grad, head_dim=None, features=frozenset()) -> list[str]:
    return [name for name, cls in REGISTRY[mechanism].items()
            if not cls.not_supported_reasons(device, dtype, causal, requires_grad, head_dim, features)]


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
