"""Everything a researcher looks at after a run: projector files, plots and `report.md`."""

from __future__ import annotations

import json
import os

import numpy as np

from tripletjax.app.data import images as images_lib
from tripletjax.app.evaluation import retrieval
from tripletjax.app.outputs import exports
from tripletjax.app.outputs import metric_logging


# The final evaluation's test embeddings [N, E] and labels [N], in the test split's order.
TEST_EMBEDDINGS_FILE = "test_embeddings.npz"


def _same_dataset(run_dir: str, dataset_name: str) -> bool:
  """Whether the run in `run_dir` trained on `dataset_name` (per its config.json)."""
  try:
    with open(os.path.join(run_dir, "config.json")) as f:
      return json.load(f)["data"]["name"] == dataset_name
  except (OSError, ValueError, KeyError):
    return False


def _sprite_images(images, limit: int):
  """The first `limit` test images for the projector's sprite; image files are decoded
  straight to thumbnail size rather than at the model's input size."""
  if not images_lib.is_lazy(images):
    return images[:limit]
  thumbnails = images_lib.EvalTransform(exports.MAX_THUMBNAIL_SIZE)
  return images.decode(range(min(limit, len(images))), thumbnails)


def write_exports(workdir, config, dataset, test_embeddings, final_metrics,
                  notes: str = "") -> None:
  """Projector files, plots and the report (with `notes` under its title): everything a
  researcher looks at."""
  if config.export.test_embeddings:
    np.savez(os.path.join(workdir, "test_embeddings.npz"),
             embeddings=np.asarray(test_embeddings, np.float32), labels=dataset.test.labels)
  limit = config.export.projector_max_points
  # Every test embedding at full precision (the projector's TSV holds 7 digits of a few).
  os.makedirs(workdir, exist_ok=True)
  np.savez(os.path.join(workdir, TEST_EMBEDDINGS_FILE), embeddings=test_embeddings,
           labels=dataset.test.labels)
  exports.write_projector_files(
      os.path.join(workdir, "projector"), test_embeddings[:limit], dataset.test.labels[:limit],
      images=_sprite_images(dataset.test.images, limit), class_names=dataset.class_names)
  # Curves of this run and of its siblings (same parent directory): a semi-hard run and a
  # batch-hard run side by side is one override and one report away.
  runs = sibling_runs(workdir, config.data.name)
  plots = os.path.abspath(os.path.join(workdir, "plots"))
  figures = [os.path.join(plots, "training_curves.png"), os.path.join(plots, "eval_history.png")]
  exports.plot_training_curves(runs, figures[0])
  exports.plot_eval_history(metric_logging.read_metrics_jsonl(os.path.join(workdir, "eval.jsonl")),
                            figures[1], selected=_selected_marker(final_metrics))
  for prefix in ("pca_2d_", "pca_3d_"):  # The last evaluation's PCA plots.
    latest = sorted(f for f in os.listdir(plots) if f.startswith(prefix))[-1:]
    figures += [os.path.join(plots, f) for f in latest]
  sections = [notes, selection_section(final_metrics)]
  by_class = _precision_by_class(dataset, test_embeddings)
  if by_class:
    figures.append(exports.plot_per_class(
        by_class, os.path.join(plots, "precision_at_1_by_class.png"),
        "precision@1 of each test class's queries", class_names=dataset.class_names))
    sections.append(_by_class_section(by_class, dataset))
  exports.write_report(workdir, config_text=str(config), eval_metrics=_report_table(final_metrics),
                       figures=figures, runs=list(runs),
                       notes="\n\n".join(section for section in sections if section))


def _selected_marker(final_metrics: dict) -> tuple[int, str] | None:
  """(step, label) of the selected epoch for the evaluation plot; None without a selection."""
  if final_metrics.get("selected_by", "last") == "last":
    return None
  return final_metrics["selected_step"], f"selected (epoch {final_metrics['selected_epoch']})"


