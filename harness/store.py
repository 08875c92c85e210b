"""The tidy results store: one row per measurement, under results/<experiment>/.

Each job appends to its own part file, `parts/<job_id>.parquet` (and a .csv twin for humans), so many jobs
(Hydra multirun, submitit, torchrun ranks) write to one store without clobbering each other. Every write goes
to a temporary file in the same folder and is moved into place with os.replace, so a run killed at any moment
leaves every file readable: the previous complete version or the new one, never half of one.
`consolidate()` merges the parts into results.parquet / results.csv.

A part that cannot be read (a disk that filled, a copy cut short) is reported by name, moved to parts/damaged/ and
rebuilt from its CSV twin where that is readable; every other part is read as usual. Temporary files left by a
write that was killed are removed once they are STALE_TMP_S old.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd
import pyarrow

from .environment import code_version
from .schema import BASE, FINAL_STATUSES, STATUSES, check_row, from_text  # noqa: F401  (STATUSES: re-exported)

# Columns every row has, whatever produced it; each kind's own are in harness/schema.py.
BASE_COLUMNS = tuple(BASE)
# A temporary file this old is no write in progress (a part is written in milliseconds) but one that was killed.
STALE_TMP_S = 300.0
# What reading a damaged Parquet or CSV file raises.
UNREADABLE = (OSError, ValueError, pyarrow.ArrowException, pd.errors.ParserError)
log = logging.getLogger(__name__)


def config_hash(config: Mapping[str, Any]) -> str:
    """Stable short hash of a point's identifying config (key order does not matter)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_UMASK = os.umask(0)
os.umask(_UMASK)


class ResultsWriteError(OSError):
    """A results file could not be written (a full disk, a read-only mount): names the file; what was written
    before stays as it was."""

    def __init__(self, path: Path, error: OSError) -> None:
        super().__init__(error.errno, f"cannot write {path}: {error.strerror or error}")
        self.path = path

    def __str__(self) -> str:
        return self.strerror


def _atomic_write(path: Path, write) -> None:
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results are meant to be shared
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None and os.path.exists(tmp):
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(error, OSError) and not isinstance(error, ResultsWriteError):
            raise ResultsWriteError(path, error) from error
        raise


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """Atomically write `frame` as Parquet or CSV, by the path's suffix."""
    if path.suffix == ".parquet":
        _atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))
    else:
        _atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def read_part(path: Path) -> pd.DataFrame:
    """One part file, read in one go and parsed from memory. Another job may os.replace it at any moment; that
    swaps the name to a new complete file, but a reader that opens the name twice (footer, then row groups) could
    mix the old and the new file. The bytes of one open are always one complete version."""
    return pd.read_parquet(io.BytesIO(path.read_bytes()))


def default_job_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{socket.gethostname()}-{os.getpid()}"


