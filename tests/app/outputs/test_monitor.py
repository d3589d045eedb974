"""The mining-health monitor: its rules on logged records, and a real collapsing run."""

from __future__ import annotations

import json
import os

import pytest

from tests.app.runs import tiny_config
from tripletjax.app.config import defaults
from tripletjax.app.loop import train
from tripletjax.app.outputs import monitor as monitor_lib


def make_monitor(loss="semihard", patience=30, **changes):
  config = defaults.get_config()
  config.loss.name = loss
  config.monitor.patience_steps = patience
  for key, value in changes.items():
    section, name = key.split(".")
    config[section][name] = value
  return monitor_lib.MiningMonitor(config)


def healthy(**changes):
  # Early semi-hard training: loss near the margin and every triplet active, but the
  # embeddings spread out (not collapsed).
  record = {"loss": 0.49, "fraction_active": 1.0, "embedding_spread": 0.45,
            "embedding_norm": 0.6, "num_positive_pairs": 800.0, "num_fallback": 10.0,
            "mean_positive_distance": 1.1, "mean_negative_distance": 1.1}
  record.update(changes)
  return record


def collapsed(**changes):
  return healthy(loss=0.52, embedding_spread=0.002, mean_positive_distance=0.06,
                 mean_negative_distance=0.03, embedding_norm=700.0, num_fallback=800.0,
                 **changes)


def feed(monitor, records, every=10, start=0):
  warnings = []
  for index, record in enumerate(records):
    warnings += monitor.update(start + (index + 1) * every, record)
  return warnings


def test_collapse_is_reported_once_after_the_patience_with_what_to_do():
  monitor = make_monitor(patience=30, **{"optimizer.learning_rate": 0.05})
  warnings = feed(monitor, [healthy(), collapsed(), collapsed(), collapsed(), collapsed(),
                            collapsed()])
  [warning] = warnings
  assert warning.kind == "collapse" and warning.step == 40  # Collapsed at 20, 30, 40.
  text = str(warning)
  assert text.startswith("step 40: ") and "embedding spread 0.0020" in text
  assert "--config.optimizer.learning_rate=0.005" in warning.suggestion
  assert "--config.loss.margin=0.25" in warning.suggestion
  assert "--config.batch.sampler=balanced" in warning.suggestion
  assert monitor.warnings == [warning]
  assert "collapse" in monitor.summary() and "step 40" in monitor.summary()


def test_hard_mining_collapse_suggests_semi_hard():
  monitor = make_monitor(loss="hard", patience=10)
  [warning] = feed(monitor, [collapsed(num_valid_anchors=128.0)])
  assert "--config.loss.name=semihard" in warning.suggestion


def test_an_interrupted_streak_starts_again():
  monitor = make_monitor(patience=30)
  assert feed(monitor, [collapsed(), collapsed(), healthy(), collapsed(), collapsed()]) == []
  assert [w.step for w in monitor.update(60, collapsed())] == [60]


@pytest.mark.parametrize("record", [
    healthy(),  # Loss at the margin, all active, but spread out: learning, not collapsed.
    collapsed(fraction_active=0.6),  # Close together but still separating triplets.
    healthy(fraction_active=0.02, loss=0.01),  # Nearly converged, not dead.
])
def test_healthy_records_raise_nothing(record):
  monitor = make_monitor(patience=10)
  assert feed(monitor, [record] * 20) == []
  assert "no collapse" in monitor.summary()


def test_dead_mining_and_missing_positives():
  monitor = make_monitor(patience=20)
  [dead] = feed(monitor, [healthy(fraction_active=0.0, loss=0.0)] * 3)
  assert dead.kind == "dead_mining" and dead.step == 20
  assert "--config.loss.margin=1" in dead.suggestion
  monitor = make_monitor(patience=20, **{"batch.sampler": "balanced",
                                         "batch.classes_per_batch": 8,
                                         "batch.samples_per_class": 16})
  # No positive pair: no active triplet either, but that is the sampler's doing, not dead.
  [missing] = feed(monitor, [healthy(fraction_active=0.0, loss=0.0,
                                     num_positive_pairs=0.0)] * 3)
  assert missing.kind == "no_positives"
  assert "--config.batch.classes_per_batch=16" in missing.suggestion


