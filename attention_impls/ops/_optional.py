"""Optional dependencies: imported where used; their absence is a reason string, never a crash (STYLE 10)."""

from __future__ import annotations

import functools
import logging
import re
import shutil
import warnings


@functools.cache
def xformers_unavailable_reason() -> str | None:
    # xformers logs a multi-line warning when its kernels do not load; that becomes our reason string instead.
    xformers_logger = logging.getLogger("xformers")
    level = xformers_logger.level
    xformers_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import xformers
            import xformers.ops  # noqa: F401
    except Exception as error:  # an ImportError, or a broken build raising anything at import
        return (f"xformers is not importable ({type(error).__name__}: {error}); "
                "install it with: pip install 'attention-shootout[xformers]'")
    finally:
        xformers_logger.setLevel(level)
    if not getattr(xformers, "_has_cpp_library", False):
        from xformers import _cpp_lib

        message = str(_cpp_lib._cpp_library_load_exception)
        built = re.search(r"built for:\s*(.+?)\n", message)
        detail = f"built for {built.group(1).strip()}" if built else message.splitlines()[0]
        return f"xformers kernels did not load: {detail}"
    return None


@functools.cache
def flex_unavailable_reason() -> str | None:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError as error:
        return f"FlexAttention needs torch >= 2.5 ({error})"
    return None


@functools.cache
def cpu_compiler_missing() -> str | None:
    if shutil.which("g++") or shutil.which("c++") or shutil.which("clang++"):
        return None
    return "FlexAttention on CPU is compiled by inductor, which needs a C++ compiler (apt-get install g++)"


FLASH_DTYPES = ("float16", "bfloat16")
FLASH_MAX_HEAD_DIM = 256


@functools.cache
def cuda_flash_unavailable_reason() -> str | None:
    import torch

    if not torch.backends.cuda.is_flash_attention_available():
        return f"this torch ({torch.__version__}) was built without CUDA flash attention"
    return None


@functools.cache
def cuda_flash_window_unavailable_reason() -> str | None:
    """As cuda_flash_unavailable_reason, and also the window arguments the sliding-window backend needs."""
    import torch

    if (missing := cuda_flash_unavailable_reason()) is not None:
        return missing
    if "window_size_left" not in str(torch.ops.aten._flash_attention_forward.default._schema):
        return f"this torch ({torch.__version__}) has no window arguments in its flash kernel"
    return None


def flash_head_dim_unsupported(head_dim: int) -> str | None:
    if head_dim % 8 or head_dim > FLASH_MAX_HEAD_DIM:
        return f"head_dim={head_dim} (supported: multiples of 8 up to {FLASH_MAX_HEAD_DIM})"
    return None


def flash_device_unsupported(device) -> str | None:
    """Why the CUDA flash kernel cannot run on this device (compute capability below 8.0), or None; None also for
    devices it does not run on at all, which the backends' `devices` declare."""
    import torch

    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    if (capability := torch.cuda.get_device_capability(device)) < (8, 0):
        return f"compute capability {capability} (needs >= (8, 0))"
    return None


def cuda_flash_unsupported(q) -> str | None:
    """Why torch's CUDA flash kernel cannot take these inputs (device, dtype, head_dim), or None."""
    import torch

    if q.device.type != "cuda":
        return f"device={q.device.type} (the kernel runs on cuda)"
    if (dtype := str(q.dtype).removeprefix("torch.")) not in FLASH_DTYPES:
        return f"dtype={dtype} (supported: {', '.join(FLASH_DTYPES)})"
    if (why := flash_head_dim_unsupported(q.shape[-1])) is not None:
        return why
    return flash_device_unsupported(q.device)
