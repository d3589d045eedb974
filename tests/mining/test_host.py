"""The semi-hard miner in NumPy on the host (the "numpy" backend): its threads and its padding
rows, against `tripletjax.reference` and the float64 oracle of `tests.mining.oracle` (which
also has the gradient).

The host miner splits the rows of a block over threads above `host._PARALLEL_MIN_ENTRIES`
entries; the `host_slices` fixture (conftest.py) records the slices it mined, which proves the
path that ran. B = 600 runs the xla backend too, as the comparison. The batches sit on an
integer grid: exact distances with many ties, so every count must match exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.mining import oracle
from tripletjax.mining import host as host_mining

BACKENDS = ("numpy", "xla")
MARGINS = (0.2, 1.0)


# ----------------------------------------------------------------------------------------------
# B = 600: above the thread threshold (600 x 600 >= 2^18 entries), one block.


def _batch_600():
  rng = np.random.default_rng(600)
  # 16 classes keep batch-all's float32 triplet counts (~12.4M) below 2^24, where they are exact.
  labels = rng.integers(0, 16, size=600).astype(np.int32)
  return labels, oracle.integer_grid(rng, 600)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", ["semihard", "batch_all"])
def test_batch_of_600_matches_reference_and_oracle(variant, backend, host_slices,
                                                   value_and_grad):
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