def test_contrastive_collapse_uses_its_own_collapsed_values():
  monitor = make_monitor(loss="contrastive", patience=10)
  record = {"loss": 0.1, "fraction_active": 0.8, "embedding_spread": 0.001,
            "num_positive_pairs": 100.0, "num_negative_pairs": 400.0}
  [warning] = feed(monitor, [record])
  assert warning.kind == "collapse"
  assert monitor_lib.collapsed_loss("contrastive", 1.0, False, record) == pytest.approx(0.4)
  assert feed(make_monitor(loss="contrastive", patience=10),
              [dict(record, fraction_active=1.0)]) == []


def test_replay_rebuilds_the_state_of_a_resumed_run():
  records = [healthy(), collapsed(), collapsed(), collapsed(), collapsed(), healthy(),
             healthy(fraction_active=0.0, loss=0.0), healthy(fraction_active=0.0, loss=0.0),
             healthy(fraction_active=0.0, loss=0.0), healthy(fraction_active=0.0, loss=0.0)]
  live = make_monitor(patience=25)
  all_warnings = feed(live, records)
  assert [w.kind for w in all_warnings] == ["collapse", "dead_mining"]
  for cut in range(len(records) + 1):
    resumed = make_monitor(patience=25)
    resumed.replay([dict(r, step=(i + 1) * 10) for i, r in enumerate(records[:cut])])
    later = feed(resumed, records[cut:], start=cut * 10)
    assert resumed.warnings == live.warnings
    assert later == [w for w in all_warnings if w.step > cut * 10]


def test_disabled_monitor_says_so():
  monitor = make_monitor(patience=10, **{"monitor.enabled": False})
  assert feed(monitor, [collapsed()] * 5) == []
  assert "off" in monitor.summary()


@pytest.mark.slow
def test_a_collapsing_run_is_warned_about_in_the_log_eval_json_and_report(tmp_path, capsys):
  # Batch-hard mining with a learning rate 50x too high collapses the digits embeddings within
  # a few steps (every triplet active, the embeddings gathered at one point). The run stops
  # after its first epoch and resumes for two more: the monitor's streak carries over.
  overrides = {"loss.name": "hard", "optimizer.learning_rate": 0.05,
               "monitor.patience_steps": 8, "export.pca_every_eval": False}
  workdir = str(tmp_path / "collapsing")
  train.train_and_evaluate(tiny_config(num_epochs=1, **overrides), workdir)
  config = tiny_config(num_epochs=3, **overrides)
  final = train.train_and_evaluate(config, workdir)
  [warning] = final["health_warnings"]
  assert warning["kind"] == "collapse"
  out = capsys.readouterr()
  assert f"warning: step {warning['step']}: the embeddings are collapsing" in out.out + out.err
  with open(os.path.join(workdir, "health.jsonl")) as f:
    [logged] = [json.loads(line) for line in f]
  assert logged["step"] == warning["step"] and logged["kind"] == "collapse"
  report = open(os.path.join(workdir, "report.md")).read()
  assert "**collapse**" in report and "--config.loss.name=semihard" in report
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  spreads = [record["embedding_spread"] for record in records]
  assert spreads[-1] < monitor_lib.SPREAD_TOLERANCE < spreads[0]
  # The resumed run warned where one monitor fed the whole log warns: its state carried over.
  uninterrupted = monitor_lib.MiningMonitor(config)
  uninterrupted.replay(records)
  assert [w.record() for w in uninterrupted.warnings] == final["health_warnings"]
  assert 6 < warning["step"]  # After the resume (6 steps per epoch).
