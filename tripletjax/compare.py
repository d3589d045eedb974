"""Compares finished runs: `python -m tripletjax.compare runs/a-* runs/b-* [--out DIR]`.

Runs are grouped by their config (`config.json`): the keys whose values differ between groups
name them ("loss.margin=0.2, model.embedding_dim=128"); runs that differ only in what repeats
an experiment (`REPEAT_KEYS`: the seed, the validation fold) or in how it is run
(`IGNORED_KEYS`: logging, checkpoints, exports) are repetitions of one group. For every group it
prints, and writes into the output folder:

  * `comparison.md`: a markdown table of the mean and 95% confidence interval (Student's t,
    n - 1 degrees of freedom) of the test precision@1, R-precision and MAP@R of the selected
    epochs (`eval.json`), the selected epoch and the training time;
  * for groups trained with validation folds (`--config.data.validation_folds=K`), one row per
    seed whose K fold models all exported their test embeddings: the K models' embeddings
    concatenated (each L2-normalised) and evaluated as one, as "A Metric Learning Reality Check"
    (Musgrave et al., 2020) evaluates its 4 fold models; mean and interval over the seeds;
  * `validation_curves.png`: each group's mean validation curve (by `eval.select_by`) against
    the epoch, with its 95% interval;
  * `metrics.png`: the three test metrics per group, bars at the mean, 95% intervals.

A seed sweep is a loop over `--config.seed` (and, for the fold protocol,
`--config.data.validation_fold`) writing one workdir per run; docs/research-protocol.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

METRICS = (("precision_at_1", "precision@1"), ("r_precision", "R-precision"),
           ("map_at_r", "MAP@R"))
# Config keys that repeat an experiment: runs differing only in them are one group.
REPEAT_KEYS = ("seed", "data.validation_fold")
# Config keys (or prefixes ending in ".") that change how a run is run, not its result.
IGNORED_KEYS = ("quiet", "log_every_steps", "checkpoint_every_epochs", "export.", "monitor.",
                "data.data_dir", "data.decode_workers", "data.prefetch_batches", "train_step",
                "eval.backend", "eval.faiss_min_size")
EMBEDDINGS_FILE = "test_embeddings.npz"
CONFIDENCE = 0.95


@dataclasses.dataclass
class Run:
  """A finished run: its folder, flattened config, eval.json and evaluation records."""
  path: str
  config: dict
  final: dict
  records: list

  @property
  def seed(self):
    return self.config.get("seed")

  @property
  def fold(self):
    return self.config.get("data.validation_fold", 0)

  @property
  def folds(self):
    return self.config.get("data.validation_folds", 0)


class CompareError(ValueError):
  """A run folder that cannot be compared (missing or unreadable files)."""


def _flatten(tree: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
  return flat


def _read_json(path: str, what: str):
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise CompareError(f"{path} does not exist: {what}") from None
  except (OSError, ValueError) as error:
    raise CompareError(f"{path} cannot be read ({error})") from None


def load_run(path: str) -> Run:
  """A finished run's folder (config.json, eval.json, eval.jsonl)."""
  if not os.path.isdir(path):
    raise CompareError(f"{path}: no such run folder")
  config = _flatten(_read_json(os.path.join(path, "config.json"), "not a run folder"))
  final = _read_json(os.path.join(path, "eval.json"), "the run has not finished")
  missing = [key for key, _ in METRICS if key not in final]
  if missing:
    raise CompareError(f"{os.path.join(path, 'eval.json')} has no {', '.join(missing)}: "
                       "only runs on labelled images (retrieval metrics) can be compared")
  records = []
  history = os.path.join(path, "eval.jsonl")
  if os.path.exists(history):
    with open(history) as f:
      records = [json.loads(line) for line in f if line.strip()]
  return Run(os.path.normpath(path), config, final, records)


def _ignored(key: str) -> bool:
  return key in REPEAT_KEYS or any(
      key == ignored or (ignored.endswith(".") and key.startswith(ignored))
      for ignored in IGNORED_KEYS)


