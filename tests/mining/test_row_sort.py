"""Row sorts by (value, tag, column): every implementation against NumPy's lexsort."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.mining import oracle
from tripletjax import losses
from tripletjax.mining import backend
from tripletjax.mining import row_sort

# Every sort method, and every backend request as resolved on this machine.
IMPLEMENTATIONS = {
    method: (lambda method: lambda v, t: row_sort.sort_rows(
        v, t, backend.resolve_backend(method, num_columns=v.shape[-1])))(method)
    for method in backend.BACKENDS}


def _lexsort_rows(values: np.ndarray, tags: np.ndarray):
  perm = oracle.row_order(values, tags)
  return (np.take_along_axis(values, perm, -1), np.take_along_axis(tags, perm, -1), perm)


def _cases():
  rng = np.random.default_rng(0)
  yield "random", rng.random((7, 33), dtype=np.float32), rng.random((7, 33)) < 0.3
  # Few distinct values: long runs of ties, broken by the tag, then by the column.
  yield "ties", rng.integers(0, 3, (5, 40)).astype(np.float32) / 2, rng.random((5, 40)) < 0.5
  yield "all_equal", np.ones((3, 16), np.float32), rng.random((3, 16)) < 0.5
  yield "zeros", np.zeros((2, 9), np.float32), rng.random((2, 9)) < 0.5
  yield "one_column", rng.random((4, 1), dtype=np.float32), np.array([[True], [False]] * 2)
  yield "batched", rng.integers(0, 4, (2, 3, 10)).astype(np.float32), rng.random((2, 3, 10)) < 0.4
  # Values one ulp apart must not be merged into a tie.
  tiny = np.nextafter(np.float32(1.0), np.float32(2.0))
  yield "ulp_apart", np.array([[tiny, 1.0, tiny, 1.0]], np.float32), np.array([[0, 1, 1, 0]], bool)
  # The extremes of the packed key (value bits << 1 | tag): the largest float, infinity, the
  # smallest normal float (XLA:CPU flushes subnormals to zero), 0.
  largest, smallest = np.finfo(np.float32).max, np.finfo(np.float32).tiny
  extremes = np.array([np.inf, largest, 0.0, smallest, np.inf, 0.0, largest, 1.0], np.float32)
  yield "extremes", extremes[None], np.array([[1, 0, 1, 0, 0, 0, 1, 1]], bool)


@pytest.mark.parametrize("implementation", sorted(IMPLEMENTATIONS))
@pytest.mark.parametrize("case", [name for name, _, _ in _cases()])
def test_every_sort_matches_lexsort(implementation, case):
  values, tags = next((v, t) for name, v, t in _cases() if name == case)
  expected = _lexsort_rows(values, tags)
  result = jax.jit(IMPLEMENTATIONS[implementation])(jnp.asarray(values), jnp.asarray(tags))
  for got, want in zip(result, expected):
    np.testing.assert_array_equal(np.asarray(got), want)


def test_negative_zero_sorts_as_zero():
  values = jnp.array([[0.5, -0.0, 0.0, 0.25]])
  tags = jnp.array([[False, True, False, False]])
  for method in (backend.NUMPY, backend.RANK_KEY, backend.THREE_KEYS, backend.PACKED_KEY):
    result = row_sort.sort_rows(values, tags, method)
    np.testing.assert_array_equal(result.perm, [[2, 1, 3, 0]])
    np.testing.assert_array_equal(result.values, [[0.0, 0.0, 0.25, 0.5]])


def test_unknown_method_is_an_error():
  with pytest.raises(ValueError, match="mining_backend 'radix' is not resolved"):
    row_sort.sort_rows(jnp.zeros((2, 2)), jnp.zeros((2, 2), bool), "radix")
  with pytest.raises(ValueError, match="Unknown mining_backend 'radix'"):
    backend.resolve_backend("radix", num_columns=2)


@pytest.mark.parametrize("loss", [losses.triplet_semihard_loss, losses.batch_all_triplet_loss])
def test_every_xla_sort_gives_the_miners_the_same_results(loss):
  # A batch on an integer grid: many tied distances, resolved by (value, tag, column).
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 4, 48).astype(np.int32)
  embeddings = rng.integers(0, 3, (48, 4)).astype(np.float32)
  results = {}
  for method in (backend.RANK_KEY, backend.THREE_KEYS, backend.PACKED_KEY):
    value_and_grad = jax.jit(jax.value_and_grad(
        lambda x, method=method: loss(labels, x, margin=0.5, mining_backend=method,
                                      return_stats=True), has_aux=True))
    results[method] = jax.tree.map(np.asarray, value_and_grad(embeddings))
  for method, result in results.items():
    for got, want in zip(jax.tree.leaves(result), jax.tree.leaves(results[backend.RANK_KEY])):
      np.testing.assert_array_equal(got, want, err_msg=method)
