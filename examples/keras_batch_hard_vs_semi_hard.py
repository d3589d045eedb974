"""Batch-hard against semi-hard triplet mining on MNIST-like digits, with Keras 3.

A port of the write-up "Neural Network-02 Triplet Loss Example at MNIST" (A. Hsu, 2020), which
trains the same small network twice, with `tfa.losses.TripletHardLoss` and with
`tfa.losses.TripletSemiHardLoss`, and compares the embeddings (PCA in 2-D and 3-D), the loss
and the mean norm of the embeddings before their L2 normalisation, epoch by epoch. Here the
losses come from `tripletjax.keras`, and the write-up's `tf.function` train step (loss,
gradient, Adam update) is `model.fit`'s compiled step, so it runs on any Keras backend
(KERAS_BACKEND, jax when unset). As in the write-up, images are scaled to [-1, 1] and each
epoch is 20 batches; the norm is measured after each epoch on a fixed set of 1,024 training
images (the write-up averaged it over the epoch's batches). The write-up reads its batch size,
margin, learning rate and Adam beta from an args.py it does not show: the defaults here are
this program's choice.

    KERAS_BACKEND=jax python examples/keras_batch_hard_vs_semi_hard.py --output-dir hard_vs_semi

writes pca_2d.png, pca_3d.png and curves.png there. Data: Fashion-MNIST (Debian's
dataset-fashion-mnist) or MNIST's IDX files with --mnist-dir. Needs
`pip install 'tripletjax[keras,app]'`.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # pylint: disable=wrong-import-position
import matplotlib  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from sklearn.decomposition import PCA  # pylint: disable=wrong-import-position

import example_data  # pylint: disable=wrong-import-position
from tripletjax import keras as tjk  # pylint: disable=wrong-import-position

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position,wrong-import-order

LOSSES = {"batch_hard": tjk.TripletHardLoss, "semi_hard": tjk.TripletSemiHardLoss}
NORM_IMAGES = 1024


def embedding_network() -> keras.Sequential:
  """The write-up's `Triplet_Net.emb_layer`: two strided 5x5 convolutions and a 200-d layer."""
  return keras.Sequential([
      keras.Input(shape=(28, 28, 1)),
      keras.layers.Conv2D(64, (5, 5), strides=(2, 2), padding="same"),
      keras.layers.LeakyReLU(),
      keras.layers.Dropout(0.3),
      keras.layers.Conv2D(64, (5, 5), strides=(2, 2), padding="same"),
      keras.layers.LeakyReLU(),
      keras.layers.Dropout(0.3),
      keras.layers.Flatten(),
      keras.layers.Dense(200),
  ], name="emb_layer")


def triplet_net(emb_layer: keras.Sequential) -> keras.Model:
  """The embedding network followed by the L2 normalisation."""
  inputs = keras.Input(shape=(28, 28, 1))
  return keras.Model(inputs, keras.layers.UnitNormalization(axis=1)(emb_layer(inputs)))


class NormAndEmbeddings(keras.callbacks.Callback):
  """After each epoch: the mean norm of the embeddings before normalisation, and the test
  embeddings (for the PCA plots)."""

  def __init__(self, emb_layer, norm_images, test_images):
    super().__init__()
    self.emb_layer, self.norm_images, self.test_images = emb_layer, norm_images, test_images
    self.norms, self.embeddings = [], []

  def on_epoch_end(self, epoch, logs=None):
    raw = self.emb_layer.predict(self.norm_images, batch_size=256, verbose=0)
    self.norms.append(float(np.mean(np.linalg.norm(raw, axis=1))))
    self.embeddings.append(self.model.predict(self.test_images, batch_size=256, verbose=0))
    print(f"epoch {epoch + 1}: norm {self.norms[-1]:.4f}, loss {logs['loss']:.4f}")


