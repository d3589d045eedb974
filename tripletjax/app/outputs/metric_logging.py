"""Training metrics written as JSON lines (for scripts and the report) and TensorBoard events."""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import numpy as np



def _to_python(value: Any):
  if isinstance(value, dict):
    return {str(k): _to_python(v) for k, v in value.items()}
  if isinstance(value, (np.generic, np.ndarray)) or hasattr(value, "item"):
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()
  return value


class MetricLog:
  """Appends records to `<workdir>/<name>.jsonl` and scalars to TensorBoard.

  Args:
    workdir: run directory.
    name: file stem, e.g. "metrics" (training steps) or "eval" (evaluations).
    keep_until_step: on resume, records logged after this step (by the killed run, after its
      last checkpoint) are dropped, so the curve continues exactly where the checkpoint was.
    tensorboard: also write TensorBoard event files under `<workdir>/tensorboard`.
  """

  def __init__(self, workdir: str, name: str, keep_until_step: int | None = None,
               tensorboard: bool = True, enabled: bool = True):
    self.path = os.path.join(workdir, f"{name}.jsonl")
    self._enabled = enabled
    self._name = name
    if enabled and keep_until_step is not None and os.path.exists(self.path):
      kept = [r for r in read_metrics_jsonl(self.path) if r.get("step", 0) <= keep_until_step]
      with open(self.path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
    elif enabled and keep_until_step is None and os.path.exists(self.path):
      os.remove(self.path)  # A fresh run: start a fresh log.
    self._writer = None
    if enabled and tensorboard:
      from tensorboardX import SummaryWriter  # Imported lazily: it is slow to import.
      self._writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, record: dict) -> dict:
    record = {"step": int(step), **_to_python(record)}
    if not self._enabled:
      return record
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._writer is not None:
      for key, value in record.items():
        if isinstance(value, (int, float)) and key != "step":
          self._writer.add_scalar(f"{self._name}/{key}", value, step)
        elif isinstance(value, dict):
          for sub_key, sub_value in value.items():
            if isinstance(sub_value, (int, float)):
              self._writer.add_scalar(f"{self._name}/{key}@{sub_key}", sub_value, step)
      self._writer.flush()
    return record

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def read_metrics_jsonl(path) -> list[dict]:
  """Reads one JSON object per line, skipping blank lines.

  A run killed mid-write leaves a truncated last line; that line is dropped (with a warning).
  An unparsable line anywhere else means real corruption and raises.

  Args:
    path: the .jsonl file.

  Returns:
    The records, in file order.
  """
  with open(path, encoding="utf-8") as jsonl_file:
    lines = jsonl_file.read().splitlines()
  numbered = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
  records = []
  for position, (number, line) in enumerate(numbered):
    try:
      record = json.loads(line)
    except json.JSONDecodeError as error:
      if position == len(numbered) - 1:
        warnings.warn(f"{os.fspath(path)}: dropping truncated last line {number}.", stacklevel=2)
        break
      raise ValueError(f"{os.fspath(path)}, line {number}: invalid JSON ({error}).") from error
    if not isinstance(record, dict):
      raise ValueError(
          f"{os.fspath(path)}, line {number}: expected a JSON object, got "
          f"{type(record).__name__}.")
    records.append(record)
  return records
