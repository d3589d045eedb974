"""TensorFlow Addons' metric-learning losses for Keras 3, on every Keras backend.

`TripletSemiHardLoss`, `TripletHardLoss` and `ContrastiveLoss` take TFA's arguments with TFA's
meanings, and so do the functions `triplet_semihard_loss`, `triplet_hard_loss` and
`contrastive_loss`. Differences from TFA, which only remove failures:
  * a batch without any positive pair gives a loss of 0, not NaN;
  * memory is O(B^2): TFA's semi-hard loss builds a [B^2, B] tensor (34 GB at B = 2048).
The triplet losses compute distances in float32 and return the loss in the embeddings' dtype.

On the JAX backend the triplet losses are `tripletjax.losses`' functions (and mine the global
batch under `keras.distribution.DataParallel`, see `jax_losses`); on the TensorFlow and PyTorch
backends, and for a callable `distance_metric`, they are the `keras.ops` implementation of
`ops_losses`, which gives the same values and gradients.

`BatchContrastiveLoss` / `batch_contrastive_loss` is tripletjax's contrastive loss of a labelled
batch (all pairs of the batch), which TFA did not have: TFA's `ContrastiveLoss` takes given pairs.

Everything is registered for Keras serialization under the package "tripletjax": a compiled
model saves to `.keras` and loads back with its loss, and `compile(loss="tripletjax>name")`
names a function by string, as `"Addons>triplet_semihard_loss"` did.
"""

from __future__ import annotations

import keras
from keras import ops

import tripletjax
from tripletjax.keras import distances as distances_lib
from tripletjax.keras import jax_losses
from tripletjax.keras import ops_losses

PACKAGE = "tripletjax"


def _labels_and_embeddings(y_true, y_pred):
  """(labels [B] int32, embeddings [B, D]) from Keras' `y_true` ([B] or [B, 1]) and `y_pred`."""
  embeddings = ops.convert_to_tensor(y_pred)
  labels = ops.convert_to_tensor(y_true)
  if len(embeddings.shape) != 2:
    raise ValueError(f"y_pred must be embeddings of shape [B, D], got shape {embeddings.shape}.")
  if not (len(labels.shape) == 1 or (len(labels.shape) == 2 and labels.shape[1] == 1)):
    raise ValueError(f"y_true must be integer labels of shape [B] or [B, 1], got shape "
                     f"{labels.shape}.")
  labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
  if labels.shape[0] is not None and embeddings.shape[0] is not None and (
      labels.shape[0] != embeddings.shape[0]):
    raise ValueError(f"y_true has {labels.shape[0]} labels but y_pred has "
                     f"{embeddings.shape[0]} embeddings.")
  return labels, embeddings


def _check_margin(margin) -> None:
  if isinstance(margin, (int, float)) and not margin >= 0:
    raise ValueError(f"margin must be >= 0, got {margin}.")


def _mined_loss(jax_fn, ops_fn, y_true, y_pred, margin, distance_metric, **options):
  """A mined loss through tripletjax (JAX backend, named metric) or `keras.ops` otherwise; NaN
  when any embedding entry is not finite, in the embeddings' dtype."""
  distances_lib.check_distance_metric(distance_metric)
  _check_margin(margin)
  labels, embeddings = _labels_and_embeddings(y_true, y_pred)
  if distances_lib.is_jax_backend() and not callable(distance_metric):
    return jax_losses.call_loss(jax_fn, labels, embeddings, margin=margin,
                                metric=distances_lib.METRIC_NAMES[distance_metric], **options)
  distances = distances_lib.pairwise_distances(embeddings, distance_metric)
  loss = ops_fn(labels, distances, ops.cast(margin, "float32"), **options)
  finite = ops.all(ops.isfinite(ops.cast(embeddings, "float32")))
  return ops.cast(ops.where(finite, loss, float("nan")), embeddings.dtype)


@keras.saving.register_keras_serializable(package=PACKAGE)
def triplet_semihard_loss(y_true, y_pred, margin=1.0, distance_metric="L2"):
  """TFA's semi-hard triplet loss (FaceNet): a scalar.

  Args:
    y_true: [B] or [B, 1] integer class labels.
    y_pred: [B, D] embeddings (float16/bfloat16 are computed in float32, the loss cast back).
    margin: margin >= 0 (default 1.0).
    distance_metric: "L2" (default), "squared-L2", "angular", or a callable mapping the
      embeddings [B, D] to a [B, B] distance matrix.

  Returns:
    The mean over all ordered positive pairs (i, j) of max(margin + D[i, j] - D[i, n], 0), n
    the nearest negative strictly farther than j (else the farthest one); 0 without a pair.
  """
  return _mined_loss(tripletjax.triplet_semihard_loss, ops_losses.triplet_semihard_loss,
                     y_true, y_pred, margin, distance_metric)


@keras.saving.register_keras_serializable(package=PACKAGE)
def triplet_hard_loss(y_true, y_pred, margin=1.0, soft=False, distance_metric="L2"):
  """TFA's batch-hard triplet loss: a scalar.

  Args: as `triplet_semihard_loss`; `soft=True` uses log1p(exp(hp - hn)) (margin unused).

  Returns:
    The mean over anchors of max(hp - hn + margin, 0): hp the farthest positive (0 if none),
    hn the nearest negative (the row maximum if none).
  """
  return _mined_loss(tripletjax.triplet_hard_loss, ops_losses.triplet_hard_loss,
                     y_true, y_pred, margin, distance_metric, soft=bool(soft))