class ResultsStore:
    def __init__(self, root: str | os.PathLike, experiment: str, job_id: str | None = None) -> None:
        self.root = Path(root)
        self.experiment = experiment
        self.dir = self.root / experiment
        self.job_id = job_id or default_job_id()
        self._rows: list[dict[str, Any]] = []

    @property
    def rows_written(self) -> int:
        """Rows this job has appended (each append rewrites its part file whole)."""
        return len(self._rows)

    @property
    def part_path(self) -> Path:
        return self.dir / "parts" / f"{self.job_id}.parquet"

    def check_writable(self) -> None:
        """Raise a clear error before any work if the store's folder cannot be written."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=self.dir, prefix=".write-probe-", delete=True)
            probe.close()
        except OSError as error:
            raise PermissionError(f"results directory {self.dir} is not writable: {error}") from None
        self.clean_stale_tmp()

    def append(self, rows: dict[str, Any] | Iterable[dict[str, Any]]) -> None:
        """Add rows and rewrite this job's part files atomically (part files are small)."""
        rows = [rows] if isinstance(rows, Mapping) else list(rows)
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        checked = []
        for row in rows:
            full = {"experiment": self.experiment, "job_id": self.job_id, "timestamp": now, "reason": ""}
            full.update(row)
            check_row(full)  # every row before any is kept: a refused batch leaves nothing behind
            checked.append(full)
        frame = _frame(self._rows + checked)
        write_table(frame, self.part_path)
        write_table(frame, self.part_path.with_suffix(".csv"))
        self._rows.extend(checked)  # counted as saved once both files hold them

    def read(self) -> pd.DataFrame:
        """Every row of the experiment: all parts (the consolidated file is only a merged copy of them)."""
        frames = []
        for path in sorted((self.dir / "parts").glob("*.parquet")):
            try:
                frames.append(read_part(path))
            except UNREADABLE as error:
                rebuilt = self._set_aside(path, error)
                if rebuilt is not None:
                    frames.append(rebuilt)
        if not frames:
            return pd.DataFrame(columns=list(BASE_COLUMNS))
        return pd.concat(frames, ignore_index=True, sort=False)

    def _set_aside(self, path: Path, error: BaseException) -> pd.DataFrame | None:
        """Move an unreadable part to parts/damaged/ and return its rows from the CSV twin, if that can be read."""
        twin = path.with_suffix(".csv")
        try:
            rows = pd.read_csv(twin, dtype=str, keep_default_na=False)  # no type guessing: a hash of digits
            if not {"config_hash", "status"} <= set(rows.columns):
                raise ValueError(f"{twin.name} has no config_hash/status columns")
            rows = from_text(rows)  # the schema's types back
        except UNREADABLE:
            rows = None
        aside = path.parent / "damaged" / path.name
        if aside.exists():  # damaged before: keep both
            aside = aside.with_name(f"{path.stem}.{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}")
        try:
            aside.parent.mkdir(exist_ok=True)
            os.replace(path, aside)
            if rows is not None:
                write_table(rows, path)
            moved = f"moved to {aside}"
        except OSError as move_error:
            moved = f"left in place ({move_error.strerror or move_error})"
        cause = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else 'empty'}"
        if rows is not None:
            log.warning("damaged part file %s (%s): %s, its %d rows rebuilt from %s", path, cause, moved,
                        len(rows), twin.name)
        else:
            log.warning("damaged part file %s (%s): %s; no readable CSV twin, so its rows are not read", path,
                        cause, moved)
        return rows

    def clean_stale_tmp(self) -> list[Path]:
        """Remove the temporary files of writes that were killed (older than STALE_TMP_S); returns them."""
        now, removed = time.time(), []
        for folder in (self.dir, self.dir / "parts"):
            for path in folder.glob(".*.tmp"):
                try:
                    if now - path.stat().st_mtime > STALE_TMP_S:
                        path.unlink()
                        removed.append(path)
                except OSError:
                    continue
        return removed

    def read_job(self) -> pd.DataFrame:
        """This job's rows only."""
        frame = self.read()
        return frame[frame["job_id"] == self.job_id].reset_index(drop=True) if not frame.empty else frame

    def read_resumable(self) -> pd.DataFrame:
        """The rows that resume may reuse: those recorded by this code (`environment.code_version`). A point
        recorded by other code is measured again; its old rows stay in the store, and the report shows the newest."""
        frame = self.read()
        if frame.empty or "env_code_version" not in frame:
            return frame.iloc[0:0]
        return frame[frame["env_code_version"] == code_version()].reset_index(drop=True)

    def done_hashes(self, statuses: tuple[str, ...] = FINAL_STATUSES) -> set[str]:
        """config_hash of points this code already recorded with a final status (resume skips these)."""
        frame = self.read_resumable()
        if frame.empty:
            return set()
        return set(frame.loc[frame["status"].isin(statuses), "config_hash"])

    def consolidate(self) -> pd.DataFrame:
        self.clean_stale_tmp()
        frame = self.read()
        write_table(frame, self.dir / "results.parquet")
        write_table(frame, self.dir / "results.csv")
        return frame


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    # Parquet needs one type per column: nested values (lists, dicts) become JSON text.
    for column in frame.columns:
        if frame[column].map(lambda x: isinstance(x, (list, tuple, dict))).any():
            frame[column] = frame[column].map(lambda x: json.dumps(x, default=str)
                                              if isinstance(x, (list, tuple, dict)) else x)
    return frame
