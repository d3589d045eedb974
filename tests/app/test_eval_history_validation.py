"""The evaluation-history plot shows the validation curves beside the test curves."""

from __future__ import annotations

import csv

import numpy as np

from tripletjax.app import exports


def test_eval_history_plots_validation_curves(tmp_path):
  records = [{"step": 10 * i, "precision_at_1": 0.1 * i, "map_at_r": 0.05 * i,
              "validation_precision_at_1": 0.2 * i, "validation_map_at_r": 0.15 * i}
             for i in range(1, 4)]
  out_path = exports.plot_eval_history(records, tmp_path / "eval.png")
  with open(exports.plot_data_path(out_path), newline="") as f:
    rows = list(csv.DictReader(f))
  series = {}
  for row in rows:
    series.setdefault(row["series"], []).append((float(row["x"]), float(row["y"])))
  assert set(series) == {"precision@1", "MAP@R", "validation precision@1", "validation MAP@R"}
  np.testing.assert_allclose(series["validation precision@1"], [(10, 0.2), (20, 0.4), (30, 0.6)])
  np.testing.assert_allclose(series["validation MAP@R"], [(10, 0.15), (20, 0.3), (30, 0.45)])
