"""Everything a researcher looks at after a run: projector files, plots and `report.md`."""

from __future__ import annotations

import json
import os

from tripletjax.app import exports
from tripletjax.app import metric_logging


def _same_dataset(run_dir: str, dataset_name: str) -> bool:
  """Whether the run in `run_dir` trained on `dataset_name` (per its config.json)."""
  try:
    with open(os.path.join(run_dir, "config.json")) as f:
      return json.load(f)["data"]["name"] == dataset_name
  except (OSError, ValueError, KeyError):
    return False


def write_exports(workdir, config, dataset, test_embeddings, final_metrics) -> None:
  """Projector files, plots and the report: everything a researcher looks at."""
  limit = config.export.projector_max_points
  exports.write_projector_files(
      os.path.join(workdir, "projector"), test_embeddings[:limit], dataset.test.labels[:limit],
      images=dataset.test.images[:limit], class_names=dataset.class_names)
  # Curves of this run and of its siblings (same parent directory): a semi-hard run and a
  # batch-hard run side by side is one override and one report away.
  runs = {}
  parent = os.path.dirname(os.path.abspath(workdir))
  for name in sorted(os.listdir(parent)):
    path = os.path.join(parent, name, "metrics.jsonl")
    if _same_dataset(os.path.join(parent, name), config.data.name) and os.path.exists(path):
      if records := metric_logging.read_metrics_jsonl(path):
        runs[name] = records
  plots = os.path.abspath(os.path.join(workdir, "plots"))
  figures = [os.path.join(plots, "training_curves.png"), os.path.join(plots, "eval_history.png")]
  exports.plot_training_curves(runs, figures[0])
  exports.plot_eval_history(metric_logging.read_metrics_jsonl(os.path.join(workdir, "eval.jsonl")),
                            figures[1])
  for prefix in ("pca_2d_", "pca_3d_"):  # The last evaluation's PCA plots.
    latest = sorted(f for f in os.listdir(plots) if f.startswith(prefix))[-1:]
    figures += [os.path.join(plots, f) for f in latest]
  exports.write_report(workdir, config_text=str(config), eval_metrics=final_metrics,
                       figures=figures, runs=list(runs))


# The evaluation curves of the pair workflow (`pair_evaluation`).
PAIR_EVAL_CURVES = (("triplet_accuracy", "triplet accuracy"),
                    ("positive_similarity", "cosine similarity anchor-positive"),
                    ("negative_similarity", "cosine similarity anchor-negative"),
                    ("recall_at_k/1", "recall@1"), ("recall_at_k/5", "recall@5"))


def write_pair_exports(workdir, config, final_metrics, figures) -> None:
  """Training curves, evaluation history and the report of a pair run; `figures` (e.g. the
  retrieval picture) come first in the report."""
  runs = {}
  parent = os.path.dirname(os.path.abspath(workdir))
  for name in sorted(os.listdir(parent)):
    path = os.path.join(parent, name, "metrics.jsonl")
    if _same_dataset(os.path.join(parent, name), config.data.name) and os.path.exists(path):
      if records := metric_logging.read_metrics_jsonl(path):
        runs[name] = records
  plots = os.path.abspath(os.path.join(workdir, "plots"))
  curves = [os.path.join(plots, "training_curves.png"), os.path.join(plots, "eval_history.png")]
  exports.plot_training_curves(runs, curves[0])
  exports.plot_eval_history(metric_logging.read_metrics_jsonl(os.path.join(workdir, "eval.jsonl")),
                            curves[1], curves=PAIR_EVAL_CURVES)
  exports.write_report(workdir, config_text=str(config), eval_metrics=final_metrics,
                       figures=list(figures) + curves, runs=list(runs))
