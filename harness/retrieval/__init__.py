"""Long-range retrieval accuracy: synthetic tasks, tiny models trained with each attention, accuracy by distance.

    run_probe(variants, probe_cfg, store, logger)       # training-free, exact reach of one layer, seconds
    run_retrieval(attention, cfg, store, logger)        # train a TinyDecoder on MQAR / passkey, rows by distance
"""

from .config import (EvalConfig, ModelConfig, ProbeConfig, RetrievalConfig, RetrievalConfigError, TaskConfig,
                     TrainConfig)
from .run import run_probe, run_retrieval

__all__ = ["EvalConfig", "ModelConfig", "ProbeConfig", "RetrievalConfig", "RetrievalConfigError", "TaskConfig",
           "TrainConfig", "run_probe", "run_retrieval"]
