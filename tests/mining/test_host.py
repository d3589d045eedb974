"""The sorting miners (semi-hard, batch-all) at scale, on every path, for both backends.

The host miner splits the rows of a block over threads above `host_mining._PARALLEL_MIN_ENTRIES`
entries and the losses cut large batches into blocks of anchor rows with padding rows; each
path is checked for values, exact counts and gradients against `tripletjax.reference` and the
float64 oracle of `tests.mining.oracle` (which also has the gradient), for mining_backend "numpy" and
"xla". The batches sit on an integer grid: exact distances with many ties, so every count must
match exactly.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
import pytest

import tripletjax
from tests.mining import oracle
from tripletjax.mining import blocks
from tripletjax.mining import host as host_mining

BACKENDS = ("numpy", "xla")
LOSSES = {"semihard": tripletjax.triplet_semihard_loss,
          "batch_all": tripletjax.batch_all_triplet_loss}
MARGINS = (0.2, 1.0)
HOST_CORES = 3


def value_and_grad(variant: str, backend: str, metric: str):
  """jit of (embeddings, labels, margin) -> ((loss, stats), gradient).

  A new function each call, so that module constants patched by a test are read while tracing.
  """
  loss_fn = functools.partial(LOSSES[variant], metric=metric, return_stats=True,
                              mining_backend=backend)
  return jax.jit(jax.value_and_grad(lambda e, y, m: loss_fn(y, e, margin=m), has_aux=True))


@pytest.fixture
def host_slices(monkeypatch):
  """The host miner sees HOST_CORES cores (on any machine); returns the rows of every slice.

  The recorded slice sizes prove which path (one slice, or one per thread) actually ran.
  """

  class Cores:
    def __getattr__(self, name):
      return getattr(os, name)

    @staticmethod
    def sched_getaffinity(pid):
      del pid
      return set(range(HOST_CORES))

  monkeypatch.setattr(host_mining, "os", Cores())
  sizes = []
  mine_rows = host_mining._semihard_rows

  def recording(distances, *args):
    sizes.append(distances.shape[0])
    return mine_rows(distances, *args)

  monkeypatch.setattr(host_mining, "_semihard_rows", recording)
  return sizes


# ----------------------------------------------------------------------------------------------
# B = 600: above the thread threshold (600 x 600 >= 2^18 entries), one block.


def _batch_600():
  rng = np.random.default_rng(600)
  # 16 classes keep batch-all's float32 triplet counts (~12.4M) below 2^24, where they are exact.
  labels = rng.integers(0, 16, size=600).astype(np.int32)
  return labels, oracle.integer_grid(rng, 600)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", ["semihard", "batch_all"])
def test_batch_of_600_matches_reference_and_oracle(variant, backend, host_slices):
  labels, embeddings = _batch_600()
  assert 600 * 600 >= host_mining._PARALLEL_MIN_ENTRIES
  step = value_and_grad(variant, backend, "l2")
  for margin in MARGINS:
    result = step(embeddings, labels, np.float32(margin))
    oracle.assert_matches(variant, result, labels, embeddings, margin, "l2",
                   f"{variant} {backend} B=600 margin={margin}")
  # The numpy semi-hard miner split every call's 600 rows over the threads.
  on_threads = variant == "semihard" and backend == "numpy"
  assert host_slices == ([200, 200, 200] * len(MARGINS) if on_threads else [])


# ----------------------------------------------------------------------------------------------
# Small batches through every path: blocks of anchor rows with padding rows, and the host
# miner's threads below its usual threshold.


def _small_batches():
  """(name, labels, embeddings) of B = 50, including the empty cases of the mining rules."""
  rng = np.random.default_rng(50)
  grid = lambda: oracle.integer_grid(rng, 50)
  with_singleton = rng.integers(0, 3, size=50).astype(np.int32)
  with_singleton[7] = 99  # An anchor without positives among anchors with some.
  return [
      ("4_classes", rng.integers(0, 4, size=50).astype(np.int32), grid()),
      ("2_classes", rng.integers(0, 2, size=50).astype(np.int32), grid()),
      ("singleton_class", with_singleton, grid()),
      ("one_class", np.zeros(50, np.int32), grid()),              # No negatives: negative 0.
      ("all_distinct", np.arange(50, dtype=np.int32), grid()),    # No positive pair.
  ]


@pytest.mark.parametrize("metric", ["l2", "squared_l2"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", ["semihard", "batch_all"])
def test_blocks_with_padding_and_threads_match_reference_and_oracle(variant, backend, metric,
                                                                    host_slices, monkeypatch):
  # 16 anchor rows per block: blocks 0-2 are full, block 3 holds rows 48, 49 and 14 padding
  # rows (anchor_index -1). Every host block of 2+ rows is split over the threads.
  monkeypatch.setattr(blocks, "BLOCK_ENTRIES", 50 * 16)
  monkeypatch.setattr(host_mining, "_PARALLEL_MIN_ENTRIES", 1)
  step = value_and_grad(variant, backend, metric)
  batches = _small_batches()
  for name, labels, embeddings in batches:
    for margin in MARGINS:
      result = step(embeddings, labels, np.float32(margin))
      oracle.assert_matches(variant, result, labels, embeddings, margin, metric,
                     f"{variant} {backend} {metric} {name} margin={margin}")
  on_threads = variant == "semihard" and backend == "numpy"
  per_call = [6, 5, 5] * 3 + [1, 1]  # np.array_split of 16 rows in 3, then of the 2 real rows.
  assert host_slices == (per_call * len(batches) * len(MARGINS) if on_threads else [])


# ----------------------------------------------------------------------------------------------
# The host miner on its own: padding rows anywhere in the block (the gather path), threads.


@pytest.mark.parametrize("with_gradient", [False, True])
def test_host_miner_with_interleaved_padding_rows_matches_oracle(with_gradient, host_slices,
                                                                 monkeypatch):
  monkeypatch.setattr(host_mining, "_PARALLEL_MIN_ENTRIES", 1)
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 4, size=40).astype(np.int32)
  distance_matrix = oracle.distances(oracle.integer_grid(rng, 40), "l2")
  oracle.check_exact_decisions(distance_matrix, MARGINS)
  anchors = rng.permutation(40)[:20]
  anchor_index = anchors.copy()
  anchor_index[[0, 5, 6, 13, 19]] = -1  # Padding rows: first, inside and last.
  rows = distance_matrix[np.maximum(anchor_index, 0)].astype(np.float32)
  same = labels[np.maximum(anchor_index, 0)][:, None] == labels[None, :]
  real_anchors = anchor_index[anchor_index >= 0]
  for margin in MARGINS:
    totals = host_mining.semihard_sums(rows, same, anchor_index.astype(np.int32),
                                       np.float32(margin), with_gradient)
    mined = oracle.semihard(labels, distance_matrix, margin, anchors=real_anchors)
    where = f"margin={margin}"
    assert int(totals.num_positive_pairs) == mined.stats["num_positive_pairs"], where
    assert int(totals.num_active) == mined.stats["num_active"], where
    assert int(totals.num_fallback) == mined.stats["num_fallback"], where
    np.testing.assert_allclose(float(totals.hinge_sum), mined.stats["hinge_sum"], rtol=1e-6,
                               err_msg=where)
    pairs = mined.stats["num_positive_pairs"]
    np.testing.assert_allclose(float(totals.positive_distance_sum),
                               mined.stats["mean_positive_distance"] * pairs, rtol=1e-6)
    np.testing.assert_allclose(float(totals.negative_distance_sum),
                               mined.stats["mean_negative_distance"] * pairs, rtol=1e-6)
    if not with_gradient:
      assert totals.gradient is None
      continue
    # d hinge_sum / d distances: the oracle's d loss / d distances times the pair count, and
    # nothing on the padding rows.
    expected_gradient = np.zeros(rows.shape)
    expected_gradient[anchor_index >= 0] = mined.distance_gradient * pairs
    np.testing.assert_array_equal(totals.gradient, expected_gradient, err_msg=where)
  # 15 real rows, in 3 slices, per call.
  assert host_slices == [5, 5, 5] * len(MARGINS)
