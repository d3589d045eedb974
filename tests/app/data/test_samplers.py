"""Samplers: determinism given (seed, epoch), coverage, the P x K structure and the errors."""

from __future__ import annotations

import numpy as np
import pytest

from tripletjax.app.data import samplers


def epoch_batches(sampler, epoch: int) -> list[np.ndarray]:
  return list(sampler.epoch(epoch))


# 10 classes of very different sizes (5 to 50 examples), labels not 0..C-1, order mixed.
_class_sizes = [5, 8, 10, 12, 15, 20, 25, 30, 40, 50]
IMBALANCED_LABELS = np.random.default_rng(0).permutation(
    np.repeat(np.arange(10) * 3 + 7, _class_sizes)).astype(np.int32)
BALANCED_LABELS = np.repeat(np.arange(6), 20).astype(np.int32)  # 6 classes x 20 = 120.


# --- ShuffledBatches ---------------------------------------------------------------------------


def test_shuffled_batches_shapes_and_drop_last():
  sampler = samplers.ShuffledBatches(np.zeros(103, np.int32), batch_size=10, seed=0)
  assert sampler.steps_per_epoch == len(sampler) == 10
  batches = epoch_batches(sampler, 0)
  assert len(batches) == 10
  assert all(batch.shape == (10,) and np.issubdtype(batch.dtype, np.integer)
             for batch in batches)
  used = np.concatenate(batches)
  assert len(np.unique(used)) == 100 and used.min() >= 0 and used.max() < 103


def test_shuffled_batches_are_deterministic_given_seed_and_epoch():
  labels = np.arange(50) % 5
  first = samplers.ShuffledBatches(labels, 8, seed=7)
  resumed = samplers.ShuffledBatches(labels, 8, seed=7)
  # A resumed run starts at a later epoch, on a new sampler, with no earlier epoch drawn.
  for epoch in (3, 0, 3):
    np.testing.assert_array_equal(np.stack(epoch_batches(first, epoch)),
                                  np.stack(epoch_batches(resumed, epoch)))
  assert not np.array_equal(np.stack(epoch_batches(first, 0)), np.stack(epoch_batches(first, 1)))
  other_seed = samplers.ShuffledBatches(labels, 8, seed=8)
  assert not np.array_equal(np.stack(epoch_batches(first, 0)),
                            np.stack(epoch_batches(other_seed, 0)))


def test_shuffled_batches_errors():
  with pytest.raises(ValueError, match="larger than the 5 examples"):
    samplers.ShuffledBatches(np.zeros(5, np.int32), 6, seed=0)
  with pytest.raises(ValueError, match="batch_size must be a positive integer"):
    samplers.ShuffledBatches(np.zeros(5, np.int32), 0, seed=0)
  with pytest.raises(ValueError, match="seed must be a non-negative integer"):
    samplers.ShuffledBatches(np.zeros(5, np.int32), 2, seed=-1)
  with pytest.raises(ValueError, match=r"labels must have shape \[N\]"):
    samplers.ShuffledBatches(np.zeros((5, 1), np.int32), 2, seed=0)
  with pytest.raises(TypeError, match="integers"):
    samplers.ShuffledBatches(np.zeros(5, np.float32), 2, seed=0)
  with pytest.raises(ValueError, match="empty"):
    samplers.ShuffledBatches(np.zeros(0, np.int32), 2, seed=0)
  with pytest.raises(ValueError, match="epoch must be a non-negative integer"):
    next(samplers.ShuffledBatches(np.zeros(5, np.int32), 2, seed=0).epoch(-1))


# --- ClassBalancedBatches ----------------------------------------------------------------------


@pytest.mark.parametrize("labels", [BALANCED_LABELS, IMBALANCED_LABELS],
                         ids=["balanced", "imbalanced"])
