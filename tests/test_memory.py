"""The cross-batch memory (`tripletjax.memory`): a functional ring buffer, and the losses of a
batch's anchors against it, step by step equal to pytorch-metric-learning 2.9's
`CrossBatchMemory` and to the NumPy reference (`tripletjax.reference.CrossBatchMemory`).

On several devices: `tests/test_similarity_losses_sharded.py`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_similarity_losses import assert_matches_pml, import_pml
from tripletjax import losses
from tripletjax import memory as memory_lib
from tripletjax import reference

# name -> (loss name, options), for the memory.
VARIANTS = {
    "ms-mined": ("multi_similarity", {}),
    "ms-all-pairs": ("multi_similarity", {"mining": False}),
    "ntxent": ("ntxent", {}),
    "supcon": ("supcon", {}),
}


def batches(num_steps, batch_size, dim, num_classes, seed=0):
  rng = np.random.default_rng(seed)
  for _ in range(num_steps):
    yield (rng.integers(0, num_classes, batch_size).astype(np.int32),
           rng.normal(size=(batch_size, dim)).astype(np.float32))


@functools.cache
def memory_step(variant):
  """jit of (embeddings, memory, labels) -> (((loss, stats), memory), d loss / d embeddings)."""
  name, options = VARIANTS[variant]

  def loss_fn(embeddings, memory, labels):
    (loss, stats), memory = memory_lib.cross_batch_loss(name, memory, labels, embeddings,
                                                        return_stats=True, **options)
    return loss, (stats, memory)
  return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))


def pml_memory(variant, dim, memory_size):
  _, pml = import_pml()
  from pytorch_metric_learning import losses as pml_losses  # pylint: disable=import-outside-toplevel
  from pytorch_metric_learning import miners  # pylint: disable=import-outside-toplevel
  name, options = VARIANTS[variant]
  loss, miner = {
      "multi_similarity": (pml_losses.MultiSimilarityLoss(),
                           miners.MultiSimilarityMiner() if options.get("mining", True) else None),
      "ntxent": (pml_losses.NTXentLoss(), None),
      "supcon": (pml_losses.SupConLoss(), None),
  }[name]
  return pml_losses.CrossBatchMemory(loss, dim, memory_size=memory_size, miner=miner)


def compare_with_pml(variant, num_steps, batch_size, dim, memory_size, num_classes):
  torch, _ = import_pml()
  name, options = VARIANTS[variant]
  peer = pml_memory(variant, dim, memory_size)
  twin = reference.CrossBatchMemory(reference.MINED_LOSSES[name], dim, memory_size)
  memory = memory_lib.init(memory_size, dim)
  for step, (labels, embeddings) in enumerate(batches(num_steps, batch_size, dim, num_classes)):
    (loss, (stats, memory)), grad = memory_step(variant)(embeddings, memory, labels)
    x = torch.tensor(embeddings, requires_grad=True)
    expected = peer(x, torch.tensor(labels.astype(np.int64)))
    expected_grad = (torch.autograd.grad(expected, x)[0].numpy() if expected.requires_grad
                     else np.zeros_like(embeddings))
    where = f"{variant} step {step}"
    assert_matches_pml(loss, grad, float(expected.detach()), expected_grad, where)
    np.testing.assert_allclose(float(loss), twin(labels, embeddings, **options), rtol=1e-5,
                               atol=1e-6, err_msg=where)
    # The same memory: contents, labels and write position.
    count = int(memory.count)
    assert count == min((step + 1) * batch_size, memory_size), where
    assert int(memory.position) == peer.queue_idx == twin.position, where
    np.testing.assert_array_equal(np.asarray(memory.embeddings)[:count],
                                  peer.embedding_memory.numpy()[:count], err_msg=where)
    np.testing.assert_array_equal(np.asarray(memory.labels)[:count],
                                  peer.label_memory.numpy()[:count], err_msg=where)
    assert int(stats["num_positive_pairs"]) > 0, where


@pytest.mark.parametrize("variant", ["ms-mined", "ntxent", "supcon"])
def test_equals_pytorch_metric_learning_step_by_step(variant):
  # 6 steps of 16 into 40 slots: the memory fills at step 3 and wraps in the middle of a batch.
  compare_with_pml(variant, num_steps=6, batch_size=16, dim=6, memory_size=40, num_classes=5)


def test_equals_pytorch_metric_learning_at_full_size():
  # The acceptance case: 10 steps of 256 into 4096 slots, with the miner.
  compare_with_pml("ms-mined", num_steps=10, batch_size=256, dim=32, memory_size=4096,
                   num_classes=64)


def test_update_is_a_ring_buffer():
  memory = memory_lib.init(5, 2)
  assert [leaf.shape for leaf in jax.tree.leaves(memory)] == [(5, 2), (5,), (), ()]
  update = jax.jit(memory_lib.update)
  for step in range(3):
    labels = np.array([10 * step, 10 * step + 1], np.int32)
    memory = update(memory, labels, np.full((2, 2), step, np.float32))
  # Rows 0-1 of step 0, 2-3 of step 1, then step 2 at slots 4 and 0.
  np.testing.assert_array_equal(memory.labels, [21, 1, 10, 11, 20])
  np.testing.assert_array_equal(memory.embeddings[:, 0], [2, 0, 1, 1, 2])
  assert int(memory.count) == 5 and int(memory.position) == 1


def test_a_batch_larger_than_the_memory_or_of_another_size_is_named():
  labels, embeddings = next(batches(1, 8, 4, 3))
  with pytest.raises(ValueError, match="does not fit in a cross-batch memory of 6"):
    memory_lib.cross_batch_loss("ntxent", memory_lib.init(6, 4), labels, embeddings)
  with pytest.raises(ValueError, match="embeddings have 4 dimensions, the memory 5"):
    memory_lib.cross_batch_loss("ntxent", memory_lib.init(16, 5), labels, embeddings)
  with pytest.raises(ValueError, match="serves the losses"):
    memory_lib.cross_batch_loss("semihard", memory_lib.init(16, 4), labels, embeddings)


@pytest.mark.parametrize("variant", ["ms-all-pairs", "ntxent", "supcon"])
def test_memory_size_0_is_the_plain_loss_bit_for_bit(variant):
  name, options = VARIANTS[variant]
  labels, embeddings = next(batches(1, 12, 5, 3))
  empty = memory_lib.init(0, 5)
  (loss, (stats, memory)), grad = memory_step(variant)(embeddings, empty, labels)
  plain = jax.jit(jax.value_and_grad(
      lambda x: losses.MINED_LOSSES[name](labels, x, return_stats=True, **options),
      has_aux=True))
  (expected, expected_stats), expected_grad = plain(embeddings)
  assert np.asarray(loss).tobytes() == np.asarray(expected).tobytes()
  assert np.asarray(grad).tobytes() == np.asarray(expected_grad).tobytes()
  for key, value in expected_stats.items():
    assert np.asarray(stats[key]).tobytes() == np.asarray(value).tobytes(), key
  assert memory.embeddings.shape == (0, 5)


def test_the_memory_gets_no_gradient_and_the_loss_accepts_the_function():
  steps = list(batches(2, 8, 4, 3))
  memory = memory_lib.update(memory_lib.init(16, 4), *steps[0])
  labels, embeddings = steps[1]
  grad = jax.grad(lambda past: memory_lib.cross_batch_loss(
      losses.supcon_loss, memory._replace(embeddings=past), labels, embeddings)[0])(
          memory.embeddings)
  assert not np.any(grad)
  by_name = memory_lib.cross_batch_loss("supcon", memory, labels, embeddings)[0]
  assert float(by_name) == float(memory_lib.cross_batch_loss(losses.supcon_loss, memory, labels,
                                                              embeddings)[0])


def test_a_nonfinite_batch_gives_nan_and_is_not_written():
  steps = list(batches(2, 8, 4, 3))
  memory = memory_lib.update(memory_lib.init(32, 4), *steps[0])
  labels, embeddings = steps[1]
  embeddings[2, 1] = np.inf
  (loss, (stats, after)), grad = memory_step("ms-mined")(embeddings, memory, labels)
  assert np.isnan(float(loss)) and np.all(np.isnan(grad))
  assert np.isnan(float(stats["mean_positive_similarity"]))
  for leaf, expected in zip(jax.tree.leaves(after), jax.tree.leaves(memory)):
    np.testing.assert_array_equal(leaf, expected)


def test_bfloat16_embeddings():
  memory = memory_lib.init(32, 4)
  step = jax.jit(functools.partial(memory_lib.cross_batch_loss, "supcon"))
  for labels, embeddings in batches(3, 8, 4, 3):
    loss, memory = step(memory, labels, jnp.asarray(embeddings, jnp.bfloat16))
    assert loss.dtype == jnp.bfloat16 and np.isfinite(float(loss))
  assert memory.embeddings.dtype == jnp.float32
