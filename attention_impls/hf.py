"""Every mechanism as a Hugging Face `attn_implementation` (install with `pip install attention-shootout[hf]`).

    import attention_impls.hf
    attention_impls.hf.register(dilated={"segment_lengths": [16, 32], "dilation_rates": [1, 2]})
    model = AutoModelForCausalLM.from_config(config, attn_implementation="shootout_dilated")

`register()` adds `shootout_<mechanism>` for every mechanism to transformers' AttentionInterface (the attention)
and AttentionMaskInterface (the mask), and returns the names. A model's attention layers then call the library
with the model's own query/key/value heads (grouped-query too), per-call scale, dropout (training only, as HF
passes it), the KV cache (queries placed after the cached keys) and left padding (the pattern anchored at each
sequence's first real token; padded keys never seen). The pattern's parameters come from, first to last:
`config.shootout_attention` (a dict of the mechanism's parameters), what `register(<mechanism>={...})` was
given, and for the sliding window the model's own `config.sliding_window` (Mistral's W counts the query itself:
this library's window is W - 1). Nothing is downloaded: build models from configs.
"""

from __future__ import annotations

from typing import Any

import torch

from .mechanisms import MECHANISMS, get_mechanism
from .registry import Attention, build

PREFIX = "shootout_"
_DEFAULTS: dict[str, dict[str, Any]] = {}
_BUILT: dict[tuple, Attention] = {}


def implementation_name(mechanism: str) -> str:
    """The `attn_implementation` string under which `register` puts a mechanism."""
    return PREFIX + mechanism


def register(**defaults: dict[str, Any]) -> list[str]:
    """Register every mechanism with transformers; keyword arguments (one per mechanism, a dict of its parameters)
    are the parameters a model gets when its config does not name them. Returns the implementation names."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError as error:
        raise ImportError("attention_impls.hf needs transformers: pip install 'attention-shootout[hf]'") from error
    unknown = sorted(set(defaults) - set(MECHANISMS))
    if unknown:
        raise ValueError(f"register() got parameters for {unknown}; the mechanisms are {sorted(MECHANISMS)}")
    for mechanism, params in defaults.items():
        get_mechanism(mechanism).make_params(**params)  # a bad parameter fails here, not inside a model
        _DEFAULTS[mechanism] = dict(params)
    names = []
    for mechanism in MECHANISMS:
        name = implementation_name(mechanism)
        AttentionInterface.register(name, _attention_function(mechanism))
        AttentionMaskInterface.register(name, padding_mask)
        names.append(name)
    return names


def padding_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                 attention_mask: torch.Tensor | None = None, **_: Any) -> torch.Tensor | None:
    """The mask function: the (B, kv_length) bool mask of real keys (True) or None when nothing is padded. The
    pattern itself, causality included, is the attention function's: HF's mask function would build the dense
    causal (or its own sliding-window) mask, which is not the pattern."""
    if attention_mask is None:
        return None
    mask = attention_mask.to(torch.bool)
    if mask.shape[-1] < kv_offset + kv_length:  # the mask may not yet cover the token being generated
        mask = torch.nn.functional.pad(mask, (0, kv_offset + kv_length - mask.shape[-1]), value=True)
    mask = mask[:, kv_offset:kv_offset + kv_length]
    return None if bool(mask.all()) else mask


def _params_for(mechanism: str, module: torch.nn.Module, sliding_window: int | None) -> dict[str, Any]:
    config = getattr(module, "config", None)
    from_config = getattr(config, "shootout_attention", None)
    if from_config is not None:
        return dict(from_config)
    if mechanism in _DEFAULTS:
        return _DEFAULTS[mechanism]
    if mechanism == "sliding_window" and sliding_window is not None:
        return {"window": int(sliding_window) - 1}  # HF's W counts the query itself
    if mechanism == "dense":
        return {}
    raise ValueError(f"{implementation_name(mechanism)} needs the {mechanism} parameters: set "
                     f"config.shootout_attention = {{...}} or call attention_impls.hf.register({mechanism}={{...}})")


def _attention_for(mechanism: str, params: dict[str, Any]) -> Attention:
    key = (mechanism, repr(sorted(params.items())))
    if key not in _BUILT:
        _BUILT[key] = build(mechanism, None, **params)
    return _BUILT[key]


def _attention_function(mechanism: str):
    def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                  is_causal: bool | None = None, sliding_window: int | None = None,
                  **kwargs: Any) -> tuple[torch.Tensor, None]:
        """HF's layout in, HF's layout out: query (B, H, L, D), key/value (B, H_kv, M, D) -> (B, L, H, D)."""
        if sliding_window is not None and mechanism != "sliding_window":
            raise ValueError(f"this model's config sets sliding_window={sliding_window}, which "
                             f"{implementation_name(mechanism)} would ignore: set config.sliding_window = None, or use "
                             f"{implementation_name('sliding_window')}")
        if attention_mask is not None and (attention_mask.dtype != torch.bool or attention_mask.dim() != 2):
            raise ValueError(f"{implementation_name(mechanism)} takes the 2-D padding mask its own mask function "
                             f"makes; got a {attention_mask.dim()}-D {attention_mask.dtype} mask (a custom 4-D "
                             f"mask cannot be mapped onto the pattern)")
        attn = _attention_for(mechanism, _params_for(mechanism, module, sliding_window))
        causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
        num_queries, num_keys = query.shape[2], key.shape[2]
        arguments: dict[str, Any] = dict(causal=causal, scale=scaling, dropout_p=float(dropout))
        if num_queries != num_keys:
            arguments["query_offset"] = num_keys - num_queries  # the queries follow the cached keys
        if attention_mask is not None:
            arguments["key_padding_mask"] = ~attention_mask
            # left padding: each sequence's positions count from its first real token
            arguments["position_offsets"] = attention_mask.to(torch.int8).argmax(dim=-1)
        out = attn(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), **arguments)
        return out, None

    attention.__name__ = f"{mechanism}_attention_forward"
    return attention
