"""A worker process that measures points one at a time and can fail alone.

The parent sends (function name, kwargs) over a pipe and waits at most the point's time budget. A point that
runs past it has its worker killed (status `timeout`); a worker that dies (the kernel's OOM killer, a segfault
in a kernel) becomes status `oom` or `error`; the next point gets a fresh worker. Importing torch and every
backend takes seconds, so one worker serves many points; peak memory stays per point because the worker
resets the RSS high-water mark before each measured call (measure.peak_memory_bytes).

`isolation=inline` runs the same functions in this process, without time budget or isolation (debugging).
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import warnings
from typing import Any

# What a worker can run, and the module that holds it (imported in the worker once, at start).
_FUNCTIONS = {"measure_point": "measure", "time_point": "measure", "matmul_ceiling": "measure",
              "run_measurement": "targets"}


def _function(name: str):
    return getattr(importlib.import_module(f"{__package__}.{_FUNCTIONS[name]}"), name)


def _serve(connection, memory_limit_bytes: int | None) -> None:
    """Worker main loop: import once, optionally cap the data segment, then answer requests until told to stop."""
    warnings.filterwarnings("ignore", message=".*xFormers.*")
    import attention_impls

    from . import measure

    attention_impls.backends()  # import every backend now, not inside the first point's time budget
    for module in set(_FUNCTIONS.values()):
        importlib.import_module(f"{__package__}.{module}")
    if memory_limit_bytes is not None:
        import resource

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
        self.starts = 0

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")  # fork would copy this process's threads and CUDA state
        parent_end, child_end = context.Pipe(duplex=True)
        process = context.Process(target=_serve, args=(child_end, self.memory_limit_bytes), daemon=True,
                                  name="shootout-worker")
        process.start()
        child_end.close()
        self._process, self._connection = process, parent_end
        self.starts += 1
        if not parent_end.poll(self.startup_timeout_s):
            self.close(kill=True)
            raise RuntimeError(f"the benchmark worker did not start within {self.startup_timeout_s:.0f} s")
        try:
            parent_end.recv()
        except EOFError:
            code = process.exitcode
            self.close(kill=True)
            raise RuntimeError(f"the benchmark worker died while starting (exit code {code})") from None

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
        self._connection.send((name, kwargs))
        if not self._connection.poll(timeout_s):
            self.close(kill=True)
            return {"status": "timeout", "reason": f"exceeded the time budget of {timeout_s:g} s "
                                                    f"(benchmark.timeout_s); worker killed"}
        try:
            kind, payload = self._connection.recv()
        except (EOFError, ConnectionError):
            self._process.join(5)
            code = self._process.exitcode
            self.close(kill=True)
            if code == -signal.SIGKILL:
                return {"status": "oom", "reason": "worker killed by SIGKILL (most likely the kernel's OOM killer)"}
            return {"status": "error", "reason": f"worker died with exit code {code}"}
        if kind == "failed":
            status, reason = payload
            return {"status": status, "reason": reason}
        return payload

    def close(self, kill: bool = False) -> None:
        """Stop the worker: politely after a clean run, by SIGKILL after a timeout or crash."""
        process, connection = self._process, self._connection
        self._process = self._connection = None
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

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
