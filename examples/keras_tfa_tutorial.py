"""TensorFlow Addons' tutorial "TripletSemiHardLoss", on Keras 3 with tripletjax.keras.

The tutorial's program with `tensorflow_addons` replaced by `tripletjax.keras` and `tf.keras`
by `keras`: the same model, `compile` and `fit` (batches of 32, 5 epochs, Adam 0.001), and the
test embeddings written to `vecs.tsv` / `meta.tsv` for https://projector.tensorflow.org/.
It runs offline on Fashion-MNIST (Debian's dataset-fashion-mnist; or MNIST's IDX files with
--mnist-dir) on whichever backend KERAS_BACKEND names (jax when unset):

    KERAS_BACKEND=jax python examples/keras_tfa_tutorial.py
    KERAS_BACKEND=torch python examples/keras_tfa_tutorial.py --epochs 1 --max-train 6000

Needs `pip install 'tripletjax[keras,app]'` (and tensorflow-cpu or torch for those backends).
"""

from __future__ import annotations

import argparse
import io
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

import example_data  # pylint: disable=wrong-import-position
from tripletjax import keras as tjk  # pylint: disable=wrong-import-position  # was: tfa


def build_model() -> keras.Sequential:
  """The tutorial's model: two conv blocks and a 256-d L2-normalised embedding."""
  return keras.Sequential([
      keras.Input(shape=(28, 28, 1)),
      keras.layers.Conv2D(filters=64, kernel_size=2, padding="same", activation="relu"),
      keras.layers.MaxPooling2D(pool_size=2),
      keras.layers.Dropout(0.3),
      keras.layers.Conv2D(filters=32, kernel_size=2, padding="same", activation="relu"),
      keras.layers.MaxPooling2D(pool_size=2),
      keras.layers.Dropout(0.3),
      keras.layers.Flatten(),
      keras.layers.Dense(256, activation=None),  # No activation on final dense layer
      # L2 normalize embeddings (the tutorial's Lambda of tf.math.l2_normalize).
      keras.layers.UnitNormalization(axis=1),
  ])


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  example_data.add_data_arguments(parser)
  parser.add_argument("--epochs", type=int, default=5)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--output-dir", default=".", help="where vecs.tsv and meta.tsv go")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if args.epochs < 1 or args.batch_size < 2:
    example_data.fail("--epochs must be >= 1 and --batch-size >= 2")
  dataset = example_data.load(args)
  keras.utils.set_random_seed(args.seed)
  print(f"Keras {keras.__version__} on the {keras.backend.backend()} backend")

  model = build_model()
  # Compile the model
  model.compile(
      optimizer=keras.optimizers.Adam(0.001),
      loss=tjk.TripletSemiHardLoss())
  # Train the network (the tutorial shuffles with a buffer of 1024 and batches by 32)
  history = model.fit(
      dataset.train.images, dataset.train.labels,
      batch_size=args.batch_size, shuffle=True,
      epochs=args.epochs)

  # Evaluate the network
  results = model.predict(dataset.test.images, batch_size=args.batch_size)
  # Save test embeddings for visualization in projector
  os.makedirs(args.output_dir, exist_ok=True)
  np.savetxt(os.path.join(args.output_dir, "vecs.tsv"), results, delimiter="\t")
  with io.open(os.path.join(args.output_dir, "meta.tsv"), "w", encoding="utf-8") as out_m:
    for label in dataset.test.labels:
      out_m.write(str(label) + "\n")
  print(f"wrote {len(results)} embeddings to {args.output_dir}/vecs.tsv and meta.tsv")
  return {"loss": history.history["loss"], "embeddings": results}


if __name__ == "__main__":
  main()
