"""tripletjax: metric learning with triplet and contrastive losses in JAX.

Losses take integer `labels[B]` and `embeddings[B, D]` and return a scalar; every mined loss
can also return its mining statistics (`return_stats=True`). See `tripletjax.losses` (the
losses of cosine similarities, equal to pytorch-metric-learning's: `tripletjax.similarity_losses`);
for a batch sharded over several devices, `tripletjax.sharded`; for a cross-batch memory,
`tripletjax.memory`.
"""

from tripletjax.distances import pairwise_distances
from tripletjax.losses import (
    MINED_LOSSES,
    batch_all_triplet_loss,
    contrastive_loss,
    contrastive_pair_loss,
    multi_similarity_loss,
    ntxent_loss,
    supcon_loss,
    triplet_distances,
    triplet_hard_loss,
    triplet_loss,
    triplet_semihard_loss,
)
from tripletjax.sharded import MINING_SCOPES, sharded_loss

__all__ = [
    "MINED_LOSSES",
    "MINING_SCOPES",
    "batch_all_triplet_loss",
    "contrastive_loss",
    "contrastive_pair_loss",
    "multi_similarity_loss",
    "ntxent_loss",
    "pairwise_distances",
    "sharded_loss",
    "supcon_loss",
    "triplet_distances",
    "triplet_hard_loss",
    "triplet_loss",
    "triplet_semihard_loss",
]

__version__ = "0.1.0"
