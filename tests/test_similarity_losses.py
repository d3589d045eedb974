"""Multi-similarity, NT-Xent and SupCon (`tripletjax.similarity_losses`).

Each loss is compared with the NumPy reference (float64, loops; `tripletjax.reference`) and
with pytorch-metric-learning 2.9 itself (values and gradients, 1e-5 in float32) on random and
degenerate batches: one class, all classes distinct, duplicate rows, ties, B = 2. Then jit,
bfloat16, no positives, NaN in -> NaN out, and overflow-prone temperatures. The sharded losses
and the cross-batch memory have their own files.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import skip_unless_ci
from tests.mining import oracle
from tripletjax import losses
from tripletjax import reference

# name -> (loss name in MINED_LOSSES, options). pytorch-metric-learning's defaults, and others.
VARIANTS = {
    "ms-mined": ("multi_similarity", {}),
    "ms-all-pairs": ("multi_similarity", {"mining": False}),
    "ms-options": ("multi_similarity", {"alpha": 1.5, "beta": 20.0, "base": 0.3,
                                        "epsilon": 0.3}),
    "ntxent": ("ntxent", {}),
    "ntxent-t0.5": ("ntxent", {"temperature": 0.5}),
    "supcon": ("supcon", {}),
    "supcon-t0.05": ("supcon", {"temperature": 0.05}),
}
# The variants every batch is checked with (the others on the random batch only).
SWEEP = ("ms-mined", "ms-all-pairs", "ntxent", "supcon")


def _batches() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Random and degenerate batches (labels int32, embeddings float32), of three shapes only
  (each shape is one compilation)."""
  rng = np.random.default_rng(19)
  small = lambda: rng.normal(size=(8, 4)).astype(np.float32)
  duplicates = small()
  duplicates[5] = duplicates[2]  # Same label: a positive at similarity 1.
  duplicates[6] = duplicates[1]  # Different labels: a negative at similarity 1.
  # Small integer coordinates: many equal similarities.
  ties = rng.integers(-1, 2, size=(8, 4)).astype(np.float32)
  ties[np.all(ties == 0, axis=1), 0] = 1.0  # No zero row.
  return {
      "random": (rng.integers(0, 4, 24).astype(np.int32), rng.normal(size=(24, 6)).astype(np.float32)),
      "one-class": (np.zeros(8, np.int32), small()),
      "all-distinct": (np.arange(8, dtype=np.int32), small()),
      "duplicates": (np.array([0, 1, 0, 1, 2, 0, 2, 2], np.int32), duplicates),
      "ties": (np.array([0, 1, 2, 0, 1, 2, 0, 1], np.int32), ties),
      "two-pairs": (np.array([0, 0, 1, 1, 2, 3, 4, 5], np.int32), small()),
      "b2-same": (np.array([3, 3], np.int32), rng.normal(size=(2, 4)).astype(np.float32)),
      "b2-different": (np.array([0, 1], np.int32), rng.normal(size=(2, 4)).astype(np.float32)),
  }


BATCHES = _batches()


def _jax_loss(variant):
  name, options = VARIANTS[variant]
  return functools.partial(losses.MINED_LOSSES[name].fn, **options)


@functools.cache
def _jitted(variant):
  """jit of ((loss, stats), d loss / d embeddings) of a variant: one per variant and shape."""
  loss_fn = functools.partial(_jax_loss(variant), return_stats=True)
  return jax.jit(jax.value_and_grad(loss_fn, argnums=1, has_aux=True))


def _results(variant, batch):
  (loss, stats), grad = _jitted(variant)(*BATCHES[batch])
  return loss, stats, grad


def _reference_loss(variant):
  name, options = VARIANTS[variant]
  return functools.partial(reference.MINED_LOSSES[name], **options)


def _cases():
  return [(variant, batch) for variant in SWEEP for batch in BATCHES] + [
      (variant, "random") for variant in VARIANTS if variant not in SWEEP]


