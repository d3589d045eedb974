"""Evaluation: embed the test (validation, train) images with the trainer's model, then
retrieval metrics (`retrieval`).

The test split is evaluated leave-one-out (every example queries all the others) or, when it
has queries and a gallery (In-Shop), queries against the gallery. The k-NN accuracy "test vs
train" is only meaningful when every test class is a training class: under a class split (the
metric-learning protocol) it is left out, and the metrics say how many test classes were
unseen. Images whose file turned out unreadable (the "skip" policy) are left out of the
metrics.
"""

from __future__ import annotations

from typing import Iterable

import jax
import numpy as np

from tripletjax.app.data import images as images_lib
from tripletjax.app.devices import mesh as mesh_lib
from tripletjax.app.evaluation import retrieval
from tripletjax.app.step.train_step import Trainer

# Validation reports these leave-one-out metrics, as validation_<name>.
VALIDATION_METRICS = ("precision_at_1", "r_precision", "map_at_r")


def _padded_batch_size(trainer: Trainer, batch_size: int) -> int:
  """`batch_size` rounded up to a multiple of devices x forward chunks."""
  multiple = jax.device_count() * trainer.forward_chunks
  return -(-batch_size // multiple) * multiple


def embed_chunks(trainer: Trainer, mesh, chunks: Iterable[np.ndarray],
                 batch_size: int) -> np.ndarray:
  """[N, E] embeddings of image chunks in evaluation mode (dropout off, BatchNorm statistics).

  Args:
    chunks: float32 [<= batch_size, H, W, C] arrays, in order.
    batch_size: every chunk is padded to this (one compilation serves every chunk) and
      sharded over the mesh like a training batch; a multiple of devices x forward chunks.
  """
  trainer.model.eval()
  outputs = []
  for chunk in chunks:
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), 0)])
    (sharded,) = mesh_lib.shard_batch(mesh, padded)
    outputs.append(np.asarray(trainer.embed_fn(trainer.model, sharded))[:len(chunk)])
  trainer.model.train()
  return np.concatenate(outputs)


def embed(trainer: Trainer, mesh, images, batch_size: int = 1024) -> np.ndarray:
  """[N, E] embeddings of `images` (an array, or `images.ImageFiles` decoded chunk by chunk)
  in evaluation mode.

  Every chunk is padded to `batch_size` (rounded up to a multiple of devices x forward chunks,
  so one compilation serves every chunk) and sharded over the mesh like a training batch.
  """
  batch_size = _padded_batch_size(trainer, batch_size)
  chunks = (images[start:start + batch_size] for start in range(0, len(images), batch_size))
  return embed_chunks(trainer, mesh, chunks, batch_size)


def embed_split(trainer: Trainer, mesh, pipeline, images, batch_size: int = 1024) -> np.ndarray:
  """[N, E] embeddings of a split's images (an array or `images.ImageFiles`), through the
  pipeline (image files decoded a few chunks ahead)."""
  batch_size = _padded_batch_size(trainer, batch_size)
  return embed_chunks(trainer, mesh, pipeline.eval_chunks(images, batch_size), batch_size)


def _readable(split) -> np.ndarray:
  """bool [N]: the examples whose image could be read (all, for arrays)."""
  keep = np.ones(len(split), bool)
  if images_lib.is_lazy(split.images):
    keep[split.images.unreadable_indices()] = False
  return keep


def evaluate(trainer, mesh, dataset, pipeline, eval_config, *, seed: int,
             with_train: bool) -> tuple[dict, np.ndarray]:
  """Retrieval metrics of the test split, of the validation split (if any), and test-vs-train
  k-NN accuracy when asked for and meaningful.

  Args:
    trainer, mesh: the model and its devices.
    dataset: a `datasets.Dataset`.
    pipeline: the `pipeline.InputPipeline` that decodes and normalises the images.
    eval_config: `config.eval` (recall_ks, backend, faiss_min_size).
    seed: seeds k-means (NMI) and the verification pairs.
    with_train: also embed the training split for the k-NN accuracy.

  Returns:
    `(metrics, test_embeddings)`, the embeddings [N, E] of every test example in order.
  """
  options = dict(ks=tuple(eval_config.recall_ks), seed=seed, backend=eval_config.backend,
                 faiss_min_references=eval_config.faiss_min_size)
  test = dataset.test
  test_embeddings = embed_split(trainer, mesh, pipeline, test.images)
  keep = _readable(test)
  unseen = dataset.unseen_test_classes
  if test.is_query is not None:
    query, gallery = keep & test.is_query, keep & ~test.is_query
    metrics = retrieval.evaluate_query_gallery(
        test_embeddings[query], test.labels[query], test_embeddings[gallery],
        test.labels[gallery], **options)
  else:
    train_embeddings = train_labels = None
    if with_train and not len(unseen):
      train_embeddings = embed_split(trainer, mesh, pipeline, dataset.train.images)
      train_keep = _readable(dataset.train)
      train_embeddings, train_labels = (train_embeddings[train_keep],
                                        dataset.train.labels[train_keep])
    metrics = retrieval.evaluate_embeddings(test_embeddings[keep], test.labels[keep],
                                            train_embeddings, train_labels, **options)
  metrics.update(num_test_examples=int(keep.sum()), num_test_classes=len(test.classes),
                 num_train_classes=len(dataset.train.classes),
                 num_unseen_test_classes=len(unseen))
  if dataset.validation is not None:
    validation = dataset.validation
    embeddings = embed_split(trainer, mesh, pipeline, validation.images)
    valid = _readable(validation)
    scores = retrieval.retrieval_metrics(
        embeddings[valid], validation.labels[valid], ks=options["ks"],
        backend=options["backend"], faiss_min_references=options["faiss_min_references"])
    metrics.update({f"validation_{name}": scores[name] for name in VALIDATION_METRICS})
    metrics["num_validation_classes"] = len(validation.classes)
  return metrics, test_embeddings
