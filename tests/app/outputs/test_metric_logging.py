"""The metrics log: reading it back tolerates a run killed mid-line, nothing else."""

from __future__ import annotations

import json

import pytest

from tripletjax.app.outputs import metric_logging


def test_read_metrics_jsonl_tolerates_truncated_last_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  records = [{"step": i, "loss": 1.0 / (i + 1)} for i in range(3)]
  text = "".join(json.dumps(record) + "\n" for record in records)
  path.write_text(text + '{"step": 3, "lo')  # the run was killed mid-write
  with pytest.warns(UserWarning, match="truncated"):
    assert metric_logging.read_metrics_jsonl(path) == records
  path.write_text(text + "\n")  # complete file, trailing blank line
  assert metric_logging.read_metrics_jsonl(path) == records
  path.write_text(text.rstrip("\n"))  # complete last line without its newline
  assert metric_logging.read_metrics_jsonl(path) == records


def test_read_metrics_jsonl_rejects_corruption_before_the_end(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 0}\n{"step": 1\n{"step": 2}\n')
  with pytest.raises(ValueError, match="line 2"):
    metric_logging.read_metrics_jsonl(path)
  path.write_text('{"step": 0}\n[1, 2]\n')
  with pytest.raises(ValueError, match="JSON object"):
    metric_logging.read_metrics_jsonl(path)
