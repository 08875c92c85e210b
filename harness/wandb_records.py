"""Read an offline W&B run back (`wandb/offline-run-*/run-*.wandb`) without uploading it.

wandb 0.31 no longer ships a Python reader for its transaction log, so this is a small one: the file is a
7-byte header (":W&B", 0xBEE1, version) followed by LevelDB-log framed records (32 KiB blocks, each record
chunk a 7-byte header: CRC32C, length, type FULL/FIRST/MIDDLE/LAST) holding `wandb_internal_pb2.Record`
protobufs. It serves the tests and anyone checking what a run would upload (`wandb sync` sends the same file).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_BLOCK = 32768
_CHUNK_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """What an offline run recorded: the history rows in order, the final summary, the config and metric specs."""

    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # define_metric: name -> {step_metric, ...}
    run: dict[str, Any] = field(default_factory=dict)  # name, group, job_type, tags
    artifacts: list[dict[str, Any]] = field(default_factory=list)  # logged: name, type, files
    used_artifacts: list[str] = field(default_factory=list)

    def series(self, key: str) -> list[tuple[Any, Any]]:
        """(step metric value, value) for every history row holding `key`, with the step its define_metric names."""
        step_key = self.metrics.get(key, {}).get("step_metric") or self._glob_step(key) or "_step"
        return [(row.get(step_key), row[key]) for row in self.history if key in row]

    def _glob_step(self, key: str) -> str | None:
        for name, spec in self.metrics.items():
            if name.endswith("*") and key.startswith(name[:-1]) and spec.get("step_metric"):
                return spec["step_metric"]
        return None


def _records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log (it does not start with ':W&B')")
    records, pending, offset = [], b"", 7
    while offset + _CHUNK_HEADER <= len(data):
        left_in_block = _BLOCK - offset % _BLOCK
        if left_in_block < _CHUNK_HEADER:  # the writer pads a block's tail that cannot hold a header
            offset += left_in_block
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, offset)
        payload = data[offset + _CHUNK_HEADER:offset + _CHUNK_HEADER + length]
        offset += _CHUNK_HEADER + length
        if kind == 0 and length == 0:
            continue
        if kind == _FULL:
            records.append(payload)
        elif kind == _FIRST:
            pending = payload
        elif kind == _MIDDLE:
            pending += payload
        elif kind == _LAST:
            records.append(pending + payload)
            pending = b""
    return records


def _items(items) -> dict[str, Any]:
    out = {}
    for item in items:
        key = item.key or "/".join(item.nested_key)
        out[key] = json.loads(item.value_json)
    return out


def read_offline_run(run_dir: str | Path) -> OfflineRun:
    """Parse `run_dir` (an `offline-run-*` folder, or its `.wandb` file) into an OfflineRun."""
    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    path = run_dir if run_dir.suffix == ".wandb" else next(run_dir.glob("run-*.wandb"))
    result = OfflineRun()
    for raw in _records(path):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            result.history.append(_items(record.history.item))
        elif kind == "summary":
            for item in record.summary.update:
                result.summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                result.config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "metric":
            metric = record.metric
            name = metric.name or metric.glob_name
            result.metrics[name] = {"step_metric": metric.step_metric or None}
        elif kind == "run":
            run = record.run
            result.run = {"name": run.display_name, "group": run.run_group, "job_type": run.job_type,
                          "tags": list(run.tags), "id": run.run_id}
        elif kind == "artifact":
            artifact = record.artifact
            result.artifacts.append({"name": artifact.name, "type": artifact.type,
                                     "files": [entry.path for entry in artifact.manifest.contents]})
        elif kind == "use_artifact":
            result.used_artifacts.append(record.use_artifact.name or record.use_artifact.partial.artifact_name)
    return result
