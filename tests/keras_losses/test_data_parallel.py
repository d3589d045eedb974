"""Under `keras.distribution.DataParallel` on the JAX backend the losses mine the global batch:
the loss and the training step equal those of the whole batch on one device."""

from __future__ import annotations

import importlib.util

from tests import conftest
from tests.subprocesses import run_on_devices

SCRIPT = """
import os
os.environ["KERAS_BACKEND"] = "jax"
import jax
import keras
import numpy as np
from tripletjax import keras as tjk
from tripletjax import reference
from tripletjax.keras import jax_losses

assert jax.device_count() == 4
rng = np.random.default_rng(0)
# Each device's 8 rows hold 8 different classes: every positive pair spans two devices, so
# mining each device's rows alone would find no positive pair at all.
labels = np.tile(np.arange(8), 4)
x = rng.normal(size=(32, 6)).astype(np.float32)

def model_and_step(loss):
  keras.utils.set_random_seed(0)
  model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
  model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
  before = model.evaluate(x, labels, batch_size=32, verbose=0)
  embeddings = model.predict(x, batch_size=32, verbose=0)
  model.fit(x, labels, batch_size=32, epochs=1, shuffle=False, verbose=0)
  return before, embeddings, model.get_weights()

results = {}
for name, loss in [("semihard", tjk.TripletSemiHardLoss())]:
  single = model_and_step(loss)
  keras.distribution.set_distribution(keras.distribution.DataParallel())
  assert jax_losses._data_parallel_mesh()[0].shape["batch"] == 4
  parallel = model_and_step(loss)
  keras.distribution.set_distribution(None)
  expected = reference.MINED_LOSSES[name](labels, single[1])
  np.testing.assert_allclose(single[0], expected, rtol=1e-5)
  np.testing.assert_allclose(parallel[0], expected, rtol=1e-5)
  for a, b in zip(single[2], parallel[2]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # Each device's rows alone have no positive pair: local semi-hard mining would give 0.
  assert reference.triplet_semihard_loss(labels[:8], single[1][:8]) == 0.0 < parallel[0]
  print(name, float(parallel[0]))
print("OK")
"""


def test_data_parallel_mines_the_global_batch():
  if importlib.util.find_spec("keras") is None:
    conftest.skip_unless_ci("keras is not installed; pip install 'tripletjax[keras]'")
  output = run_on_devices(4, SCRIPT)
  assert output.strip().endswith("OK"), output