@pytest.mark.parametrize("variant, batch", _cases())
def test_matches_the_numpy_reference(variant, batch):
  labels, embeddings = BATCHES[batch]
  loss, stats, _ = _results(variant, batch)
  expected, expected_stats = _reference_loss(variant)(labels, embeddings, return_stats=True)
  assert np.isfinite(float(loss))
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=1e-6)
  assert set(stats) == set(expected_stats) == set(losses.MINED_LOSSES[VARIANTS[variant][0]].stats)
  for key, value in expected_stats.items():
    if key.startswith("num_"):
      assert int(stats[key]) == value, key
    else:
      np.testing.assert_allclose(float(stats[key]), value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_the_batches_exercise_the_conventions():
  # The degenerate batches reach the branches they are meant for.
  ms = lambda batch: reference.multi_similarity_loss(*BATCHES[batch], return_stats=True)
  assert ms("one-class") == (0.0, pytest.approx(ms("one-class")[1]))  # The miner keeps nothing.
  assert reference.multi_similarity_loss(*BATCHES["one-class"], mining=False) > 0
  assert reference.ntxent_loss(*BATCHES["all-distinct"]) == 0.0
  assert reference.supcon_loss(*BATCHES["one-class"]) == 0.0
  assert reference.multi_similarity_loss(*BATCHES["all-distinct"], mining=False) > 0
  assert 0 < ms("random")[1]["fraction_positive_mined"] < 1
  assert 0 < ms("random")[1]["fraction_negative_mined"] < 1


def test_matches_the_finite_difference_gradient_of_the_reference():
  labels, embeddings = BATCHES["two-pairs"]
  labels = np.array([0, 0, 0, 1, 1, 2, 2, 3], np.int32)
  for variant in ("ms-all-pairs", "ntxent", "supcon"):
    _, gradient = _jitted(variant)(labels, embeddings)
    expected = oracle.central_differences(
        lambda x, fn=_reference_loss(variant): fn(labels, x), embeddings, step=1e-5)
    assert np.abs(expected).max() > 1e-3, variant
    np.testing.assert_allclose(gradient, expected, rtol=1e-3, atol=1e-5, err_msg=variant)


# ----------------------------------------------------------------------------------------------
# pytorch-metric-learning itself.


def import_pml():
  """(torch, pytorch_metric_learning); skips, or fails under CI, where they are missing."""
  try:
    import pytorch_metric_learning  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    skip_unless_ci(f"pytorch-metric-learning cannot be imported ({error}); "
                   "pip install 'tripletjax[torch]'")
  return torch, pytorch_metric_learning


def pml_loss(variant):
  """The pytorch-metric-learning loss (and miner, or None) of a variant."""
  _, pml = import_pml()
  from pytorch_metric_learning import losses as pml_losses  # pylint: disable=import-outside-toplevel
  from pytorch_metric_learning import miners  # pylint: disable=import-outside-toplevel
  assert pml.__version__.startswith("2.9")
  name, options = VARIANTS[variant]
  if name == "multi_similarity":
    loss = pml_losses.MultiSimilarityLoss(**{key: options[key] for key in ("alpha", "beta", "base")
                                             if key in options})
    miner = (miners.MultiSimilarityMiner(options.get("epsilon", 0.1))
             if options.get("mining", True) else None)
    return loss, miner
  if name == "ntxent":
    return pml_losses.NTXentLoss(**options), None
  return pml_losses.SupConLoss(**options), None


def pml_value_and_grad(variant, labels, embeddings):
  torch, _ = import_pml()
  loss_fn, miner = pml_loss(variant)
  x = torch.tensor(embeddings, requires_grad=True)
  y = torch.tensor(labels.astype(np.int64))
  loss = loss_fn(x, y, miner(x, y) if miner is not None else None)
  if not loss.requires_grad:  # A zero loss that does not depend on x.
    return float(loss), np.zeros_like(embeddings)
  (grad,) = torch.autograd.grad(loss, x)
  return float(loss), grad.numpy()


def assert_matches_pml(value, grad, expected_value, expected_grad, where):
  np.testing.assert_allclose(float(value), expected_value, rtol=1e-5, atol=1e-6, err_msg=where)
  np.testing.assert_allclose(np.asarray(grad), expected_grad, rtol=1e-5, atol=1e-5,
                             err_msg=where)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_matches_pytorch_metric_learning(variant):
  import_pml()
  for batch, (labels, embeddings) in BATCHES.items():
    if variant not in SWEEP and batch != "random":
      continue
    value, _, grad = _results(variant, batch)
    expected_value, expected_grad = pml_value_and_grad(variant, labels, embeddings)
    assert_matches_pml(value, grad, expected_value, expected_grad, f"{variant} on {batch}")


def test_matches_pytorch_metric_learning_on_fresh_random_batches():
  # Batches the tests never saw: a new seed per run.
  import_pml()
  seed = np.random.SeedSequence().entropy
  rng = np.random.default_rng(seed)
  for variant in SWEEP:
    # The random batch's shape, so the compiled functions are reused.
    labels = rng.integers(0, int(rng.integers(1, 8)), 24).astype(np.int32)
    embeddings = (rng.normal(size=(24, 6)) * rng.uniform(0.1, 10)).astype(np.float32)
    (value, _), grad = _jitted(variant)(labels, embeddings)
    expected_value, expected_grad = pml_value_and_grad(variant, labels, embeddings)
    assert_matches_pml(value, grad, expected_value, expected_grad, f"{variant}, seed {seed}")


# ----------------------------------------------------------------------------------------------
# jit, bfloat16, conventions and numerical safety.


@pytest.mark.parametrize("variant", ["ms-mined", "ntxent", "supcon"])
def test_jit_and_no_jit_agree(variant):
  labels, embeddings = BATCHES["duplicates"]
  eager = jax.value_and_grad(_jax_loss(variant), argnums=1)(labels, embeddings)
  jitted, _, grad = _results(variant, "duplicates")
  np.testing.assert_allclose(float(eager[0]), float(jitted), rtol=1e-6)
  np.testing.assert_allclose(eager[1], grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("variant", ["ms-mined", "ntxent", "supcon"])
def test_bfloat16_is_computed_in_float32_and_returned_in_bfloat16(variant):
  labels, embeddings = BATCHES["random"]
  half = jnp.asarray(embeddings, jnp.bfloat16)
  (loss, _), grad = _jitted(variant)(labels, half)
  assert loss.dtype == grad.dtype == jnp.bfloat16
  # The float32 loss of the rounded inputs, rounded once more.
  expected = _reference_loss(variant)(labels, np.asarray(half.astype(jnp.float32)))
  np.testing.assert_allclose(float(loss), expected, rtol=1e-2)
  assert np.all(np.isfinite(np.asarray(grad.astype(jnp.float32))))


@pytest.mark.parametrize("variant", SWEEP)
def test_a_batch_without_positive_pairs_is_finite_zero_with_a_zero_gradient(variant):
  loss, stats, grad = _results(variant, "all-distinct")
  assert int(stats["num_positive_pairs"]) == 0
  if VARIANTS[variant] == ("multi_similarity", {"mining": False}):
    # Without the miner the negatives alone still count, as in pytorch-metric-learning.
    assert float(loss) > 0 and np.all(np.isfinite(grad))
  else:
    assert float(loss) == 0.0 and not np.any(grad)
  assert all(np.isfinite(float(value)) for value in stats.values())


@pytest.mark.parametrize("variant", ["ms-mined", "ms-all-pairs", "ntxent", "supcon"])
def test_nan_in_gives_nan_out(variant):
  labels, embeddings = BATCHES["random"]
  embeddings = embeddings.copy()
  embeddings[3, 1] = np.nan
  (loss, stats), grad = _jitted(variant)(labels, embeddings)
  assert np.isnan(float(loss)) and np.all(np.isnan(grad))
  for key, value in stats.items():
    if not key.startswith("num_"):
      assert np.isnan(float(value)), key


@pytest.mark.parametrize("variant", ["ms-options", "ntxent", "supcon"])
def test_extreme_logits_stay_finite(variant):
  # Temperature 0.01 and beta 200: logits of +-100 and +-200, which a plain exp overflows
  # (float32 and bfloat16 both), whose log-sum-exp does not.
  name, options = VARIANTS[variant]
  options = dict(options, **({"beta": 200.0, "alpha": 50.0} if name == "multi_similarity"
                             else {"temperature": 0.01}))
  labels = np.array([0, 0, 1, 1, 2, 2], np.int32)
  embeddings = np.array([[1, 0], [1, 0.01], [-1, 0], [-1, 0.01], [1, 0.02], [0, 1]], np.float32)
  fn = functools.partial(losses.MINED_LOSSES[name].fn, **options)
  value_and_grad = jax.jit(jax.value_and_grad(fn, argnums=1))
  for dtype in (jnp.float32, jnp.bfloat16):
    loss, grad = value_and_grad(labels, jnp.asarray(embeddings, dtype))
    assert np.isfinite(float(loss)), dtype
    assert np.all(np.isfinite(np.asarray(grad.astype(jnp.float32)))), dtype
  expected = reference.MINED_LOSSES[name](labels, embeddings, **options)
  np.testing.assert_allclose(float(value_and_grad(labels, embeddings)[0]), expected, rtol=1e-4)


@pytest.mark.parametrize("option, value, match", [
    ("temperature", 0.0, "temperature must be > 0"),
    ("temperature", float("nan"), "temperature must be finite"),
])
def test_bad_temperature_is_named(option, value, match):
  labels, embeddings = BATCHES["random"]
  for name in ("ntxent", "supcon"):
    with pytest.raises(ValueError, match=match):
      losses.MINED_LOSSES[name](labels, embeddings, **{option: value})


@pytest.mark.parametrize("option, value", [("alpha", -1.0), ("beta", 0.0), ("base", np.inf),
                                           ("epsilon", np.nan)])
def test_bad_multi_similarity_option_is_named(option, value):
  labels, embeddings = BATCHES["random"]
  with pytest.raises(ValueError, match=f"^{option} must be"):
    losses.multi_similarity_loss(labels, embeddings, **{option: value})