def group_runs(runs: list[Run]) -> dict[str, list[Run]]:
  """Runs by group name: the config keys that differ between runs (repetition and run
  settings aside), as "key=value, ..."; "all runs" when no key differs. Groups keep the order
  of their first run."""
  keys = sorted({key for run in runs for key in run.config if not _ignored(key)})
  varying = [key for key in keys if len({repr(run.config.get(key)) for run in runs}) > 1]
  groups: dict[str, list[Run]] = {}
  for run in runs:
    name = ", ".join(f"{key}={run.config.get(key)}" for key in varying) or "all runs"
    groups.setdefault(name, []).append(run)
  return groups


def mean_and_interval(values) -> tuple[float, float]:
  """(mean, half-width of its 95% confidence interval); the half-width is NaN for one value.

  The interval of Student's t with n - 1 degrees of freedom: t * s / sqrt(n), s the sample
  standard deviation.
  """
  from scipy import stats
  values = np.asarray(values, np.float64)
  if len(values) < 2:
    return float(np.mean(values)), float("nan")
  t = stats.t.ppf(0.5 + CONFIDENCE / 2, len(values) - 1)
  return float(values.mean()), float(t * values.std(ddof=1) / np.sqrt(len(values)))


def _cell(values, digits: int = 4) -> str:
  mean, half = mean_and_interval(values)
  return f"{mean:.{digits}f}" if np.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def fold_ensembles(runs: list[Run]) -> dict:
  """{seed: metrics} of the concatenated test embeddings of the K fold models of each seed
  whose K folds all exported them (and embedded the same test examples)."""
  from tripletjax.app.evaluation import retrieval
  by_seed: dict = {}
  for run in runs:
    if run.folds >= 2:
      by_seed.setdefault(run.seed, {})[run.fold] = run
  ensembles = {}
  for seed, folds in sorted(by_seed.items()):
    members = [folds.get(fold) for fold in range(next(iter(folds.values())).folds)]
    paths = [os.path.join(run.path, EMBEDDINGS_FILE) for run in members if run is not None]
    if None in members or not all(os.path.exists(path) for path in paths):
      continue
    parts, labels = [], None
    for path in paths:
      with np.load(path) as stored:
        if labels is not None and not np.array_equal(labels, stored["labels"]):
          raise CompareError(f"{path}: other test examples than the other folds of seed {seed}")
        labels = stored["labels"]
        embeddings = stored["embeddings"].astype(np.float64)
        parts.append(embeddings / np.maximum(
            np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12))
    ensembles[seed] = retrieval.retrieval_metrics(np.concatenate(parts, axis=1), labels)
  return ensembles


def comparison_table(groups: dict[str, list[Run]]) -> str:
  """The markdown table of every group (and of its fold ensembles, if any)."""
  header = ["group", "runs", *[name for _, name in METRICS], "selected epoch",
            "training time (s)"]
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" + " ---: |" * (len(header) - 1)]
  ensemble_lines = []
  for name, runs in groups.items():
    cells = [_cell([run.final[key] for run in runs]) for key, _ in METRICS]
    epochs = [run.final.get("selected_epoch", run.final.get("epochs")) for run in runs]
    epochs = _cell(epochs, 1) if None not in epochs else "n/a"
    seconds = _cell([run.final.get("train_seconds", float("nan")) for run in runs], 0)
    lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + f" | {epochs} | {seconds} |")
    ensembles = fold_ensembles(runs)
    if ensembles:
      cells = [_cell([metrics[key] for metrics in ensembles.values()]) for key, _ in METRICS]
      ensemble_lines.append(f"| {name} | {len(ensembles)} | " + " | ".join(cells) + " |")
  text = "\n".join(lines)
  if ensemble_lines:
    text += ("\n\nFold ensembles: the K fold models of a seed, their test embeddings "
             "concatenated and evaluated as one (mean and 95% interval over the seeds).\n\n"
             "| group | seeds | " + " | ".join(name for _, name in METRICS) + " |\n"
             "| --- | ---: |" + " ---: |" * len(METRICS) + "\n" + "\n".join(ensemble_lines))
  return text


def _validation_key(runs: list[Run]) -> str:
  select_by = runs[0].config.get("eval.select_by", "last")
  return "validation_map_at_r" if select_by in (None, "last") else select_by


