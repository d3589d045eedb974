"""Fixtures of the miners' tests: the sorting miners' losses, and the host miner's threads."""

from __future__ import annotations

import functools
import os

import jax
import pytest

import tripletjax
from tripletjax.mining import host as host_mining

LOSSES = {"semihard": tripletjax.triplet_semihard_loss,
          "batch_all": tripletjax.batch_all_triplet_loss}
HOST_CORES = 3


@pytest.fixture
def value_and_grad():
  """value_and_grad(variant, backend, metric): jit of (embeddings, labels, margin) ->
  ((loss, stats), gradient) of the sorting miner's loss ("semihard" or "batch_all").

  A new function each call, so that module constants patched by a test are read while tracing.
  """
  return _value_and_grad


def _value_and_grad(variant: str, backend: str, metric: str):
  loss_fn = functools.partial(LOSSES[variant], metric=metric, return_stats=True,
                              mining_backend=backend)
  return jax.jit(jax.value_and_grad(lambda e, y, m: loss_fn(y, e, margin=m), has_aux=True))


@pytest.fixture
def host_slices(monkeypatch):
  """The host miner sees HOST_CORES (3) cores (on any machine); returns the rows of every slice.

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