@keras.saving.register_keras_serializable(package=PACKAGE)
def batch_contrastive_loss(y_true, y_pred, margin=1.0, distance_metric="L2"):
  """tripletjax's contrastive loss of a labelled batch (not TFA's `contrastive_loss`).

  Args: as `triplet_semihard_loss`.

  Returns:
    0.5 * mean over all pairs i < j of y d^2 + (1 - y) max(margin - d, 0)^2, with y = 1 for a
    same-label pair.
  """
  return _mined_loss(tripletjax.contrastive_loss, ops_losses.batch_contrastive_loss,
                     y_true, y_pred, margin, distance_metric)


@keras.saving.register_keras_serializable(package=PACKAGE)
def contrastive_loss(y_true, y_pred, margin=1.0):
  """TFA's contrastive loss of given pairs, per pair (Hadsell et al., 2006).

  Args:
    y_true: [B] binary labels: 1 = similar pair (pulled together), 0 = dissimilar.
    y_pred: [B] distances between the two members of each pair (not embeddings).
    margin: margin >= 0 of the dissimilar pairs.

  Returns:
    [B] y d^2 + (1 - y) max(margin - d, 0)^2 (the `ContrastiveLoss` class averages it).
  """
  _check_margin(margin)
  distances = ops.convert_to_tensor(y_pred)
  similar = ops.cast(y_true, distances.dtype)
  return (similar * ops.square(distances)
          + (1.0 - similar) * ops.square(ops.maximum(margin - distances, 0.0)))


class _MetricLearningLoss(keras.losses.Loss):
  """A loss of `fn(y_true, y_pred, **options)` whose options are its config."""

  fn = None

  def __init__(self, name=None, reduction="sum_over_batch_size", dtype=None, **options):
    super().__init__(name=name, reduction=reduction, dtype=dtype)
    self.options = options

  def call(self, y_true, y_pred):
    return type(self).fn(y_true, y_pred, **self.options)

  def get_config(self):
    options = dict(self.options)
    if callable(options.get("distance_metric")):
      options["distance_metric"] = keras.saving.serialize_keras_object(
          options["distance_metric"])
    return {**super().get_config(), **options}

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    if isinstance(config.get("distance_metric"), dict):
      config["distance_metric"] = keras.saving.deserialize_keras_object(
          config["distance_metric"])
    return cls(**config)


@keras.saving.register_keras_serializable(package=PACKAGE)
class TripletSemiHardLoss(_MetricLearningLoss):
  """TFA's `TripletSemiHardLoss`: `y_true` [B] or [B, 1] integer labels, `y_pred` [B, D]
  embeddings; see `triplet_semihard_loss`."""

  fn = staticmethod(triplet_semihard_loss)

  def __init__(self, margin=1.0, distance_metric="L2", name=None, **kwargs):
    distances_lib.check_distance_metric(distance_metric)
    _check_margin(margin)
    super().__init__(name=name, margin=margin, distance_metric=distance_metric, **kwargs)


@keras.saving.register_keras_serializable(package=PACKAGE)
class TripletHardLoss(_MetricLearningLoss):
  """TFA's `TripletHardLoss`: `y_true` [B] or [B, 1] integer labels, `y_pred` [B, D]
  embeddings; see `triplet_hard_loss`."""

  fn = staticmethod(triplet_hard_loss)

  def __init__(self, margin=1.0, soft=False, distance_metric="L2", name=None, **kwargs):
    distances_lib.check_distance_metric(distance_metric)
    _check_margin(margin)
    super().__init__(name=name, margin=margin, soft=soft, distance_metric=distance_metric,
                     **kwargs)


@keras.saving.register_keras_serializable(package=PACKAGE)
class BatchContrastiveLoss(_MetricLearningLoss):
  """tripletjax's contrastive loss of a labelled batch: `y_true` [B] or [B, 1] integer labels,
  `y_pred` [B, D] embeddings; see `batch_contrastive_loss`."""

  fn = staticmethod(batch_contrastive_loss)

  def __init__(self, margin=1.0, distance_metric="L2", name=None, **kwargs):
    distances_lib.check_distance_metric(distance_metric)
    _check_margin(margin)
    super().__init__(name=name, margin=margin, distance_metric=distance_metric, **kwargs)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ContrastiveLoss(_MetricLearningLoss):
  """TFA's `ContrastiveLoss` of given pairs: `y_true` [B] 0/1 (1 = similar), `y_pred` [B]
  distances of the pairs; the mean of `contrastive_loss` (per the `reduction`)."""

  fn = staticmethod(contrastive_loss)

  def __init__(self, margin=1.0, reduction="sum_over_batch_size", name="contrastive_loss",
               **kwargs):
    _check_margin(margin)
    super().__init__(name=name, reduction=reduction, margin=margin, **kwargs)


# The functions by the names `compile(loss=...)` accepts as strings, "tripletjax>name".
FUNCTIONS = {f"{PACKAGE}>{fn.__name__}": fn for fn in (
    triplet_semihard_loss, triplet_hard_loss, contrastive_loss, batch_contrastive_loss)}


def register_loss_names() -> bool:
  """Makes `keras.losses.get("tripletjax>triplet_semihard_loss")` (and so `compile` with that
  string) find the functions. Keras 3 looks a string up only among its built-in losses, so the
  names are added to that table; returns False where this Keras has no such table."""
  try:
    from keras.src import losses as keras_losses  # pylint: disable=import-outside-toplevel
    table = keras_losses.ALL_OBJECTS_DICT
  except (ImportError, AttributeError):
    return False
  table.update(FUNCTIONS)
  return True
