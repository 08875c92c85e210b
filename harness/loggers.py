"""Experiment loggers, selected by the `logger` config group and built with hydra.utils.instantiate.

The runner talks to every logger through these methods only; `NullLogger` (logger=none, the default) does
nothing. `WandbLogger` (logger=wandb) tracks each job as one W&B run.
"""

from __future__ import annotations

import netrc
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence
from urllib.parse import urlparse

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


def _wandb_api_key_present() -> bool:
    """An API key is configured: WANDB_API_KEY, an identity-token file, or a netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbLogger:
    """Weights & Biases tracking (logger=wandb): one run per job, grouped by experiment.

    Without an API key, or with WANDB_MODE=offline, runs are written offline under `dir` and can be uploaded
    later with `wandb sync <run dir>`. W&B being absent, unreachable or failing never fails the benchmark:
    every call into wandb is guarded, warns once with the error, and the run goes on without tracking.
    """

    def __init__(self, project: str = "attention-shootout", entity: str | None = None, mode: str | None = None,
                 group: str | None = None, tags: Sequence[str] = (), dir: str | os.PathLike | None = None) -> None:
        if mode not in (None, "online", "offline", "disabled"):
            raise ValueError(f"mode={mode!r} is not a W&B mode; choose online, offline, disabled, or None "
                             f"(online with an API key, else offline)")
        self.project, self.entity, self.mode, self.group = project, entity, mode, group
        self.tags = tuple(tags)
        self.dir = Path(dir) if dir is not None else None
        self.run: Any = None
        self._wandb: Any = None

    def _guard(self, what: str, action: Callable[[], Any]) -> Any:
        if self.run is None:
            return None
        try:
            return action()
        except Exception as error:  # noqa: BLE001 - tracking must never fail a benchmark (issue 5)
            warnings.warn(f"W&B {what} failed, continuing without it: {type(error).__name__}: {error}",
                          RuntimeWarning, stacklevel=3)
            return None

    def _resolve_mode(self) -> str:
        if self.mode is not None:
            return self.mode
        if os.environ.get("WANDB_MODE") in ("offline", "disabled", "online"):
            return os.environ["WANDB_MODE"]
        return "online" if _wandb_api_key_present() else "offline"

    def start(self, config: Mapping[str, Any], experiment: str, job_name: str) -> None:
        try:
            import wandb
        except ImportError as error:
            warnings.warn(f"logger=wandb but wandb is not importable ({error}); install it with "
                          f"`pip install wandb`. Continuing without tracking.", RuntimeWarning, stacklevel=2)
            return
        self._wandb = wandb
        mode = self._resolve_mode()
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
        kwargs = dict(project=self.project, entity=self.entity, group=self.group or experiment, name=job_name,
                      tags=list(self.tags) or None, dir=str(self.dir) if self.dir else None,
                      config=dict(config), job_type="benchmark",
                      reinit="create_new")  # one run per job: multirun jobs in one process never share a run
        try:
            self.run = wandb.init(mode=mode, **kwargs)
        except Exception as error:  # noqa: BLE001 - e.g. unreachable server: fall back to offline
            if mode != "online":
                warnings.warn(f"W&B init failed ({type(error).__name__}: {error}); continuing without tracking",
                              RuntimeWarning, stacklevel=2)
                return
            warnings.warn(f"W&B online init failed ({type(error).__name__}: {error}); logging offline instead",
                          RuntimeWarning, stacklevel=2)
            try:
                self.run, mode = wandb.init(mode="offline", **kwargs), "offline"
            except Exception as error2:  # noqa: BLE001
                warnings.warn(f"W&B offline init failed too ({error2}); continuing without tracking",
                              RuntimeWarning, stacklevel=2)
                return
        if mode == "offline":
            run_dir = Path(self.run.dir).parent  # .../wandb/offline-run-<time>-<id>; run.dir is its files/
            print(f"W&B is logging offline (no API key, or WANDB_MODE=offline); upload later with: "
                  f"wandb sync {run_dir}")

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._guard("log", lambda: self.run.log(dict(metrics), step=step))

    def log_rows(self, rows: pd.DataFrame, name: str = "results") -> None:
        def log() -> None:
            # wandb.Table wants one type per column; nested values arrive as JSON text from the store already.
            frame = rows.copy()
            for column in frame.columns:
                if frame[column].dtype == object:
                    frame[column] = frame[column].map(lambda v: v if v is None or isinstance(v, str) else str(v))
            self.run.log({name: self._wandb.Table(dataframe=frame)})

        self._guard("log_rows", log)

    def log_images(self, images: Mapping[str, Path]) -> None:
        self._guard("log_images", lambda: self.run.log(
            {name: self._wandb.Image(str(path)) for name, path in images.items() if Path(path).exists()}))

    def log_files(self, paths: list[Path], name: str) -> None:
        def log() -> None:
            artifact = self._wandb.Artifact(name=name, type="results")
            for path in map(Path, paths):
                if path.is_dir():
                    artifact.add_dir(str(path), name=path.name)
                elif path.exists():
                    artifact.add_file(str(path))
            self.run.log_artifact(artifact)

        self._guard("log_files", log)

    def finish(self) -> None:
        if self.run is None:
            return
        self._guard("finish", self.run.finish)
        self.run = None
