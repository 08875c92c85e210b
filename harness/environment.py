"""Environment fingerprint recorded with every row: what ran where, and how loaded the machine was."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
from pathlib import Path

import torch


@functools.cache
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def _git_commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# The source that produces numbers: the attention library and the harness, less the reporting (which only draws
# what was measured). Every row records its hash; resume reuses only rows of this hash (ResultsStore.read_resumable),
# so a point recorded by other code is measured again.
_MEASURING_SOURCES = ("attention_impls", "harness")
_NOT_MEASURING = ("harness/report",)


@functools.cache
def code_version() -> str:
    """sha256 (12 hex digits) of this checkout's measuring source files; works without git."""
    return source_digest(Path(__file__).resolve().parent.parent)


def source_digest(root: Path) -> str:
    """sha256 (12 hex digits) of the paths and contents of the measuring source files under `root`."""
    digest = hashlib.sha256()
    for package in _MEASURING_SOURCES:
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            if relative.startswith(_NOT_MEASURING):
                continue
            digest.update(relative.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def _xformers_version() -> str:
    try:
        from importlib.metadata import version

        return version("xformers")
    except Exception:
        return "not installed"


def fingerprint(device: str = "cpu") -> dict[str, object]:
    """Flat env_* columns for a result row."""
    if device.startswith("cuda") and torch.cuda.is_available():
        device_name = torch.cuda.get_device_name(torch.device(device))
    else:
        device_name = _cpu_model()
    return {
        "env_torch": torch.__version__,
        "env_xformers": _xformers_version(),
        "env_python": platform.python_version(),
        "env_device": device,
        "env_device_name": device_name,
        "env_cpu_model": _cpu_model(),
        "env_threads": torch.get_num_threads(),
        "env_git_commit": _git_commit(),
        "env_code_version": code_version(),
        "env_load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
        "env_hostname": platform.node(),
    }
