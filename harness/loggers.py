"""Experiment loggers, selected by the `logger` config group and built with hydra.utils.instantiate.

The runner talks to every logger through these methods only; `NullLogger` (logger=none, the default) does
nothing. `WandbLogger` (logger=wandb) tracks each job as one W&B run.
"""

from __future__ import annotations

import netrc
import os
import re
import socket
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence
from urllib.parse import urlparse

import pandas as pd


class Logger(Protocol):
    """One tracked run per runner job (speed, retrieval, ...), then one for the report.

    Curves are named series: `log_curve("retrieval/dense (sdpa)/lr=0.003/seed=0", "step", 5, {"loss": ...})`
    logs `<curve>/loss` against `<curve>/step`, so every series has its own x-axis and none can step back.
    """

    def start(self, config: Mapping[str, Any], experiment: str, job: str, name: str) -> None: ...

    def log_curve(self, curve: str, step_key: str, step: float, metrics: Mapping[str, float]) -> None: ...

    def log_summary(self, values: Mapping[str, Any]) -> None: ...

    def log_rows(self, rows: pd.DataFrame, name: str) -> None: ...

    def log_images(self, images: Mapping[str, Path]) -> None: ...

    def log_files(self, paths: list[Path], name: str, kind: str = "results") -> None: ...

    def use_artifacts(self, names: Sequence[str]) -> None: ...

    def finish(self) -> None: ...


class NullLogger:
    def start(self, config, experiment, job, name):
        pass

    def log_curve(self, curve, step_key, step, metrics):
        pass

    def log_summary(self, values):
        pass

    def log_rows(self, rows, name):
        pass

    def log_images(self, images):
        pass

    def log_files(self, paths, name, kind="results"):
        pass

    def use_artifacts(self, names):
        pass

    def finish(self):
        pass


