"""tripletjax's losses for Keras 3: a drop-in for TensorFlow Addons' metric-learning losses.

    from tripletjax import keras as tjk      # was: import tensorflow_addons as tfa
    model.compile(optimizer="adam", loss=tjk.TripletSemiHardLoss())

Runs on Keras' JAX, TensorFlow and PyTorch backends (`KERAS_BACKEND`); importing it imports
Keras (the `keras` extra), which `import tripletjax` never does. See `tripletjax.keras.losses`
and docs/keras.md.
"""

try:
  import keras
except ImportError as error:
  raise ImportError(f"tripletjax.keras needs Keras 3 ({error}): pip install "
                    "'tripletjax[keras]'") from error
if int(keras.__version__.split(".")[0]) < 3:
  raise ImportError(f"tripletjax.keras needs Keras 3, found Keras {keras.__version__}: pip "
                    "install 'keras>=3' (TensorFlow Addons' programs ran on Keras 2).")

# pylint: disable=wrong-import-position
from tripletjax.keras.distances import METRIC_NAMES, pairwise_distances
from tripletjax.keras.losses import (
    BatchContrastiveLoss,
    ContrastiveLoss,
    TripletHardLoss,
    TripletSemiHardLoss,
    batch_contrastive_loss,
    contrastive_loss,
    register_loss_names,
    triplet_hard_loss,
    triplet_semihard_loss,
)

register_loss_names()

__all__ = [
    "BatchContrastiveLoss",
    "ContrastiveLoss",
    "METRIC_NAMES",
    "TripletHardLoss",
    "TripletSemiHardLoss",
    "batch_contrastive_loss",
    "contrastive_loss",
    "pairwise_distances",
    "triplet_hard_loss",
    "triplet_semihard_loss",
]
