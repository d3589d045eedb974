"""Tests of the JAX losses against the NumPy reference (`tripletjax.reference`).

Tolerances: the JAX losses compute distances in float32 (Gram-matrix form) while the reference
works in float64 from exact differences, so values are compared to rtol = atol = 1e-5, except
batch-all at rtol 1e-4: its loss is a mean over up to ~B^3 hinges that the JAX side adds up in
float32 running sums (count * (D_ap + m) - sum of D_an), which loses a few more digits. Counts
are integers and compared as such: exactly when they depend on the labels only, and otherwise
(active triplets, fallbacks) up to the number of borderline decisions of the batch, those the
float32 rounding of distances could flip (none on batches with exact distances).

Compilation dominates the run time on CPU. So one jitted function evaluates all the loss
variants at once, it is cached per metric, and the tests use few shapes (embeddings of width 8;
[6, 3] batches for gradients), so compilations are shared between tests.
"""

from __future__ import annotations

import collections
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tripletjax
from tests.mining import oracle
from tripletjax import reference
from tripletjax.mining import blocks

FEATURES = 8
METRICS = ("l2", "squared_l2", "angular")
BATCH_SIZES = (2, 5, 16, 64, 130)
CLASS_COUNTS = (1, 2, 5, "all_distinct")
MARGINS = (0.0, 0.2, 1.0)

# Mined-loss variants: name -> (function name in both modules, fixed keyword options).
MINED = {
    "semihard": ("triplet_semihard_loss", {}),
    "hard": ("triplet_hard_loss", {}),
    "hard_soft": ("triplet_hard_loss", {"soft": True}),
    "batch_all": ("batch_all_triplet_loss", {}),
    "contrastive": ("contrastive_loss", {}),
}
STATS_KEYS = {
    "semihard": {"num_positive_pairs", "fraction_active", "num_fallback",
                 "mean_positive_distance", "mean_negative_distance"},
    "hard": {"num_valid_anchors", "fraction_active", "mean_positive_distance",
             "mean_negative_distance"},
    "batch_all": {"num_valid_triplets", "num_active_triplets", "fraction_active"},
    "contrastive": {"num_positive_pairs", "num_negative_pairs", "fraction_active"},
}
STATS_KEYS["hard_soft"] = STATS_KEYS["hard"]


# Counts that depend on the labels only must be exact. The others (active triplets, fallbacks)
# depend on comparisons of distances and may differ by a borderline case: a batch-all triplet
# whose hinge is 2.3e-7 in float64 can be exactly 0 in float32 (seen at B=130, 1 of 303,810).
_LABEL_ONLY_COUNTS = ("num_positive_pairs", "num_negative_pairs", "num_valid_triplets",
                      "num_valid_anchors")
# A distance comparison closer than this (but not an exact tie) may go either way in float32.
_BORDERLINE = 1e-4


def _tolerance(variant: str) -> dict:
  return {"rtol": 1e-4 if variant == "batch_all" else 1e-5, "atol": 1e-5}


