"""In-batch mining: everything about how the mined losses find their pairs and triplets.

Every function is pure, jit-able and uses O(B^2) memory: no [B, B, B] array is ever built.
Miners work on a block of rows of the distance matrix ([C, B]: C anchors against all B
examples), so large batches are mined block by block (`blocks`).

  backend.py     where the sorting miners run ("auto" | "numpy" | "xla"): the one place
                 that decides, from the user's choice, the platform and the device count
  keys.py        the integer sort keys (value, tag, column) of a distance row
  row_sort.py    rows sorted by those keys, in NumPy on the host or inside XLA
  host.py        the semi-hard miner in NumPy (the "numpy" backend)
  semihard.py    semi-hard sums and their gradient (TFA semantics)
  batch_all.py   batch-all sums and their gradient
  batch_hard.py  the hardest positive and negative of every anchor
  masks.py       label masks
  blocks.py      blocks of anchor rows for large batches
  shards.py      a batch split over the devices of a mesh axis: each mines its own anchors
"""

from tripletjax.mining.backend import BACKENDS, check_backend, resolve_backend
from tripletjax.mining.batch_all import BatchAllSums, batch_all_sums
from tripletjax.mining.batch_hard import HardestPairs, hardest_pairs
from tripletjax.mining.blocks import map_over_anchor_blocks, sum_over_anchor_blocks
from tripletjax.mining.masks import LabelMasks, label_masks
from tripletjax.mining.semihard import SemiHardSums, semihard_sums
from tripletjax.mining.shards import ShardAnchors, shard_anchors

__all__ = [
    "BACKENDS",
    "BatchAllSums",
    "HardestPairs",
    "LabelMasks",
    "SemiHardSums",
    "ShardAnchors",
    "batch_all_sums",
    "check_backend",
    "hardest_pairs",
    "label_masks",
    "map_over_anchor_blocks",
    "resolve_backend",
    "semihard_sums",
    "shard_anchors",
    "sum_over_anchor_blocks",
]