def train(loss_name: str, dataset, args) -> dict:
  """Trains one network with one loss; returns its loss and norm curves and test embeddings."""
  keras.utils.set_random_seed(args.seed)
  emb_layer = embedding_network()
  model = triplet_net(emb_layer)
  model.compile(optimizer=keras.optimizers.Adam(args.lr, beta_1=args.beta),
                loss=LOSSES[loss_name](margin=args.margin))
  images = dataset.train.images * 2.0 - 1.0  # The write-up's (x - 127.5) / 127.5.
  rng = np.random.default_rng(args.seed)
  steps = args.steps_per_epoch * args.batch_size
  record = NormAndEmbeddings(emb_layer, images[:NORM_IMAGES],
                             dataset.test.images * 2.0 - 1.0)
  losses = []
  print(f"{loss_name}:")
  for epoch in range(args.epochs):
    # Each epoch: 20 batches of a fresh shuffle, as `shuffle(...).batch(...).take(20)`.
    take = rng.permutation(len(images))[:steps]
    history = model.fit(images[take], dataset.train.labels[take], batch_size=args.batch_size,
                        epochs=epoch + 1, initial_epoch=epoch, shuffle=False, verbose=0,
                        callbacks=[record])
    losses.append(history.history["loss"][-1])
  return {"loss": losses, "norm": record.norms, "embeddings": record.embeddings[-1]}


def plot(results: dict, labels: np.ndarray, output_dir: str) -> list[str]:
  """pca_2d.png, pca_3d.png (final test embeddings) and curves.png (loss and norm)."""
  paths = []
  for dims in (2, 3):
    figure = plt.figure(figsize=(6 * len(results) + 1, 5), layout="constrained")
    for i, (name, result) in enumerate(results.items()):
      points = PCA(n_components=dims).fit_transform(result["embeddings"])
      axes = figure.add_subplot(1, len(results), i + 1,
                                projection="3d" if dims == 3 else None)
      scatter = axes.scatter(*points.T, c=labels, cmap="tab10", s=4)
      axes.set_title(f"{name}: test embeddings, PCA {dims}-D")
    figure.colorbar(scatter, ax=figure.axes, label="class")
    paths.append(os.path.join(output_dir, f"pca_{dims}d.png"))
    figure.savefig(paths[-1], dpi=100)
    plt.close(figure)
  figure, (loss_axes, norm_axes) = plt.subplots(1, 2, figsize=(11, 4))
  for name, result in results.items():
    epochs = np.arange(1, len(result["loss"]) + 1)
    loss_axes.plot(epochs, result["loss"], marker="o", label=name)
    norm_axes.plot(epochs, result["norm"], marker="o", label=name)
  loss_axes.set(xlabel="epoch", ylabel="triplet loss", title="Loss")
  norm_axes.set(xlabel="epoch", ylabel="mean norm before L2 normalisation",
                title="Mean norm of the embeddings")
  loss_axes.legend()
  norm_axes.legend()
  figure.tight_layout()
  paths.append(os.path.join(output_dir, "curves.png"))
  figure.savefig(paths[-1], dpi=100)
  plt.close(figure)
  return paths


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  example_data.add_data_arguments(parser)
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--steps-per-epoch", type=int, default=20)
  parser.add_argument("--batch-size", type=int, default=256)
  parser.add_argument("--margin", type=float, default=0.5)
  parser.add_argument("--lr", type=float, default=1e-4)
  parser.add_argument("--beta", type=float, default=0.5, help="Adam's beta_1")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--output-dir", default="hard_vs_semi")
  args = parser.parse_args(argv)
  if min(args.epochs, args.steps_per_epoch) < 1 or args.batch_size < 2 or args.margin < 0:
    example_data.fail("--epochs and --steps-per-epoch must be >= 1, --batch-size >= 2 and "
                      "--margin >= 0")
  dataset = example_data.load(args)
  if len(dataset.train.labels) < args.batch_size:
    example_data.fail(f"--batch-size {args.batch_size} is larger than the training set")
  os.makedirs(args.output_dir, exist_ok=True)
  print(f"Keras {keras.__version__} on the {keras.backend.backend()} backend")
  results = {name: train(name, dataset, args) for name in LOSSES}
  for path in plot(results, dataset.test.labels, args.output_dir):
    print(f"wrote {path}")
  return results


if __name__ == "__main__":
  main()
