"""Helpers of the models' tests."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx


def rngs(seed: int = 0) -> nnx.Rngs:
  return nnx.Rngs(params=seed, dropout=seed + 1)


def num_params(model: nnx.Module) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