def selection_section(final_metrics: dict) -> str:
  """The report's account of model selection: which epoch, by what, selected vs last."""
  if "selected_epoch" not in final_metrics:
    return ""
  last = final_metrics.get("last_epoch", {})
  if final_metrics["selected_by"] == "last":
    return (f"## Model selection\n\nThe last epoch ({final_metrics['selected_epoch']}): "
            f"{final_metrics.get('selection_note', 'last')}.")
  lines = ["## Model selection", "",
           f"Selected epoch {final_metrics['selected_epoch']} (step "
           f"{final_metrics['selected_step']}) of {last.get('epoch')}, by "
           f"{final_metrics['selected_by']} = {final_metrics['selected_value']:.4f} on the "
           "validation set only; the test metrics, projector and plots are that epoch's.", "",
           f"| test metric | selected (epoch {final_metrics['selected_epoch']}) | last epoch "
           f"({last.get('epoch')}) |", "| --- | ---: | ---: |"]
  for key, name in (("precision_at_1", "precision@1"), ("r_precision", "R-precision"),
                    ("map_at_r", "MAP@R")):
    if key in final_metrics and key in last:
      lines.append(f"| {name} | {final_metrics[key]:.4f} | {last[key]:.4f} |")
  return "\n".join(lines)


# Beyond this many test classes the per-class table and plot are left out of the report.
MAX_CLASSES_BY_CLASS = 50


def _precision_by_class(dataset, test_embeddings) -> dict:
  """{class id: precision@1 of its queries} on the leave-one-out test set; {} for query /
  gallery test sets and for more than MAX_CLASSES_BY_CLASS classes."""
  test = dataset.test
  if test.is_query is not None or not 2 <= len(test.classes) <= MAX_CLASSES_BY_CLASS:
    return {}
  keep = np.ones(len(test), bool)
  if images_lib.is_lazy(test.images):
    keep[test.images.unreadable_indices()] = False
  return retrieval.precision_at_1_by_class(test_embeddings[keep], test.labels[keep])


def _by_class_section(by_class: dict, dataset) -> str:
  counts = dict(zip(*np.unique(dataset.test.labels, return_counts=True)))
  lines = ["## Precision@1 by test class", "", "| class | test examples | precision@1 |",
           "| --- | ---: | ---: |"]
  names = dataset.class_names
  lines += [f"| {names[label] if names is not None and 0 <= label < len(names) else label} | "
            f"{counts[label]} | {value:.4f} |" for label, value in by_class.items()]
  return "\n".join(lines)


def sibling_runs(workdir: str, data_name: str) -> dict[str, list[dict]]:
  """The training records (metrics.jsonl) of this run and of the runs beside it (the same
  parent directory) on the same dataset, by run name: their curves go in one plot."""
  runs = {}
  parent = os.path.dirname(os.path.abspath(workdir))
  for name in sorted(os.listdir(parent)):
    path = os.path.join(parent, name, "metrics.jsonl")
    if _same_dataset(os.path.join(parent, name), data_name) and os.path.exists(path):
      if records := metric_logging.read_metrics_jsonl(path):
        runs[name] = records
  return runs


def _report_table(final_metrics: dict) -> dict:
  """The metrics of the report's table: lists (the mining-health warnings, the unreadable
  files) stay in eval.json, the notes above the table tell of them."""
  return {key: value for key, value in final_metrics.items()
          if not isinstance(value, (list, tuple))
          and not (isinstance(value, dict) and key != "recall_at_k")}


# The evaluation curves of the pair workflow (`pair_evaluation`).
PAIR_EVAL_CURVES = (("triplet_accuracy", "triplet accuracy"),
                    ("positive_similarity", "cosine similarity anchor-positive"),
                    ("negative_similarity", "cosine similarity anchor-negative"),
                    ("recall_at_k/1", "recall@1"), ("recall_at_k/5", "recall@5"))


def write_pair_exports(workdir, config, final_metrics, figures, notes: str = "") -> None:
  """Training curves, evaluation history and the report of a pair run; `figures` (e.g. the
  retrieval picture) come first in the report, `notes` under its title."""
  runs = sibling_runs(workdir, config.data.name)
  plots = os.path.abspath(os.path.join(workdir, "plots"))
  curves = [os.path.join(plots, "training_curves.png"), os.path.join(plots, "eval_history.png")]
  exports.plot_training_curves(runs, curves[0])
  exports.plot_eval_history(metric_logging.read_metrics_jsonl(os.path.join(workdir, "eval.jsonl")),
                            curves[1], curves=PAIR_EVAL_CURVES)
  exports.write_report(workdir, config_text=str(config), eval_metrics=_report_table(final_metrics),
                       figures=list(figures) + curves, runs=list(runs), notes=notes)
