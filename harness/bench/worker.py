"""A worker process that measures points one at a time and can fail alone.

The parent sends (function name, kwargs) over a pipe and waits at most the point's time budget. A point that
runs past it has its worker killed (status `timeout`). A worker that dies becomes a status by what killed it
(`death_status`): the kernel's OOM killer (a SIGKILL while the OOM-kill counter rose) or the memory limit is
`oom`; a signal from outside (kill -9 by a person, SIGTERM) is `killed`, which resume measures again; a crash it
raised itself (SIGSEGV, SIGABRT, an exit code) is `error`, with the last line the worker wrote to stderr. The
next point gets a fresh worker. Importing torch and every
backend takes seconds, so one worker serves many points; peak memory stays per point because the worker
resets the RSS high-water mark before each measured call (measure.peak_memory_bytes).

`isolation=inline` runs the same functions in this process, without time budget or isolation (debugging).
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import re
import signal
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

# What a worker can run, and the module that holds it (imported in the worker once, at start).
_FUNCTIONS = {"measure_point": "measure", "time_point": "measure", "matmul_ceiling": "measure",
              "run_measurement": "targets"}


def _function(name: str):
    return getattr(importlib.import_module(f"{__package__}.{_FUNCTIONS[name]}"), name)


# Signals a process raises on itself when it crashes; any other signal that ends a worker was sent to it.
CRASH_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT, signal.SIGTRAP,
                 signal.SIGSYS)
# What a process prints when an allocation fails outside Python's reach (C++, OpenMP's thread stacks).
_OUT_OF_MEMORY = re.compile(r"bad_alloc|out of memory|cannot allocate|can't allocate|thread creation failed|"
                            r"resource temporarily unavailable|MemoryError", re.IGNORECASE)
# Where the kernel counts OOM kills: this cgroup (v2, then v1), then the whole machine.
OOM_COUNTERS = (Path("/sys/fs/cgroup/memory.events"), Path("/sys/fs/cgroup/memory/memory.oom_control"),
                Path("/proc/vmstat"))


def oom_kill_count() -> tuple[str, int] | None:
    """(where, how many OOM kills the kernel has recorded there), from the first counter readable here."""
    for path in OOM_COUNTERS:
        try:
            for line in path.read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == "oom_kill":
                    return str(path), int(value)
        except (OSError, ValueError):
            continue
    return None


def signal_name(number: int) -> str:
    """SIGKILL, SIGTERM, ... (or the number, for a signal without a name)."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def death_status(exitcode: int | None, oom_before: tuple[str, int] | None, oom_after: tuple[str, int] | None,
                 last_line: str = "", memory_limit_bytes: int | None = None) -> tuple[str, str]:
    """(status, reason) for a worker that died: what killed it, and the evidence."""
    said = f": {last_line}" if last_line else ""
    if exitcode is not None and exitcode < 0:
        number = -exitcode
        name = signal_name(number)
        if number == signal.SIGKILL and oom_before is not None and oom_after is not None:
            where, before = oom_before
            if oom_after[1] > before:
                return "oom", (f"worker killed by SIGKILL from the kernel's OOM killer (oom_kill in {where} rose from "
                               f"{before} to {oom_after[1]})")
            return "killed", (f"worker killed by SIGKILL from outside, not the OOM killer (oom_kill in {where} stayed "
                              f"{before}); measured again on resume")
        if number == signal.SIGKILL:
            return "killed", ("worker killed by SIGKILL (no OOM-kill counter readable here to tell the OOM killer from "
                              "a kill -9); measured again on resume")
        if number == signal.SIGABRT and memory_limit_bytes is not None and _OUT_OF_MEMORY.search(last_line):
            return "oom", (f"worker ran out of memory under benchmark.worker_memory_limit_gb="
                           f"{memory_limit_bytes / 2**30:g} ({name}){said}")
        if number in CRASH_SIGNALS:
            return "error", f"worker crashed with {name}{said}"
        return "killed", f"worker killed by {name} from outside; measured again on resume"
    if memory_limit_bytes is not None and _OUT_OF_MEMORY.search(last_line):
        return "oom", (f"worker ran out of memory under benchmark.worker_memory_limit_gb="
                       f"{memory_limit_bytes / 2**30:g} (exit code {exitcode}){said}")
    return "error", f"worker died with exit code {exitcode}{said}"


def _stderr_size(path: Path | None) -> int:
    try:
        return path.stat().st_size if path is not None else 0
    except OSError:
        return 0


def _last_line(path: Path | None, since: int = 0) -> str:
    """The last non-empty line a worker wrote to its stderr after byte `since` (this point's, not an earlier
    one's): the cause a C library prints before exiting."""
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(since, log.tell() - 4096))
            lines = [line.strip() for line in log.read().decode(errors="replace").splitlines() if line.strip()]
    except (OSError, TypeError):
        return ""
    return lines[-1][:300] if lines else ""


