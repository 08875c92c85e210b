"""Experiment loggers, selected by the `logger` config group and built with hydra.utils.instantiate.

The runner talks to every logger through these methods only; `NullLogger` (logger=none, the default) does
nothing. The W&B logger lives here too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol

import pandas as pd


class Logger(Protocol):
    def start(self, config: Mapping[str, Any], experiment: str, job_name: str) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_rows(self, rows: pd.DataFrame, name: str = "results") -> None: ...

    def log_images(self, images: Mapping[str, Path]) -> None: ...

    def log_files(self, paths: list[Path], name: str) -> None: ...

    def finish(self) -> None: ...


class NullLogger:
    def start(self, config, experiment, job_name):
        pass

    def log_metrics(self, metrics, step=None):
        pass

    def log_rows(self, rows, name="results"):
        pass

    def log_images(self, images):
        pass

    def log_files(self, paths, name):
        pass

    def finish(self):
        pass