def _counts(variant: str, stats, batch_size: int) -> dict:
  """The integer counts of a loss's statistics; active counts from fraction_active."""
  stats = {key: float(value) for key, value in stats.items()}
  denominator = {"semihard": stats.get("num_positive_pairs"), "hard": batch_size,
                 "hard_soft": batch_size, "batch_all": stats.get("num_valid_triplets"),
                 "contrastive": batch_size * (batch_size - 1) // 2}[variant]
  counts = {key: stats[key] for key in stats if key.startswith("num_")}
  for key, value in counts.items():
    assert value == round(value), (variant, key, value)
  if "num_active_triplets" not in counts:
    # A float32 fraction k / n times n is k to within n * 2^-24.
    active = stats["fraction_active"] * denominator
    assert abs(active - round(active)) <= 1e-7 * denominator + 1e-6, (variant, active)
    counts["num_active"] = active
  return {key: round(value) for key, value in counts.items()}


def _borderline(values) -> int:
  """How many of `values` (differences that decide something) are near 0 but not 0."""
  values = np.abs(np.asarray(values, np.float64))
  return int(np.count_nonzero((values > 0) & (values <= _BORDERLINE)))


def _decision_slack(variant, labels, embeddings, margin, metric) -> dict:
  """Per decision-dependent count, how many of its decisions are borderline on this batch."""
  distances = reference.pairwise_distances(embeddings, metric=metric)
  batch = len(labels)
  same = labels[:, None] == labels[None, :]
  off_diagonal = ~np.eye(batch, dtype=bool)
  if variant == "contrastive":
    upper = np.triu(off_diagonal)
    return {"num_active": _borderline(distances[upper & same])
                          + _borderline(margin - distances[upper & ~same])}
  if variant in ("hard", "hard_soft"):
    if variant == "hard_soft":
      return {"num_active": 0}  # softplus > 0 everywhere.
    hardest_positive = np.where(same & off_diagonal, distances, 0.0).max(axis=1)
    row_max = distances.max(axis=1, keepdims=True)
    hardest_negative = np.where(~same, distances, row_max).min(axis=1)
    return {"num_active": _borderline(hardest_positive - hardest_negative + margin)}
  active = fallback = 0
  for i in range(batch):
    positives = distances[i][same[i] & off_diagonal[i]]
    negatives = distances[i][~same[i]]
    if not positives.size or not negatives.size:
      continue
    gaps = positives[:, None] - negatives[None, :]
    if variant == "batch_all":
      active += _borderline(gaps + margin)
      continue
    fallback += _borderline(positives - negatives.max())
    # A pair is borderline if its hinge is, or if its choice of negative is.
    farther = np.where(gaps < 0, negatives[None, :], np.inf).min(axis=1)
    chosen = np.where(np.isfinite(farther), farther, negatives.max())
    hinge = margin + positives - chosen
    ambiguous = np.any((np.abs(gaps) > 0) & (np.abs(gaps) <= _BORDERLINE), axis=1)
    active += int(np.count_nonzero(ambiguous | ((np.abs(hinge) > 0)
                                                & (np.abs(hinge) <= _BORDERLINE))))
  if variant == "batch_all":
    return {"num_active_triplets": active}
  return {"num_active": active, "num_fallback": fallback}


def _assert_stats_match(variant, stats, expected_stats, labels, embeddings, margin, metric,
                        where):
  """Statistics against the reference's: counts as integers, the rest to the tolerance."""
  assert set(stats) == STATS_KEYS[variant] == set(expected_stats), where
  counts = _counts(variant, stats, len(labels))
  expected_counts = _counts(variant, expected_stats, len(labels))
  assert set(counts) == set(expected_counts), where
  slack = _decision_slack(variant, labels, embeddings, margin, metric)
  for key, expected in expected_counts.items():
    allowed = 0 if key in _LABEL_ONLY_COUNTS else slack[key]
    assert abs(counts[key] - expected) <= allowed, (
        f"{where} {key}: {counts[key]} against {expected} (borderline decisions: {allowed})")
  for key, expected in expected_stats.items():
    if not key.startswith("num_"):
      np.testing.assert_allclose(float(stats[key]), expected, **_tolerance(variant),
                                 err_msg=f"{where} stats[{key!r}]")


def _jax_fn(variant: str):
  name, options = MINED[variant]
  return functools.partial(getattr(tripletjax, name), **options)


def _reference_fn(variant: str):
  name, options = MINED[variant]
  return functools.partial(getattr(reference, name), **options)


# Number of traces of `_all_variants_with_stats(metric)`, per (metric, embeddings shape, dtype).
_TRACES = collections.Counter()


@functools.lru_cache(maxsize=None)
def _all_variants_with_stats(metric: str):
  """jit of {variant: (loss, stats)}; the margin is traced, so margins share one compilation."""

  def all_variants(labels, embeddings, margin):
    _TRACES[metric, embeddings.shape, embeddings.dtype] += 1  # Runs only while tracing.
    return {variant: _jax_fn(variant)(labels, embeddings, margin=margin, metric=metric,
                                      return_stats=True)
            for variant in MINED}

  return jax.jit(all_variants)


@functools.lru_cache(maxsize=None)
def _all_variants_value_and_grad(metric: str):
  """jit of {variant: (loss, d loss / d embeddings)}."""

  def all_variants(embeddings, labels, margin):
    return {variant: jax.value_and_grad(
        lambda e, fn=_jax_fn(variant): fn(labels, e, margin=margin, metric=metric))(embeddings)
            for variant in MINED}

  return jax.jit(all_variants)


def _random_labels(rng: np.random.Generator, batch_size: int, num_classes) -> np.ndarray:
  if num_classes == "all_distinct":
    return rng.permutation(batch_size).astype(np.int32)
  return rng.integers(0, num_classes, size=batch_size).astype(np.int32)


def _assert_matches_reference(metric, labels, embeddings, margin, context="", variants=MINED):
  """Compares loss and stats of every JAX loss variant with the reference on one batch."""
  results = _all_variants_with_stats(metric)(labels, embeddings, np.float32(margin))
  for variant in variants:
    loss, stats = results[variant]
    expected_loss, expected_stats = _reference_fn(variant)(
        labels, embeddings, margin=margin, metric=metric, return_stats=True)
    where = f"{variant} metric={metric} margin={margin} {context}"
    assert np.isfinite(float(loss)), where
    np.testing.assert_allclose(float(loss), expected_loss, **_tolerance(variant), err_msg=where)
    _assert_stats_match(variant, stats, expected_stats, labels, embeddings, margin, metric,
                        where)


# ----------------------------------------------------------------------------------------------
# Values and statistics against the reference.


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("metric", METRICS)
def test_random_batches_match_reference(metric, batch_size):
  # Class counts and margins are looped inside rather than parametrised: they change no shape,
  # so one compilation per (metric, batch size) serves all twelve batches and five variants,
  # whichever pytest-xdist worker runs the test.
  rng = np.random.default_rng(batch_size)
  for num_classes in CLASS_COUNTS:
    labels = _random_labels(rng, batch_size, num_classes)
    embeddings = rng.normal(size=(batch_size, FEATURES)).astype(np.float32)
    for margin in MARGINS:
      _assert_matches_reference(metric, labels, embeddings, margin,
                                context=f"B={batch_size} classes={num_classes}")


def _degenerate_batches():
  """(name, labels, embeddings, metrics): batches at the edges of the mining rules."""
  rng = np.random.default_rng(7)
  normal = lambda b: rng.normal(size=(b, FEATURES)).astype(np.float32)
  duplicated = np.repeat(normal(4), 4, axis=0)  # 16 rows, each row 4 times.
  # Coordinates in {0, 1, 2}: squared distances are small integers, exact in float32 and
  # float64, so the same exact ties (positive vs negative, negative vs negative) occur in both.
  grid = oracle.integer_grid(rng, 16, dim=FEATURES)
  return [
      ("one_class", np.zeros(16, np.int32), normal(16), METRICS),
      ("all_distinct", np.arange(16, dtype=np.int32), normal(16), METRICS),
      # Duplicates inside a class (positives at distance 0) and across classes (negatives at 0).
      # Not with "angular": see test_angular_duplicates_are_finite_and_close.
      ("duplicates", np.tile(np.arange(4, dtype=np.int32), 4), duplicated, ("l2", "squared_l2")),
      ("duplicates_same_class", np.repeat(np.arange(4, dtype=np.int32), 4), duplicated,
       ("l2", "squared_l2")),
      ("all_identical", rng.integers(0, 3, 16).astype(np.int32),
       np.repeat(normal(1), 16, axis=0), ("l2", "squared_l2")),
      # Exact ties. Not with "angular": cosines of grid points are irrational, and whether two of
      # them tie differs between float32 and float64, which flips the strict ">" legitimately.
      ("integer_grid_2_classes", rng.integers(0, 2, 16).astype(np.int32), grid,
       ("l2", "squared_l2")),
      ("integer_grid_5_classes", rng.integers(0, 5, 16).astype(np.int32), grid,
       ("l2", "squared_l2")),
      ("pair_same_class", np.array([3, 3], np.int32), normal(2), METRICS),
      ("pair_different_classes", np.array([3, 4], np.int32), normal(2), METRICS),
      ("pair_duplicate_same_class", np.array([1, 1], np.int32), np.repeat(normal(1), 2, axis=0),
       ("l2", "squared_l2")),
  ]


_DEGENERATE = _degenerate_batches()


@pytest.mark.parametrize("case", _DEGENERATE, ids=[case[0] for case in _DEGENERATE])
def test_degenerate_batches_match_reference(case):
  name, labels, embeddings, metrics = case
  for metric in metrics:
    for margin in MARGINS:
      _assert_matches_reference(metric, labels, embeddings, margin, context=name)


def test_angular_duplicates_are_finite_and_close():
  # Angular distances of duplicates are 1 - cos computed in float32: 0 or about 1e-8, where the
  # reference has exactly 0. Counts that compare with 0 (a contrastive pair d^2 = 1e-16 is
  # "active", a semi-hard tie is broken) may legitimately differ; the losses must still be
  # finite and, for the hard losses (no strict comparison), match the reference.
  rng = np.random.default_rng(3)
  embeddings = np.repeat(rng.normal(size=(4, FEATURES)).astype(np.float32), 4, axis=0)
  labels = np.tile(np.arange(4, dtype=np.int32), 4)
  results = _all_variants_with_stats("angular")(labels, embeddings, np.float32(0.2))
  for variant, (loss, _) in results.items():
    assert np.isfinite(float(loss)), variant
  _assert_matches_reference("angular", labels, embeddings, 0.2, context="duplicates",
                            variants=("hard", "hard_soft"))


def test_large_batch_matches_reference():
  rng = np.random.default_rng(500)
  labels = rng.integers(0, 10, size=500).astype(np.int32)
  embeddings = rng.normal(size=(500, FEATURES)).astype(np.float32)
  # The sorting miners are the ones worth checking at scale (and the slow references).
  _assert_matches_reference("l2", labels, embeddings, 0.2, context="B=500",
                            variants=("semihard", "batch_all"))


def test_anchor_blocks_match_reference(monkeypatch):
  # Batches above 2048 x 2048 distance entries are mined in blocks of anchor rows (a lax.scan
  # with padding rows; sums for semi-hard, batch-all and contrastive, per-anchor results for
  # batch-hard).
  # Shrink the block budget so that a small batch takes that path too: 40 rows per block,
  # 4 blocks, the last one with 30 padding rows.
  batch_size = 130
  rng = np.random.default_rng(40)
  labels = rng.integers(0, 5, size=batch_size).astype(np.int32)
  embeddings = rng.normal(size=(batch_size, FEATURES)).astype(np.float32)
  variants = ("semihard", "batch_all", "hard", "hard_soft", "contrastive")

  def losses_and_gradients():
    # A new function object each time, so that jit traces it again (the budget is read while
    # tracing).
    return jax.jit(lambda e: {variant: jax.value_and_grad(
        lambda e, fn=_jax_fn(variant): fn(labels, e, margin=0.2, return_stats=True),
        has_aux=True)(e) for variant in variants})

  unblocked = losses_and_gradients()(embeddings)
  monkeypatch.setattr(blocks, "BLOCK_ENTRIES", batch_size * 40)
  blocked = losses_and_gradients()(embeddings)
  for variant in variants:
    (loss, stats), gradient = blocked[variant]
    expected_loss, expected_stats = _reference_fn(variant)(labels, embeddings, margin=0.2,
                                                           return_stats=True)
    np.testing.assert_allclose(float(loss), expected_loss, **_tolerance(variant),
                               err_msg=variant)
    _assert_stats_match(variant, stats, expected_stats, labels, embeddings, 0.2, "l2",
                        f"{variant} in blocks")
    np.testing.assert_allclose(np.asarray(gradient), np.asarray(unblocked[variant][1]),
                               rtol=1e-4, atol=1e-6, err_msg=variant)


def _backend_cases():
  """(name, labels, embeddings): random batches and every degenerate one, for the backends."""
  rng = np.random.default_rng(11)
  cases = [(f"random_B{b}_C{c}", _random_labels(rng, b, c),
            rng.normal(size=(b, FEATURES)).astype(np.float32))
           for b, c in [(64, 5), (130, 2), (130, "all_distinct"), (37, 1)]]
  return cases + [(name, labels, embeddings) for name, labels, embeddings, _ in _DEGENERATE]


@pytest.mark.parametrize("variant", ["semihard", "batch_all"])
def test_numpy_and_xla_backends_agree(variant):
  # The sorting miners run in NumPy on the host on CPU ("auto") and with lax.sort on GPU/TPU.
  # Both must give the same values, stats and gradients; the XLA one is otherwise only run on
  # accelerators. Counts and ties must agree exactly: both use the same sort order.
  def value_and_grad(backend):
    loss_fn = lambda e, y: _jax_fn(variant)(y, e, margin=0.2, return_stats=True,
                                            mining_backend=backend)
    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))

  by_backend = {backend: value_and_grad(backend) for backend in ("numpy", "xla")}
  for name, labels, embeddings in _backend_cases():
    (loss, stats), gradient = by_backend["numpy"](embeddings, labels)
    (xla_loss, xla_stats), xla_gradient = by_backend["xla"](embeddings, labels)
    np.testing.assert_allclose(float(loss), float(xla_loss), rtol=1e-5, atol=1e-6, err_msg=name)
    assert set(stats) == set(xla_stats), name
    for key in stats:
      if key.startswith("num_"):  # Same sort order, same decisions: equal counts.
        assert float(stats[key]) == float(xla_stats[key]), f"{name} stats[{key!r}]"
      else:
        np.testing.assert_allclose(float(stats[key]), float(xla_stats[key]), rtol=1e-5,
                                   atol=1e-6, err_msg=f"{name} stats[{key!r}]")
    np.testing.assert_allclose(np.asarray(gradient), np.asarray(xla_gradient), rtol=1e-5,
                               atol=1e-6, err_msg=name)
    assert np.all(np.isfinite(np.asarray(gradient))), name