@pytest.mark.parametrize("num_classes, num_samples", [(4, 5), (6, 2), (1, 5), (3, 1)])
def test_balanced_batches_have_p_classes_of_k_distinct_examples(labels, num_classes, num_samples):
  sampler = samplers.ClassBalancedBatches(labels, num_classes, num_samples, seed=1)
  assert sampler.batch_size == num_classes * num_samples
  assert sampler.steps_per_epoch == len(labels) // sampler.batch_size
  for epoch in range(2):
    batches = epoch_batches(sampler, epoch)
    assert len(batches) == sampler.steps_per_epoch
    for batch in batches:
      assert batch.shape == (num_classes * num_samples,)
      assert len(np.unique(batch)) == len(batch)  # K *distinct* examples per class.
      # Grouped by class: P blocks of K equal labels, all P classes different.
      blocks = labels[batch].reshape(num_classes, num_samples)
      assert np.all(blocks == blocks[:, :1])
      assert len(np.unique(blocks[:, 0])) == num_classes


def test_balanced_batches_are_deterministic_given_seed_and_epoch():
  first = samplers.ClassBalancedBatches(IMBALANCED_LABELS, 4, 3, seed=5)
  resumed = samplers.ClassBalancedBatches(IMBALANCED_LABELS, 4, 3, seed=5)
  for epoch in (2, 0, 2):
    np.testing.assert_array_equal(np.stack(epoch_batches(first, epoch)),
                                  np.stack(epoch_batches(resumed, epoch)))
  assert not np.array_equal(np.stack(epoch_batches(first, 0)), np.stack(epoch_batches(first, 1)))
  other_seed = samplers.ClassBalancedBatches(IMBALANCED_LABELS, 4, 3, seed=6)
  assert not np.array_equal(np.stack(epoch_batches(first, 0)),
                            np.stack(epoch_batches(other_seed, 0)))


def test_balanced_batches_cover_a_balanced_dataset_once_per_epoch():
  sampler = samplers.ClassBalancedBatches(BALANCED_LABELS, 3, 4, seed=0)
  assert sampler.steps_per_epoch == 10  # 120 / 12: every example exactly once.
  used = np.concatenate(epoch_batches(sampler, 0))
  np.testing.assert_array_equal(np.sort(used), np.arange(120))


def test_balanced_batches_spread_over_classes_and_examples_fairly():
  num_classes, num_samples = 4, 3
  sampler = samplers.ClassBalancedBatches(IMBALANCED_LABELS, num_classes, num_samples, seed=2,
                                          steps_per_epoch=50)
  used = np.concatenate(epoch_batches(sampler, 0))
  # Classes: 50 batches x 4 = 200 class slots over 10 classes, 20 each, give or take one.
  class_slots = np.unique(IMBALANCED_LABELS[used], return_counts=True)[1] // num_samples
  assert class_slots.max() - class_slots.min() <= 1
  # Examples: each class walks shuffled passes over its examples, so within a class no example
  # is used twice more than another (the 5 examples of the smallest class are reused the most).
  uses = np.bincount(used, minlength=len(IMBALANCED_LABELS))
  for label in np.unique(IMBALANCED_LABELS):
    class_uses = uses[IMBALANCED_LABELS == label]
    assert class_uses.max() - class_uses.min() <= 1, (label, class_uses)


def test_balanced_errors_name_the_small_classes():
  labels = np.array([0] * 5 + [1] * 2 + [2] * 6 + [9] * 1)
  with pytest.raises(ValueError, match=r"K\) = 3.*class 1: 2, class 9: 1"):
    samplers.ClassBalancedBatches(labels, 2, 3, seed=0)
  with pytest.raises(ValueError, match=r"classes_per_batch \(P\) = 5 is more than the 4 classes"):
    samplers.ClassBalancedBatches(labels, 5, 1, seed=0)
  with pytest.raises(ValueError, match="samples_per_class must be a positive integer"):
    samplers.ClassBalancedBatches(labels, 2, 0, seed=0)
  with pytest.raises(ValueError, match="steps_per_epoch must be a positive integer"):
    samplers.ClassBalancedBatches(labels, 2, 1, seed=0, steps_per_epoch=0)


# --- every sampler kind: epoch(e) is a pure function of (seed, e) -----------------------------


def make_any_sampler(kind: str, seed: int = 3):
  """A sampler of `kind` on the imbalanced labels; 12 = P x K fits both kinds."""
  return samplers.make_sampler(kind, IMBALANCED_LABELS, batch_size=12, classes_per_batch=4,
                               samples_per_class=3, seed=seed)