def artifact_name(*parts: str) -> str:
    """A W&B artifact name from parts: letters, digits, '-', '_' and '.' only (W&B's rule)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(parts)).strip("-")


def rows_artifact(experiment: str, job: str) -> str:
    """The artifact holding the rows one job of `experiment` wrote (logged by its run, used by the report's)."""
    return artifact_name("rows", experiment, job)


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


# How long wandb.init may try the server (W&B's own default is 90 s, and it retries past that with a bad key).
INIT_TIMEOUT_S = 20.0


def _unreachable(timeout_s: float = 3.0) -> str | None:
    """Why the W&B server cannot be reached (no DNS, no route, refused), or None: a check in milliseconds that
    spares a machine without network wandb.init's minutes of retries."""
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    host, port = url.hostname or "api.wandb.ai", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as error:
        return f"{host}:{port}: {error}"
    return None


class WandbLogger:
    """Weights & Biases tracking (logger=wandb): one run per runner job, then a report run, grouped by experiment.

    Runs are named `<experiment>/<job>` (and `#<n>` for the n-th job of a Hydra multirun), with `job_type` the
    runner job (speed, probe, retrieval, distributed, report). Each series of points is its own curve with its
    own x-axis (`define_metric`): a training run against its step, a speed series against `seq_len`; nothing is
    logged against W&B's global step, so no point is dropped as a step that goes backwards. Each job run logs
    the rows it wrote as a table and a `rows` artifact; the report run declares those as its inputs (online:
    `use_artifact`, the lineage W&B draws; offline W&B cannot, so their names go to the config as
    `input_artifacts`) and logs the consolidated store and the report as artifacts.

    Under a W&B sweep agent (WANDB_SWEEP_ID set: `wandb agent` starts `shootout` once per sweep point) the
    agent owns one run per point, so every job and the report log into that one run, named after its first
    job; the keys stay apart by their job prefix (speed/..., retrieval/...).

    Without an API key, or with WANDB_MODE=offline, runs are written offline under `dir` and can be uploaded
    later with `wandb sync <run dir>`. W&B being absent, unreachable or failing never fails the benchmark:
    every call into wandb is guarded, warns with the error, and the run goes on without tracking.
    """

    def __init__(self, project: str = "attention-shootout", entity: str | None = None, mode: str | None = None,
                 group: str | None = None, tags: Sequence[str] = (), dir: str | os.PathLike | None = None) -> None:
        if mode not in (None, "online", "offline", "disabled"):
            raise ValueError(f"logger.mode={mode!r} is not a W&B mode; choose online, offline, disabled, or null "
                             f"(online with an API key, else offline)")
        if isinstance(tags, str):
            raise ValueError(f"logger.tags={tags!r} must be a list of strings, e.g. logger.tags=[a,b]")
        self.project, self.entity, self.mode, self.group = project, entity, mode, group
        self.tags = tuple(str(tag) for tag in tags)
        self.dir = Path(dir) if dir is not None else None
        self.run: Any = None
        self._wandb: Any = None
        self._curves: set[str] = set()
        self._experiment = ""
        self._job = ""
        self._offline = False
        self._offline_printed = False

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

    def start(self, config: Mapping[str, Any], experiment: str, job: str, name: str) -> None:
        try:
            import wandb
        except ImportError as error:
            warnings.warn(f"logger=wandb but wandb is not importable ({error}); install it with "
                          f"`pip install wandb`. Continuing without tracking.", RuntimeWarning, stacklevel=2)
            return
        self._wandb = wandb
        self._job = job
        if self.run is not None and self._in_sweep():
            return  # the sweep agent's run carries every job of this point
        self._curves, self._experiment = set(), experiment
        if os.environ.get("WANDB_MODE") == "":  # set but empty: wandb's settings refuse it and init fails
            del os.environ["WANDB_MODE"]
        mode = self._resolve_mode()
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
        kwargs = dict(project=self.project, entity=self.entity, group=self.group or experiment, name=name,
                      tags=[*self.tags, experiment, job], dir=str(self.dir) if self.dir else None,
                      config=dict(config), job_type=job,
                      reinit="create_new")  # one run per job: several jobs in one process never share a run
        if mode == "online":
            unreachable = _unreachable()
            if unreachable:
                warnings.warn(f"W&B server unreachable ({unreachable}); logging offline instead",
                              RuntimeWarning, stacklevel=2)
                mode = "offline"
        try:
            self.run = wandb.init(mode=mode, settings=wandb.Settings(init_timeout=INIT_TIMEOUT_S), **kwargs)
        except Exception as error:  # noqa: BLE001 - e.g. unreachable server: fall back to offline
            if mode != "online":
                warnings.warn(f"W&B init failed ({type(error).__name__}: {error}); continuing without tracking",
                              RuntimeWarning, stacklevel=2)
                return
            warnings.warn(f"W&B online init failed ({type(error).__name__}: {error}); logging offline instead",
                          RuntimeWarning, stacklevel=2)
            try:
                self.run, mode = wandb.init(mode="offline", settings=wandb.Settings(init_timeout=INIT_TIMEOUT_S),
                                            **kwargs), "offline"
            except Exception as error2:  # noqa: BLE001
                warnings.warn(f"W&B offline init failed too ({error2}); continuing without tracking",
                              RuntimeWarning, stacklevel=2)
                return
        self._offline = mode == "offline"
        if self._offline:
            run_dir = Path(self.run.dir).parent  # .../wandb/offline-run-<time>-<id>; run.dir is its files/
            if not self._offline_printed:
                print(f"W&B is logging offline (no API key, or WANDB_MODE=offline); upload later with: "
                      f"wandb sync {run_dir.parent}/offline-run-*")
                self._offline_printed = True

    def log_curve(self, curve: str, step_key: str, step: float, metrics: Mapping[str, float]) -> None:
        def log() -> None:
            x = f"{curve}/{step_key}"
            if curve not in self._curves:
                self.run.define_metric(x, hidden=True)
                self.run.define_metric(f"{curve}/*", step_metric=x)
                self._curves.add(curve)
            self.run.log({**{f"{curve}/{key}": value for key, value in metrics.items()}, x: step})

        self._guard("log", log)

    def log_summary(self, values: Mapping[str, Any]) -> None:
        self._guard("summary", lambda: self.run.summary.update(dict(values)))

    def log_rows(self, rows: pd.DataFrame, name: str) -> None:
        def log() -> None:
            # wandb.Table wants one type per column; nested values arrive as JSON text from the store already.
            frame = rows.copy()
            for column in frame.columns:
                if frame[column].dtype == object:
                    frame[column] = frame[column].map(lambda v: v if v is None or isinstance(v, str) else str(v))
            table = self._wandb.Table(dataframe=frame)
            self.run.log({f"{name}/rows": table})
            artifact = self._wandb.Artifact(rows_artifact(self._experiment, name), type="rows",
                                            metadata={"rows": len(frame), "job": name})
            artifact.add(table, "rows")
            self.run.log_artifact(artifact)

        self._guard("log_rows", log)

    def log_images(self, images: Mapping[str, Path]) -> None:
        self._guard("log_images", lambda: self.run.log(
            {f"plots/{name}": self._wandb.Image(str(path)) for name, path in images.items() if Path(path).exists()}))

    def log_files(self, paths: list[Path], name: str, kind: str = "results") -> None:
        def log() -> None:
            artifact = self._wandb.Artifact(name=artifact_name(name), type=kind)
            for path in map(Path, paths):
                if path.is_dir():
                    artifact.add_dir(str(path), name=path.name)
                elif path.exists():
                    artifact.add_file(str(path))
            self.run.log_artifact(artifact)

        self._guard("log_files", log)

    def use_artifacts(self, names: Sequence[str]) -> None:
        def use() -> None:
            if self._offline:
                self.run.config.update({"input_artifacts": list(names)}, allow_val_change=True)
                return
            for artifact_ref in names:
                self.run.use_artifact(artifact_ref if ":" in artifact_ref else f"{artifact_ref}:latest")

        self._guard("use_artifacts", use)

    @staticmethod
    def _in_sweep() -> bool:
        return bool(os.environ.get("WANDB_SWEEP_ID"))

    def finish(self) -> None:
        # Under a sweep agent the one run stays open across jobs and is finished after the report's job.
        if self.run is None or (self._in_sweep() and self._job != "report"):
            return
        self._guard("finish", self.run.finish)
        self.run = None
