"""Model selection: the best validation epoch, its checkpoint, eval.json, and resume."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.app.runs import read_jsonl, tiny_config
from tripletjax.app.inference import embedder as embedder_lib
from tripletjax.app.loop import checkpointing
from tripletjax.app.loop import selection as selection_lib
from tripletjax.app.loop import train

KEY = "validation_map_at_r"


def state(value: float) -> dict:
  return {"w": np.full(3, value, np.float32)}


def saved_steps(workdir) -> list[int]:
  checkpoints = checkpointing.StepCheckpoints(os.path.join(workdir, "selected"))
  try:
    return checkpoints.steps()
  finally:
    checkpoints.close()


def test_update_keeps_the_best_value_and_only_saves_improvements(tmp_path):
  selection = selection_lib.ModelSelection(str(tmp_path), KEY)
  values = [0.5, 0.9, 0.9, float("nan"), 0.7]  # A tie keeps the earlier epoch; NaN is no best.
  chosen = [selection.update(e + 1, 10 * (e + 1), {KEY: v}, state(e + 1))
            for e, v in enumerate(values)]
  selection.close()
  assert chosen == [True, True, False, False, False]
  assert selection.best == {"epoch": 2, "step": 20, "value": 0.9}
  assert saved_steps(tmp_path) == [10, 20]  # The two most recent bests.
  summary = selection.summary({"precision_at_1": 0.3, KEY: 0.7, "nmi": 0.1}, 5, 50)
  assert summary["selected_epoch"] == 2 and summary["selected_step"] == 20
  assert summary["selected_by"] == KEY and summary["selected_value"] == 0.9
  assert summary["last_epoch"] == {"epoch": 5, "step": 50, "precision_at_1": 0.3, KEY: 0.7,
                                   "nmi": 0.1}


@pytest.mark.parametrize("select_by, note", [
    (KEY, "no validation_map_at_r in the evaluations (no validation set)"),
    ("last", "last")])
def test_without_the_metric_the_last_epoch_is_selected(tmp_path, select_by, note):
  selection = selection_lib.ModelSelection(str(tmp_path), select_by)
  assert not selection.update(1, 10, {"precision_at_1": 0.5, "map_at_r": 0.2}, state(1))
  assert not selection.needs_restore(10)
  summary = selection.summary({"precision_at_1": 0.5}, 1, 10)
  assert summary["selected_by"] == "last" and summary["selected_epoch"] == 1
  assert summary["selection_note"] == note
  assert not os.path.exists(tmp_path / "selected")


def test_resume_forgets_selections_written_after_the_resumed_checkpoint(tmp_path):
  first = selection_lib.ModelSelection(str(tmp_path), KEY)
  first.update(1, 10, {KEY: 0.5}, state(1))
  record = first.record()  # What the training checkpoint of step 20 holds.
  first.update(3, 30, {KEY: 0.8}, state(3))  # After it; then the run is killed.
  first.close()
  resumed = selection_lib.ModelSelection(str(tmp_path), KEY)
  resumed.resume(record, 20)
  assert resumed.best == {"epoch": 1, "step": 10, "value": 0.5}
  assert saved_steps(tmp_path) == [10]
  # Training epoch 3 again finds it again.
  assert resumed.update(3, 30, {KEY: 0.8}, state(3))
  resumed.close()
  assert saved_steps(tmp_path) == [10, 30]


def test_a_missing_selected_checkpoint_restarts_the_selection(tmp_path, capsys):
  selection = selection_lib.ModelSelection(str(tmp_path), KEY)
  selection.update(1, 10, {KEY: 0.5}, state(1))
  selection.close()
  resumed = selection_lib.ModelSelection(str(tmp_path), KEY)
  resumed.resume({"epoch": 2, "step": 20, "value": 0.9}, 30)
  resumed.close()
  assert resumed.best is None and "the selected checkpoint of step 20 is missing" in (
      capsys.readouterr().out)


# A validation curve that peaks at epoch 2, whatever the tiny model learns: the test checks that
# the selected epoch's real test metrics come back, recomputed from its checkpoint.
SCHEDULE = {1: 0.5, 2: 0.9, 3: 0.7, 4: 0.6}


def test_a_run_selects_the_best_validation_epoch_and_a_resumed_run_keeps_it(
    tmp_path, monkeypatch):
  update = selection_lib.ModelSelection.update

  def scheduled_update(self, epoch, step, metrics, state):
    assert KEY in metrics  # The fold gives the run a validation set.
    return update(self, epoch, step, {**metrics, KEY: SCHEDULE[epoch]}, state)
  monkeypatch.setattr(selection_lib.ModelSelection, "update", scheduled_update)
  workdir = str(tmp_path / "run")
  config = tiny_config(**{"data.class_split": "half", "data.validation_folds": 2,
                          "data.validation_fold": 1, "num_epochs": 3})
  train.train_and_evaluate(config, workdir)
  records = {r["epoch"]: r for r in read_jsonl(os.path.join(workdir, "eval.jsonl"))}
  config.num_epochs = 4  # Resumes after epoch 3 and trains one more.
  final = train.train_and_evaluate(config, workdir)
  records.update({r["epoch"]: r for r in read_jsonl(os.path.join(workdir, "eval.jsonl"))})
  with open(os.path.join(workdir, "eval.json")) as f:
    written = json.load(f)
  assert written == json.loads(json.dumps(final))
  steps_per_epoch = records[1]["step"]
  assert written["selected_by"] == KEY and written["selected_epoch"] == 2
  assert written["selected_step"] == 2 * steps_per_epoch and written["selected_value"] == 0.9
  for name in ("precision_at_1", "r_precision", "map_at_r"):
    # The selected epoch's test metrics, recomputed from its checkpoint, and the last epoch's.
    assert written[name] == pytest.approx(records[2][name], rel=1e-9, abs=1e-12)
    assert written["last_epoch"][name] == records[4][name]
  assert written["last_epoch"]["epoch"] == 4 and written["epochs"] == 4
  assert 2 * steps_per_epoch in saved_steps(workdir)
  with open(os.path.join(workdir, "report.md")) as f:
    report = f.read()
  assert "selected epoch 2" in report.lower()
  # A loaded run embeds with the model its evaluation reports: the selected epoch's.
  assert embedder_lib.load_embedder(workdir).step == 2 * steps_per_epoch
  assert embedder_lib.load_embedder(workdir, step=4 * steps_per_epoch).step == 4 * steps_per_epoch
