"""The harness: benchmark runner, retrieval evaluation, reporting; configured by Hydra from conf/."""