def test_unknown_mining_backend_is_an_error():
  labels, embeddings = np.zeros(4, np.int32), np.ones((4, FEATURES), np.float32)
  for variant in ("semihard", "batch_all"):
    with pytest.raises(ValueError, match="mining_backend"):
      _jax_fn(variant)(labels, embeddings, mining_backend="gpu")


class ReturnStatsAndJitTest(chex.TestCase):
  """Same values with and without jit, and with and without `return_stats`."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_loss_without_stats_matches_reference(self):
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 3, size=16).astype(np.int32)
    embeddings = rng.normal(size=(16, FEATURES)).astype(np.float32)
    for variant in MINED:
      loss_fn = self.variant(functools.partial(_jax_fn(variant), margin=0.2, metric="l2"))
      loss = loss_fn(labels, embeddings)
      chex.assert_shape(loss, ())
      expected = _reference_fn(variant)(labels, embeddings, margin=0.2, metric="l2")
      np.testing.assert_allclose(float(loss), expected, **_tolerance(variant), err_msg=variant)

  @chex.variants(with_jit=True, without_jit=True)
  def test_pair_and_explicit_triplet_losses_match_reference(self):
    rng = np.random.default_rng(12)
    left, right, third = (rng.normal(size=(7, 5)).astype(np.float32) for _ in range(3))
    same = np.array([1, 0, 0, 1, 0, 1, 0], np.int32)
    for margin in (0.0, 0.5, 3.0):
      pair_loss = self.variant(functools.partial(tripletjax.contrastive_pair_loss, margin=margin))
      np.testing.assert_allclose(
          float(pair_loss(same, left, right)),
          reference.contrastive_pair_loss(same, left, right, margin=margin), rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(
          float(pair_loss(same.astype(bool), left, right)),
          reference.contrastive_pair_loss(same, left, right, margin=margin), rtol=1e-5, atol=1e-5)
      triplet = self.variant(functools.partial(tripletjax.triplet_loss, margin=margin))
      np.testing.assert_allclose(
          float(triplet(left, right, third)),
          reference.triplet_loss(left, right, third, margin=margin), rtol=1e-5, atol=1e-5)
    # Default margin of the explicit triplet loss is 0.5 (seed 003).
    np.testing.assert_allclose(float(tripletjax.triplet_loss(left, right, third)),
                               reference.triplet_loss(left, right, third, margin=0.5),
                               rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Gradients.

GRADIENT_LABELS = np.array([0, 0, 0, 1, 1, 2], np.int32)  # Class 2 has no positive.
GRADIENT_MARGINS = {"l2": 1.0, "squared_l2": 1.0, "angular": 0.3}
# Per metric, far larger than what a 1e-3 step in the embeddings moves a distance (about 1e-3
# for "l2", 2 * d * 1e-3 for "squared_l2", 1e-3 / |x| for "angular", whose range is only [0, 2]).
MIN_GAP = {"l2": 0.05, "squared_l2": 0.1, "angular": 0.02}


def _is_well_separated(embeddings: np.ndarray, metric: str, margin: float) -> bool:
  """No mining decision or hinge may change within a finite-difference step.

  Within each anchor row all distances differ by more than the metric's MIN_GAP, and no
  distance is near 0 or near the margin (contrastive hinge), and no D_ij - D_ik is near -margin
  (triplet hinges).
  """
  distances = reference.pairwise_distances(embeddings, metric=metric)
  min_gap = MIN_GAP[metric]
  off_diagonal = ~np.eye(len(embeddings), dtype=bool)
  for row, keep in zip(distances, off_diagonal):
    values = np.sort(row[keep])
    if np.min(np.diff(values)) < min_gap or values[0] < min_gap:
      return False
    if np.min(np.abs(values - margin)) < min_gap:
      return False
    differences = row[keep][:, None] - row[keep][None, :] + margin
    if np.min(np.abs(differences)) < min_gap:
      return False
  return True


@functools.lru_cache(maxsize=None)
def _well_separated_embeddings(metric: str) -> np.ndarray:
  margin = GRADIENT_MARGINS[metric]
  for seed in range(10_000):
    embeddings = np.random.default_rng(seed).normal(size=(6, 3))
    # The reference sees exactly the float32 values that JAX differentiates.
    embeddings = embeddings.astype(np.float32).astype(np.float64)
    if _is_well_separated(embeddings, metric, margin):
      return embeddings
  raise AssertionError("no well-separated batch found")


@pytest.mark.parametrize("metric", METRICS)
def test_gradients_match_finite_differences_of_reference(metric):
  embeddings = _well_separated_embeddings(metric)
  margin = GRADIENT_MARGINS[metric]
  results = _all_variants_value_and_grad(metric)(
      embeddings.astype(np.float32), GRADIENT_LABELS, np.float32(margin))
  for variant, (value, gradient) in results.items():
    reference_loss = lambda x, fn=_reference_fn(variant): fn(GRADIENT_LABELS, x, margin=margin,
                                                             metric=metric)
    expected = oracle.central_differences(reference_loss, embeddings, step=1e-3)
    assert np.abs(expected).max() > 1e-2, f"{variant}: the batch should have active terms"
    np.testing.assert_allclose(float(value), reference_loss(embeddings), rtol=1e-5, atol=1e-5,
                               err_msg=variant)
    np.testing.assert_allclose(np.asarray(gradient), expected, rtol=1e-2, atol=1e-3,
                               err_msg=f"{variant} {metric}")


def test_pair_and_explicit_triplet_gradients_match_finite_differences():
  rng = np.random.default_rng(5)
  left, right, third = (rng.normal(size=(4, 3)).astype(np.float32).astype(np.float64)
                        for _ in range(3))
  same = np.array([1, 0, 1, 0], np.int32)
  # Margin 1.5 (not near any distance of this batch) keeps both hinges away from their kinks.
  pair_grad = jax.grad(tripletjax.contrastive_pair_loss, argnums=1)(
      same, left.astype(np.float32), right.astype(np.float32), 1.5)
  expected = oracle.central_differences(
      lambda x: reference.contrastive_pair_loss(same, x, right, margin=1.5), left, step=1e-3)
  np.testing.assert_allclose(np.asarray(pair_grad), expected, rtol=1e-2, atol=1e-3)
  triplet_grad = jax.grad(tripletjax.triplet_loss)(
      left.astype(np.float32), right.astype(np.float32), third.astype(np.float32), 1.5)
  expected = oracle.central_differences(
      lambda x: reference.triplet_loss(x, right, third, margin=1.5), left, step=1e-3)
  np.testing.assert_allclose(np.asarray(triplet_grad), expected, rtol=1e-2, atol=1e-3)


def _nan_prone_batches():
  rng = np.random.default_rng(9)
  point = rng.normal(size=(1, 3))
  with_duplicates = rng.normal(size=(6, 3))
  with_duplicates[1] = with_duplicates[0]  # Duplicate positives (classes of GRADIENT_LABELS).
  with_duplicates[3] = with_duplicates[0]  # Duplicate negative.
  return {
      "duplicates": (GRADIENT_LABELS, with_duplicates),
      "all_identical": (GRADIENT_LABELS, np.repeat(point, 6, axis=0)),
      "no_positive_pair": (np.arange(6, dtype=np.int32), rng.normal(size=(6, 3))),
      "identical_no_positive_pair": (np.arange(6, dtype=np.int32), np.repeat(point, 6, axis=0)),
      "one_class": (np.zeros(6, np.int32), rng.normal(size=(6, 3))),
  }


@pytest.mark.parametrize("metric", METRICS)
def test_values_and_gradients_are_finite(metric):
  # The [6, 3] shape is the gradient test's, so the compiled function is reused.
  for name, (labels, embeddings) in _nan_prone_batches().items():
    for margin in (0.0, 1.0):
      results = _all_variants_value_and_grad(metric)(
          embeddings.astype(np.float32), labels, np.float32(margin))
      for variant, (value, gradient) in results.items():
        where = (variant, metric, name, margin)
        assert np.isfinite(float(value)), where
        assert np.all(np.isfinite(np.asarray(gradient))), where


def test_pair_losses_have_finite_gradients_on_duplicates():
  left = np.ones((3, 4), np.float32)
  same = np.array([1, 0, 1], np.int32)
  gradient = jax.grad(tripletjax.contrastive_pair_loss, argnums=(1, 2))(same, left, left)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in gradient)
  gradient = jax.grad(tripletjax.triplet_loss, argnums=(0, 1, 2))(left, left, left)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in gradient)


# ----------------------------------------------------------------------------------------------
# Precision, tracing, scale.


def test_bfloat16_embeddings():
  # TFA's convention: compute in float32, return the loss in the input dtype. So the bf16 loss
  # is the float32 loss of the bf16-rounded inputs, rounded to bf16 (relative error <= 2^-8).
  rng = np.random.default_rng(16)
  labels = rng.integers(0, 3, size=16).astype(np.int32)
  embeddings = jnp.asarray(rng.normal(size=(16, FEATURES)), jnp.bfloat16)
  rounded = np.asarray(embeddings.astype(jnp.float32))
  margin = np.float32(0.2)
  bf16_results = _all_variants_with_stats("l2")(labels, embeddings, margin)
  float32_results = _all_variants_with_stats("l2")(labels, rounded, margin)
  gradients = _all_variants_value_and_grad("l2")(embeddings, labels, margin)
  for variant in MINED:
    loss = bf16_results[variant][0]
    assert loss.dtype == jnp.bfloat16, variant
    loss_of_rounded = float(float32_results[variant][0])
    np.testing.assert_allclose(float(loss), loss_of_rounded, rtol=1e-2, atol=1e-5,
                               err_msg=variant)
    np.testing.assert_allclose(
        loss_of_rounded, _reference_fn(variant)(labels, rounded, margin=0.2),
        **_tolerance(variant), err_msg=variant)
    gradient = gradients[variant][1]
    assert gradient.dtype == jnp.bfloat16, variant
    assert np.all(np.isfinite(np.asarray(gradient, np.float32))), variant


def test_no_retracing_for_same_shapes():
  # New labels, embeddings and margins of the same shapes must reuse the compiled function.
  rng = np.random.default_rng(4)
  all_variants = _all_variants_with_stats("l2")
  shape = (16, FEATURES)
  for margin in (0.1, 0.5, 1.0):
    labels = rng.integers(0, 4, size=shape[0]).astype(np.int32)
    embeddings = rng.normal(size=shape).astype(np.float32)
    jax.block_until_ready(all_variants(labels, embeddings, np.float32(margin)))
  # Also counts traces from other tests of this process with the same shape: still one.
  assert _TRACES["l2", shape, np.dtype(np.float32)] == 1


def test_semihard_on_a_large_batch_uses_quadratic_memory():
  # TFA's B^2 x B tile would need 34 GB at B = 2048; here loss and gradient compile once and
  # run in a few hundred MB.
  batch_size = 2048
  rng = np.random.default_rng(2048)
  labels = rng.integers(0, 64, size=batch_size).astype(np.int32)
  embeddings = rng.normal(size=(batch_size, 16)).astype(np.float32)
  value_and_grad = jax.jit(jax.value_and_grad(
      lambda e, y: tripletjax.triplet_semihard_loss(y, e, margin=1.0)))
  compiled = value_and_grad.lower(embeddings, labels).compile()
  memory = compiled.memory_analysis()
  if memory is not None:
    assert memory.temp_size_in_bytes < 2**30, memory  # B^3 float32 would be 2^35 bytes.
  value, gradient = compiled(embeddings, labels)
  assert np.isfinite(float(value))
  assert np.all(np.isfinite(np.asarray(gradient)))
  # Values at scale: tests/mining/test_host.py (B = 600, above the host miner's threshold
  # for threads).


# ----------------------------------------------------------------------------------------------
# Input errors.


@pytest.mark.parametrize("variant", ["semihard", "hard", "batch_all", "contrastive"])
def test_mined_loss_input_errors(variant):
  loss_fn = _jax_fn(variant)
  labels = np.array([0, 1, 1], np.int32)
  embeddings = np.zeros((3, 2), np.float32)
  with pytest.raises(ValueError, match="shape"):
    loss_fn(labels, np.zeros(3, np.float32))           # Embeddings of rank 1.
  with pytest.raises(ValueError, match="shape"):
    loss_fn(labels[None], embeddings)                  # Labels of rank 2.
  with pytest.raises(ValueError, match="batch size"):
    loss_fn(labels[:2], embeddings)                    # Batch sizes disagree.
  with pytest.raises(ValueError, match="metric"):
    loss_fn(labels, embeddings, metric="cosine")
  with pytest.raises(ValueError, match="margin"):
    loss_fn(labels, embeddings, margin=-0.5)
  with pytest.raises(TypeError, match="labels"):
    loss_fn(labels.astype(np.float32), embeddings)     # Float labels.
  # The checks are on shapes and dtypes, so they also fire under jit.
  with pytest.raises(TypeError, match="labels"):
    jax.jit(loss_fn)(labels.astype(np.float32), embeddings)


def test_pair_and_explicit_triplet_input_errors():
  x = np.zeros((3, 2), np.float32)
  same = np.array([1, 0, 1], np.int32)
  with pytest.raises(ValueError):
    tripletjax.contrastive_pair_loss(same, x, x[:2])
  with pytest.raises(ValueError):
    tripletjax.contrastive_pair_loss(same[:2], x, x)
  with pytest.raises(ValueError):
    tripletjax.contrastive_pair_loss(same, x[0], x[0])
  with pytest.raises(ValueError, match="margin"):
    tripletjax.contrastive_pair_loss(same, x, x, margin=-1.0)
  with pytest.raises(ValueError):
    tripletjax.triplet_loss(x, x, x[:2])
  with pytest.raises(ValueError):
    tripletjax.triplet_loss(x[0], x[0], x[0])
  with pytest.raises(ValueError, match="margin"):
    tripletjax.triplet_loss(x, x, x, margin=-1.0)
  with pytest.raises(ValueError, match="metric"):
    tripletjax.pairwise_distances(x, metric="cosine")


def test_triplet_distances_and_the_explicit_triplet_statistics_match_numpy():
  rng = np.random.default_rng(5)
  anchor, positive, negative = (rng.normal(size=(9, 4)).astype(np.float32) for _ in range(3))
  negative[0] = anchor[0] + (positive[0] - anchor[0]) * 2  # d_an > d_ap, inside the margin.
  d_ap, d_an = tripletjax.triplet_distances(anchor, positive, negative)
  expected_ap = np.sum((anchor.astype(np.float64) - positive) ** 2, axis=1)
  expected_an = np.sum((anchor.astype(np.float64) - negative) ** 2, axis=1)
  np.testing.assert_allclose(d_ap, expected_ap, rtol=1e-5)
  np.testing.assert_allclose(d_an, expected_an, rtol=1e-5)
  margin = 0.5
  loss, stats = tripletjax.triplet_loss(anchor, positive, negative, margin=margin,
                                        return_stats=True)
  assert float(loss) == pytest.approx(
      reference.triplet_loss(anchor, positive, negative, margin=margin), rel=1e-5)
  assert float(stats["triplet_accuracy"]) == pytest.approx(np.mean(expected_ap < expected_an))
  assert float(stats["fraction_active"]) == pytest.approx(
      np.mean(expected_ap - expected_an + margin > 0))
  assert 0 < float(stats["fraction_active"]) < 1 and 0 < float(stats["triplet_accuracy"]) < 1
  assert float(stats["mean_positive_distance"]) == pytest.approx(expected_ap.mean(), rel=1e-5)
  assert float(stats["mean_negative_distance"]) == pytest.approx(expected_an.mean(), rel=1e-5)
  anchor[2, 1] = np.nan  # NaN in gives NaN out, statistics included.
  loss, stats = tripletjax.triplet_loss(anchor, positive, negative, return_stats=True)
  assert np.isnan(float(loss)) and all(np.isnan(float(v)) for v in stats.values())