@pytest.mark.parametrize("kind", samplers.SAMPLERS)
def test_every_sampler_draws_an_epoch_independently_of_earlier_draws(kind):
  # Resuming at epoch e builds a new sampler and draws e first. A sampler that carried its RNG
  # (or any state) from one epoch into the next would give another epoch e than a run that
  # drew 0 .. e-1 before it; so would one whose epochs share a generator while both iterate.
  fresh = {epoch: np.stack(epoch_batches(make_any_sampler(kind), epoch)) for epoch in range(4)}
  assert len({batches.tobytes() for batches in fresh.values()}) == 4  # Epochs differ.
  for order in ([0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 0, 1, 2]):
    sampler = make_any_sampler(kind)
    for epoch in order:
      np.testing.assert_array_equal(np.stack(epoch_batches(sampler, epoch)), fresh[epoch],
                                    err_msg=f"{kind}: epoch {epoch} after {order}")
  # Two epochs iterated at once, interleaved batch by batch.
  sampler = make_any_sampler(kind)
  first, second = sampler.epoch(1), sampler.epoch(2)
  interleaved = [(next(first), next(second)) for _ in range(len(sampler))]
  np.testing.assert_array_equal(np.stack([a for a, _ in interleaved]), fresh[1], err_msg=kind)
  np.testing.assert_array_equal(np.stack([b for _, b in interleaved]), fresh[2], err_msg=kind)
  # A partly drawn epoch leaves the next one alone.
  sampler = make_any_sampler(kind)
  next(sampler.epoch(0))
  np.testing.assert_array_equal(np.stack(epoch_batches(sampler, 3)), fresh[3], err_msg=kind)


@pytest.mark.parametrize("kind", samplers.SAMPLERS)
def test_every_sampler_depends_on_its_seed(kind):
  np.testing.assert_array_equal(np.stack(epoch_batches(make_any_sampler(kind, seed=3), 1)),
                                np.stack(epoch_batches(make_any_sampler(kind, seed=3), 1)))
  assert not np.array_equal(np.stack(epoch_batches(make_any_sampler(kind, seed=3), 1)),
                            np.stack(epoch_batches(make_any_sampler(kind, seed=4), 1)))


# --- make_sampler ------------------------------------------------------------------------------


def test_make_sampler_builds_both_kinds():
  shuffled = samplers.make_sampler("shuffled", BALANCED_LABELS, batch_size=32,
                                   classes_per_batch=8, samples_per_class=16, seed=0)
  assert isinstance(shuffled, samplers.ShuffledBatches) and shuffled.batch_size == 32
  balanced = samplers.make_sampler("balanced", BALANCED_LABELS, batch_size=12,
                                   classes_per_batch=3, samples_per_class=4, seed=0)
  assert isinstance(balanced, samplers.ClassBalancedBatches) and balanced.batch_size == 12
  implied = samplers.make_sampler("balanced", BALANCED_LABELS, batch_size=None,
                                  classes_per_batch=3, samples_per_class=4, seed=0)
  np.testing.assert_array_equal(np.stack(epoch_batches(balanced, 1)),
                                np.stack(epoch_batches(implied, 1)))


def test_make_sampler_errors():
  with pytest.raises(ValueError, match=r"batch_size 16 is inconsistent.*3 x 4 = 12"):
    samplers.make_sampler("balanced", BALANCED_LABELS, batch_size=16, classes_per_batch=3,
                          samples_per_class=4, seed=0)
  with pytest.raises(ValueError, match="needs classes_per_batch"):
    samplers.make_sampler("balanced", BALANCED_LABELS, batch_size=12, classes_per_batch=None,
                          samples_per_class=4, seed=0)
  with pytest.raises(ValueError, match="needs a batch_size"):
    samplers.make_sampler("shuffled", BALANCED_LABELS, batch_size=None, seed=0)
  with pytest.raises(ValueError, match="Unknown sampler 'random'.*shuffled.*balanced"):
    samplers.make_sampler("random", BALANCED_LABELS, batch_size=12, classes_per_batch=3,
                          samples_per_class=4, seed=0)
