"""NaN in gives NaN out: every loss, both mining backends, one block and anchor blocks, jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tripletjax import losses
from tripletjax.mining import blocks

BATCH, DIM = 12, 4

# name -> loss(labels, embeddings): every loss of the library, each sorting miner on both
# backends. The explicit-pair losses take their pairs from the rows of one batch.
LOSSES = {
    "semihard-numpy": lambda y, x: losses.triplet_semihard_loss(y, x, mining_backend="numpy"),
    "semihard-xla": lambda y, x: losses.triplet_semihard_loss(y, x, mining_backend="xla"),
    "batch_all-numpy": lambda y, x: losses.batch_all_triplet_loss(y, x, mining_backend="numpy"),
    "batch_all-xla": lambda y, x: losses.batch_all_triplet_loss(y, x, mining_backend="xla"),
    "hard": losses.triplet_hard_loss,
    "hard-soft": lambda y, x: losses.triplet_hard_loss(y, x, soft=True),
    "contrastive": losses.contrastive_loss,
    "contrastive_pair": lambda y, x: losses.contrastive_pair_loss(
        y[:BATCH // 2] == y[BATCH // 2:], x[:BATCH // 2], x[BATCH // 2:]),
    "triplet": lambda y, x: losses.triplet_loss(x[:BATCH // 3], x[BATCH // 3:2 * BATCH // 3],
                                                x[2 * BATCH // 3:]),
}
# The mined losses with statistics, by the same names.
STATS_LOSSES = {
    "semihard-numpy": lambda y, x: losses.triplet_semihard_loss(
        y, x, mining_backend="numpy", return_stats=True),
    "semihard-xla": lambda y, x: losses.triplet_semihard_loss(
        y, x, mining_backend="xla", return_stats=True),
    "batch_all-numpy": lambda y, x: losses.batch_all_triplet_loss(
        y, x, mining_backend="numpy", return_stats=True),
    "hard": lambda y, x: losses.triplet_hard_loss(y, x, return_stats=True),
    "contrastive": lambda y, x: losses.contrastive_loss(y, x, return_stats=True),
}


# The losses that mine in blocks of anchor rows when the batch is large (`blocks.BLOCK_ENTRIES`).
BLOCK_LOSSES = ("semihard-numpy", "semihard-xla", "batch_all-numpy", "batch_all-xla", "hard",
                "hard-soft")
# (name, path): every loss on the one-block path, the block losses also on the block path.
LOSS_PATHS = ([(name, "one_block") for name in LOSSES]
              + [(name, "anchor_blocks") for name in BLOCK_LOSSES])


def batch(seed: int = 0):
  rng = np.random.default_rng(seed)
  labels = np.arange(BATCH, dtype=np.int32) % 3
  return labels, rng.normal(size=(BATCH, DIM)).astype(np.float32)


def use_path(path: str, monkeypatch) -> None:
  """"anchor_blocks": make the block losses take their `lax.scan` over blocks of 5 anchors."""
  if path == "anchor_blocks":
    monkeypatch.setattr(blocks, "BLOCK_ENTRIES", 5 * BATCH)


@pytest.mark.parametrize("name, path", LOSS_PATHS)
def test_a_nan_makes_loss_and_every_gradient_row_nan(name, path, monkeypatch):
  use_path(path, monkeypatch)
  labels, embeddings = batch()
  embeddings[3, 1] = np.nan
  value_and_grad = jax.value_and_grad(LOSSES[name], argnums=1)
  # Without jit too on one block (op by op, the scan path is slow there).
  for jit in (True, False) if path == "one_block" else (True,):
    fn = jax.jit(value_and_grad) if jit else value_and_grad
    value, gradient = fn(labels, embeddings)
    assert np.isnan(float(value)), (name, jit)
    assert np.all(np.isnan(np.asarray(gradient))), (name, jit)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_an_infinity_makes_loss_and_every_gradient_row_nan(name):
  value_and_grad = jax.jit(jax.value_and_grad(LOSSES[name], argnums=1))
  for bad in (np.inf, -np.inf):
    labels, embeddings = batch()
    embeddings[7, 0] = bad
    value, gradient = value_and_grad(labels, embeddings)
    assert np.isnan(float(value)), (name, bad)
    assert np.all(np.isnan(np.asarray(gradient))), (name, bad)


@pytest.mark.parametrize("name", sorted(STATS_LOSSES))
def test_stats_do_not_hide_a_nan(name):
  labels, embeddings = batch()
  embeddings[0, 0] = np.nan
  loss, stats = jax.jit(STATS_LOSSES[name])(labels, embeddings)
  assert np.isnan(float(loss))
  floats = {key: float(value) for key, value in stats.items()
            if jnp.issubdtype(value.dtype, jnp.floating)}
  assert "fraction_active" in floats
  assert all(np.isnan(value) for value in floats.values()), floats


def test_half_precision_nan_gives_nan_in_the_input_dtype():
  labels, embeddings = batch()
  embeddings[5, 2] = np.nan
  loss = losses.triplet_semihard_loss(labels, jnp.asarray(embeddings, jnp.bfloat16))
  assert loss.dtype == jnp.bfloat16 and np.isnan(float(loss))


@pytest.mark.parametrize("name, path", LOSS_PATHS)
def test_finite_inputs_give_bit_identical_values_and_gradients(name, path, monkeypatch):
  use_path(path, monkeypatch)
  # The guard multiplies by 1 and selects the loss itself: compare with the guard removed.
  labels, embeddings = batch(1)
  embeddings[2] = embeddings[7]  # A duplicate row: zero distances, the delicate gradient.
  value_and_grad = jax.jit(jax.value_and_grad(LOSSES[name], argnums=1))
  guarded = value_and_grad(labels, embeddings)
  monkeypatch.setattr(losses, "_poison_unless_finite", lambda *arrays, **_: (arrays, True))
  unguarded = jax.jit(jax.value_and_grad(LOSSES[name], argnums=1))(labels, embeddings)
  for got, expected in zip(guarded, unguarded):
    assert np.asarray(got).tobytes() == np.asarray(expected).tobytes(), name
  assert np.all(np.isfinite(np.asarray(guarded[1])))
