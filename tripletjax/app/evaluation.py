"""Evaluation: embed the test (and train) images with the trainer's model, then retrieval
metrics (`retrieval`)."""

from __future__ import annotations

import jax
import numpy as np

from tripletjax.app import parallel
from tripletjax.app import retrieval
from tripletjax.app.train_step import Trainer


def embed(trainer: Trainer, mesh, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
  """[N, E] embeddings of `images` in evaluation mode (dropout off, BatchNorm statistics).

  Every chunk is padded to `batch_size` (rounded up to a multiple of devices x forward chunks,
  so one compilation serves every chunk) and sharded over the mesh like a training batch.
  """
  multiple = jax.device_count() * trainer.forward_chunks
  batch_size = -(-batch_size // multiple) * multiple
  trainer.model.eval()
  outputs = []
  for start in range(0, images.shape[0], batch_size):
    chunk = images[start:start + batch_size]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), 0)])
    (sharded,) = parallel.shard_batch(mesh, padded)
    outputs.append(np.asarray(trainer.embed_fn(trainer.model, sharded))[:len(chunk)])
  trainer.model.train()
  return np.concatenate(outputs)


def evaluate(trainer, mesh, dataset, *, seed: int, with_train: bool) -> tuple[dict, np.ndarray]:
  """Retrieval metrics of the test split (leave-one-out), plus test-vs-train k-NN accuracy.

  Returns:
    `(metrics, test_embeddings)`.
  """
  test_embeddings = embed(trainer, mesh, dataset.test.images)
  train_embeddings = train_labels = None
  if with_train:
    train_embeddings = embed(trainer, mesh, dataset.train.images)
    train_labels = dataset.train.labels
  metrics = retrieval.evaluate_embeddings(
      test_embeddings, dataset.test.labels, train_embeddings, train_labels, seed=seed)
  return metrics, test_embeddings