def die_with_parent(parent: int | None = None) -> None:
    """Linux: have the kernel SIGKILL this process when the process that started it (pid `parent`, passed in by
    that process) dies, kill -9 included, so no worker or rank outlives its run; elsewhere a no-op (the pipe's
    EOF still stops an idle worker)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid() if parent is None else parent
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _serve(connection, memory_limit_bytes: int | None, stderr_path: str | None = None,
           parent: int | None = None) -> None:
    """Worker main loop: import once, optionally cap the data segment, then answer requests until told to stop."""
    die_with_parent(parent)
    if stderr_path is not None:
        # fd 2 itself, so what C libraries print before they exit (libgomp, allocators) is kept for the reason
        log = os.open(stderr_path, os.O_WRONLY | os.O_APPEND)
        os.dup2(log, 2)
        os.close(log)
    warnings.filterwarnings("ignore", message=".*xFormers.*")
    import attention_impls

    from . import measure

    attention_impls.backends()  # import every backend now, not inside the first point's time budget
    for module in set(_FUNCTIONS.values()):
        importlib.import_module(f"{__package__}.{module}")
    if memory_limit_bytes is not None:
        import resource

        import torch

        # OpenMP's thread stacks count against the limit too: start its pool now, so a small limit fails a point
        # as an allocation in it, not as libgomp's exit(1) when it cannot create its threads.
        torch.ones(1 << 16).sum()

        # RLIMIT_DATA counts heap and private anonymous mappings (Linux >= 4.7): tensors. The limit is headroom
        # above what the imports already use, so an allocation past it fails in the worker as a real OOM.
        used = measure._proc_status_kib("VmData") * 1024
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        resource.setrlimit(resource.RLIMIT_DATA, (used + memory_limit_bytes, hard))
    connection.send(("ready", os.getpid()))
    while True:
        try:
            request = connection.recv()
        except EOFError:
            return
        if request is None:
            return
        name, kwargs = request
        try:
            connection.send(("ok", _function(name)(**kwargs)))
        except Exception as error:  # noqa: BLE001 - reported to the parent as a status row, with its reason
            connection.send(("failed", measure.classify_exception(error)))


def _forward(path: Path) -> None:
    """Pass on what a worker wrote to stderr (warnings a user should see), once it has stopped."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return
    if text.strip():
        sys.stderr.write(text if text.endswith("\n") else text + "\n")


class Worker:
    """`run(name, kwargs, timeout_s)` -> the function's result, or {"status": ..., "reason": ...} on failure."""

    def __init__(self, isolation: str = "process", memory_limit_gb: float | None = None,
                 startup_timeout_s: float = 300.0) -> None:
        if isolation not in ("process", "inline"):
            raise ValueError(f"isolation={isolation!r} must be 'process' or 'inline'")
        self.isolation = isolation
        self.memory_limit_bytes = None if memory_limit_gb is None else int(memory_limit_gb * 2**30)
        self.startup_timeout_s = startup_timeout_s
        self._process: multiprocessing.process.BaseProcess | None = None
        self._connection = None
        self._stderr: Path | None = None
        self.starts = 0

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")  # fork would copy this process's threads and CUDA state
        parent_end, child_end = context.Pipe(duplex=True)
        descriptor, stderr = tempfile.mkstemp(prefix="shootout-worker-", suffix=".stderr")
        os.close(descriptor)
        self._stderr = Path(stderr)
        process = context.Process(target=_serve, args=(child_end, self.memory_limit_bytes, stderr, os.getpid()),
                                  daemon=True, name="shootout-worker")
        try:
            process.start()
        except BaseException:
            self._stderr.unlink(missing_ok=True)
            self._stderr = None
            raise
        child_end.close()
        self._process, self._connection = process, parent_end
        self.starts += 1
        if not parent_end.poll(self.startup_timeout_s):
            self.close(kill=True)
            raise RuntimeError(f"the benchmark worker did not start within {self.startup_timeout_s:.0f} s")
        try:
            parent_end.recv()
        except EOFError:
            process.join(5)
            status, reason = death_status(process.exitcode, None, None, _last_line(self._stderr),
                                          self.memory_limit_bytes)
            self.close(kill=True)
            raise RuntimeError(f"the benchmark worker died while starting ({status}: {reason})") from None

    def run(self, name: str, kwargs: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        if name not in _FUNCTIONS:
            raise ValueError(f"unknown worker function {name!r}; choose one of {tuple(_FUNCTIONS)}")
        if self.isolation == "inline":
            from . import measure

            try:
                return _function(name)(**kwargs)
            except Exception as error:  # noqa: BLE001 - same contract as the process worker
                status, reason = measure.classify_exception(error)
                return {"status": status, "reason": reason}
        if self._process is None or not self._process.is_alive():
            self.close(kill=True)
            self._start()
        assert self._connection is not None and self._process is not None
        oom_before, stderr_at = oom_kill_count(), _stderr_size(self._stderr)
        self._connection.send((name, kwargs))
        if not self._connection.poll(timeout_s):
            self.close(kill=True)
            return {"status": "timeout", "reason": f"exceeded the time budget of {timeout_s:g} s "
                                                    f"(benchmark.timeout_s); worker killed"}
        try:
            kind, payload = self._connection.recv()
        except (EOFError, ConnectionError):
            self._process.join(5)
            status, reason = death_status(self._process.exitcode, oom_before, oom_kill_count(),
                                          _last_line(self._stderr, stderr_at), self.memory_limit_bytes)
            self.close(kill=True)
            return {"status": status, "reason": reason}
        if kind == "failed":
            status, reason = payload
            return {"status": status, "reason": reason}
        return payload

    def close(self, kill: bool = False) -> None:
        """Stop the worker: politely after a clean run, by SIGKILL after a timeout or crash."""
        process, connection, stderr = self._process, self._connection, self._stderr
        self._process = self._connection = self._stderr = None
        if process is None:
            return
        if not kill and process.is_alive():
            try:
                connection.send(None)
                process.join(10)
            except (BrokenPipeError, OSError):
                pass
        if process.is_alive():
            process.kill()
            process.join(10)
        if connection is not None:
            connection.close()
        if stderr is not None:
            _forward(stderr)
            stderr.unlink(missing_ok=True)

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        self.close(kill=exc_type is not None)  # stopped or failed: do not wait for the point in flight