def plot_validation_curves(groups: dict[str, list[Run]], out_path: str) -> str:
  """Each group's mean validation curve by epoch, with its 95% interval as a band."""
  import matplotlib.pyplot as plt
  from tripletjax.app.outputs import exports
  figure, axes = plt.subplots(figsize=(8, 4.5))
  plotted = False
  for name, runs in groups.items():
    key = _validation_key(runs)
    by_epoch: dict = {}
    for run in runs:
      for record in run.records:
        if key in record:
          by_epoch.setdefault(record["epoch"], []).append(record[key])
    if not by_epoch:
      continue
    epochs = sorted(by_epoch)
    stats = np.array([mean_and_interval(by_epoch[epoch]) for epoch in epochs])
    line, = axes.plot(epochs, stats[:, 0], marker="o", markersize=3, label=f"{name} ({key})")
    axes.fill_between(epochs, stats[:, 0] - np.nan_to_num(stats[:, 1]),
                      stats[:, 0] + np.nan_to_num(stats[:, 1]), color=line.get_color(),
                      alpha=0.2, linewidth=0)
    plotted = True
  axes.set_xlabel("epoch")
  axes.set_ylabel("validation metric")
  axes.set_title("validation curves (mean, 95% interval)")
  axes.grid(True, alpha=0.3)
  if plotted:
    axes.legend(fontsize="small")
  else:
    axes.text(0.5, 0.5, "no validation set in these runs", ha="center", va="center",
              transform=axes.transAxes)
  return exports.save_figure(figure, out_path)


def plot_metrics(groups: dict[str, list[Run]], out_path: str) -> str:
  """A panel per test metric, a bar per group at its mean, 95% intervals as error bars."""
  import matplotlib.pyplot as plt
  from tripletjax.app.outputs import exports
  names = list(groups)
  figure, panels = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 4.2),
                                squeeze=False)
  for axes, (key, title) in zip(panels[0], METRICS):
    stats = np.array([mean_and_interval([run.final[key] for run in groups[name]])
                      for name in names])
    positions = np.arange(len(names))
    axes.bar(positions, stats[:, 0], color="tab:blue", alpha=0.7)
    axes.errorbar(positions, stats[:, 0], yerr=np.nan_to_num(stats[:, 1]), fmt="o",
                  color="black", capsize=4, label="mean, 95% interval")
    axes.set_xticks(positions, [str(i + 1) for i in positions])
    axes.set_xlabel("group (numbered as in the table)")
    axes.set_title(title)
    axes.grid(True, axis="y", alpha=0.3)
  return exports.save_figure(figure, out_path)


def compare(paths: list[str], out_dir: str | None = None) -> str:
  """Loads the runs in `paths`, writes the table and the plots into `out_dir` (default: the
  runs' common parent folder's `comparison/`); returns the markdown."""
  if not paths:
    raise CompareError("no run folders given")
  runs = [load_run(path) for path in paths]
  groups = group_runs(runs)
  if out_dir is None:
    out_dir = os.path.join(os.path.commonpath([os.path.abspath(p) for p in paths]),
                           "comparison")
  os.makedirs(out_dir, exist_ok=True)
  numbered = "\n".join(f"{i + 1}. {name}: {', '.join(run.path for run in runs)}"
                       for i, (name, runs) in enumerate(groups.items()))
  text = (f"# Comparison of {len(runs)} runs in {len(groups)} groups\n\n"
          f"{comparison_table(groups)}\n\nGroups and their runs:\n\n{numbered}\n\n"
          "![validation curves](validation_curves.png)\n\n![test metrics](metrics.png)\n")
  with open(os.path.join(out_dir, "comparison.md"), "w") as f:
    f.write(text)
  plot_validation_curves(groups, os.path.join(out_dir, "validation_curves.png"))
  plot_metrics(groups, os.path.join(out_dir, "metrics.png"))
  return text


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # One line, as the other command-line tools.
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> int:
  parser = _Parser(
      prog="python -m tripletjax.compare", description=__doc__.splitlines()[0])
  parser.add_argument("runs", nargs="*", help="run folders (workdirs of finished runs)")
  parser.add_argument("--out", default=None, help="folder of comparison.md and the plots "
                      "(default: <the runs' common parent>/comparison)")
  args = parser.parse_args(argv)
  try:
    text = compare(args.runs, args.out)
  except CompareError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
