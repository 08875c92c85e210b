"""Every backend, one file each; importing a module registers its class (see registry.register)."""

from . import (  # noqa: F401
    dense_math,
    dense_sdpa,
    dense_xformers,
    dilated_flex,
    dilated_gather,
    dilated_masked_sdpa,
    dilated_xformers,
    reference,
    sliding_window_chunked,
    sliding_window_flash,
    sliding_window_flex,
    sliding_window_masked_sdpa,
    sliding_window_xformers,
)
