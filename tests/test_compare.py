"""`python -m tripletjax.compare`: groups, means and 95% intervals, fold ensembles, plots."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests import subprocesses
from tripletjax import compare
from tripletjax.app.evaluation import retrieval

SEEDS = (0, 1, 2)
MARGINS = (0.2, 0.5)
# Student's t quantile for a 95% interval with 2 degrees of freedom (3 seeds), from tables.
T_975_2 = 4.302652729


# The seed sweep of docs/research-protocol.md, in one process so that the persistent compilation
# cache compiles each config's programs once (the seeds change values, not programs).
SWEEP_SCRIPT = """
import sys
from tests.app.runs import tiny_config
from tripletjax.app.loop import train
root = sys.argv[1]
for margin in (0.2, 0.5):
  for seed in (0, 1, 2):
    train.train_and_evaluate(tiny_config(**{
        "seed": seed, "loss.margin": margin, "num_epochs": 2, "data.max_train": 200,
        "data.max_test": 100, "model.embedding_dim": 8, "data.class_split": "half",
        "data.validation_folds": 2, "export.pca_every_eval": False,
        "export.projector_max_points": 20}), f"{root}/margin{margin}/seed{seed}")
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
  """Three seeds of two tiny configs (margins 0.2 and 0.5) on digits with a validation fold."""
  root = tmp_path_factory.mktemp("sweep")
  cache = tmp_path_factory.getbasetemp().parent / "jax-compilation-cache"
  env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0", "JAX_THREEFRY_PARTITIONABLE": "0"}
  result = subprocesses.run_python("-c", SWEEP_SCRIPT, str(root), env=env, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return root, [str(root / f"margin{m}" / f"seed{s}") for m in MARGINS for s in SEEDS]


def expected_cell(values, digits: int = 4) -> str:
  values = np.asarray(values, np.float64)
  half = T_975_2 * values.std(ddof=1) / np.sqrt(len(values))
  return f"{values.mean():.{digits}f} ± {half:.{digits}f}"


def test_compare_prints_each_group_mean_and_interval(sweep, capsys):
  root, paths = sweep
  assert compare.main(paths) == 0
  printed = capsys.readouterr().out
  rows = {line.split(" | ")[0].strip("| "): line.strip("| ").split(" | ")
          for line in printed.splitlines() if line.startswith("| loss.margin=")}
  assert set(rows) == {f"loss.margin={margin}" for margin in MARGINS}
  for margin in MARGINS:
    finals = []
    for seed in SEEDS:
      with open(root / f"margin{margin}" / f"seed{seed}" / "eval.json") as f:
        finals.append(json.load(f))
    row = rows[f"loss.margin={margin}"]
    assert row[1] == "3"
    for column, key in zip(row[2:5], ("precision_at_1", "r_precision", "map_at_r")):
      assert column == expected_cell([final[key] for final in finals]), key
    assert row[5] == expected_cell([f["selected_epoch"] for f in finals], 1)
    assert row[6] == expected_cell([f["train_seconds"] for f in finals], 0)
  out = root / "comparison"
  with open(out / "comparison.md") as f:
    assert f.read().startswith("# Comparison of 6 runs in 2 groups")
  for plot in ("validation_curves", "metrics"):
    assert os.path.getsize(out / f"{plot}.png") > 1000 and os.path.exists(out / f"{plot}.csv")


def test_mean_and_interval_is_students_t():
  values = [0.5, 0.7, 0.6, 0.9]
  mean, half = compare.mean_and_interval(values)
  # t(0.975, 3 degrees of freedom) = 3.182446305 (tables).
  assert mean == pytest.approx(0.675)
  assert half == pytest.approx(3.182446305 * np.std(values, ddof=1) / 2)
  assert np.isnan(compare.mean_and_interval([0.3])[1])


def fake_run(path, config: dict, final: dict, embeddings=None, labels=None) -> str:
  os.makedirs(path)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)
  with open(os.path.join(path, "eval.json"), "w") as f:
    json.dump(final, f)
  if embeddings is not None:
    np.savez(os.path.join(path, "test_embeddings.npz"), embeddings=embeddings, labels=labels)
  return str(path)


def test_fold_models_of_a_seed_are_evaluated_on_their_concatenated_embeddings(tmp_path):
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(4), 10)
  final = {"precision_at_1": 0.5, "r_precision": 0.4, "map_at_r": 0.3}
  paths, parts = [], {}
  for seed in (0, 1):
    for fold in (0, 1):
      embeddings = rng.normal(size=(40, 3)) * (fold + 1) + labels[:, None] * (seed + 1)
      parts[seed, fold] = embeddings
      config = {"seed": seed, "data": {"validation_folds": 2, "validation_fold": fold}}
      paths.append(fake_run(tmp_path / f"s{seed}f{fold}", config, final, embeddings, labels))
  ensembles = compare.fold_ensembles([compare.load_run(p) for p in paths])
  for seed in (0, 1):
    unit = [parts[seed, f] / np.linalg.norm(parts[seed, f], axis=1, keepdims=True)
            for f in (0, 1)]
    expected = retrieval.retrieval_metrics(np.concatenate(unit, axis=1), labels)
    assert ensembles[seed]["map_at_r"] == pytest.approx(expected["map_at_r"])
  table = compare.comparison_table(compare.group_runs([compare.load_run(p) for p in paths]))
  assert "Fold ensembles" in table and "| all runs | 2 |" in table


def test_groups_are_named_by_the_keys_that_differ_not_by_seed_or_logging(tmp_path):
  final = {"precision_at_1": 0.5, "r_precision": 0.4, "map_at_r": 0.3}
  configs = [{"seed": s, "log_every_steps": s + 1, "loss": {"margin": m, "name": "hard"}}
             for m in (0.1, 0.3) for s in (0, 1)]
  runs = [compare.load_run(fake_run(tmp_path / str(i), c, final))
          for i, c in enumerate(configs)]
  assert {name: len(group) for name, group in compare.group_runs(runs).items()} == {
      "loss.margin=0.1": 2, "loss.margin=0.3": 2}


@pytest.mark.parametrize("make, message", [
    (lambda tmp: str(tmp / "missing"), "no such run folder"),
    (lambda tmp: (os.makedirs(tmp / "empty"), str(tmp / "empty"))[1], "not a run folder"),
    (lambda tmp: fake_run(tmp / "pairs", {"seed": 0}, {"triplet_accuracy": 0.9}),
     "only runs on labelled images"),
])
def test_bad_run_folders_are_one_line_errors(tmp_path, capsys, make, message):
  assert compare.main([make(tmp_path)]) == 2
  error = capsys.readouterr().err
  assert error.startswith("error: ") and message in error and error.count("\n") == 1


def test_the_documented_sweeps_use_real_config_keys_and_the_compare_command():
  """The loops of docs/research-protocol.md: every --config.<key> exists, and each loop varies
  the seed (and the fold) and ends in `python -m tripletjax.compare`."""
  import re
  from tripletjax.app.config import defaults
  from tripletjax.app.config import resume
  with open(os.path.join(subprocesses.REPO, "docs", "research-protocol.md")) as f:
    blocks = re.findall(r"```bash\n(.*?)```", f.read(), re.S)
  assert len(blocks) == 2
  keys = set(resume.flatten(defaults.get_config().to_dict()))
  for block in blocks:
    for key in re.findall(r"--config\.([\w.]+)=", block):
      assert key in keys, key
    assert "--config.seed=$seed" in block and "for seed in 0 1 2" in block
    assert "python -m tripletjax.compare runs/" in block
  assert "--config.data.validation_fold=$fold" in blocks[1]

