"""Large batches mined in blocks of anchor rows, with padding rows (anchor index -1): the sorting
miners through every block, on both backends, against `tripletjax.reference` and the float64
oracle of `tests.mining.oracle` (which also has the gradient).

The batches sit on an integer grid: exact distances with many ties, so every count must match
exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.mining import oracle
from tripletjax.mining import blocks
from tripletjax.mining import host as host_mining

BACKENDS = ("numpy", "xla")
MARGINS = (0.2, 1.0)


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
                                                                    host_slices, value_and_grad,
                                                                    monkeypatch):
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
