"""Labelled images: a mined loss over class-labelled batches (`losses.MINED_LOSSES`), retrieval
metrics on the test split (`evaluation.evaluate`), under a class split on unseen classes.

Data names: digits, fashion_mnist, mnist, tfds:..., folder:... (`data.datasets`).
"""

from __future__ import annotations

import difflib
import os
import sys
from typing import Iterator

import ml_collections
import numpy as np

from tripletjax.app import errors
from tripletjax.app.config import checker
from tripletjax.app.data import augmentations
from tripletjax.app.data import datasets
from tripletjax.app.data import images as images_lib
from tripletjax.app.data import pipeline as pipeline_lib
from tripletjax.app.data import samplers
from tripletjax.app.evaluation import evaluate
from tripletjax.app.outputs import exports
from tripletjax.app.outputs import reports
from tripletjax.app.step import plan as plan_lib
from tripletjax.app.step import train_step


class LabelledTask:
  """Labelled images: a mined loss over class-labelled batches; retrieval on the test split
  (leave-one-out, or queries against a gallery), on unseen classes under a class split."""

  def __init__(self, config: ml_collections.ConfigDict, plan: plan_lib.ExecutionPlan):
    self.config = config
    self.dataset = load_labelled_data(config)
    try:
      self.sampler = samplers.make_sampler(
          config.batch.sampler, self.dataset.train.labels, batch_size=config.batch.batch_size,
          classes_per_batch=config.batch.classes_per_batch,
          samples_per_class=config.batch.samples_per_class, seed=config.seed)
    except ValueError as error:  # The batch settings do not fit this training set.
      self.dataset.close()
      raise errors.ConfigError(
          f"config.batch does not fit the {len(self.dataset.train)} training examples of "
          f"{len(self.dataset.train.classes)} classes: {error}",
          "change config.batch.classes_per_batch / samples_per_class / batch_size") from error
    self.pipeline = pipeline_lib.InputPipeline(config.data, config.seed)
    if (config.model.weights is None and config.model.name.startswith("resnet")
        and str(config.data.name).startswith(datasets.FOLDER_PREFIX)):
      print("warning: config.model.weights is None: the backbone starts from random weights; "
            "the metric-learning protocol fine-tunes an ImageNet-pretrained one "
            "(docs/pretrained-backbones.md)", file=sys.stderr, flush=True)
    self.steps_per_epoch = self.sampler.steps_per_epoch
    self.global_batch_size = plan.global_batch_size
    self.input_shape = tuple(self.dataset.train.images.shape[1:])
    self.loss_fn = train_step.make_loss_fn(config.loss, plan.mining_backend)
    self.single_device_loss_fn = train_step.make_loss_fn(config.loss,
                                                         plan.single_device_mining_backend)
    self.description = f"{config.loss.name} on {config.data.name}"

  def batches(self, epoch: int, start_step: int,
              rows: slice | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for images, labels in self.pipeline.train_batches(self.dataset.train, self.sampler, epoch,
                                                      start_step, rows):
      yield images, labels.astype(np.int32)

  def evaluate(self, trainer, mesh, final: bool) -> tuple[dict, np.ndarray]:
    metrics, test_embeddings = evaluate.evaluate(
        trainer, mesh, self.dataset, self.pipeline, self.config.eval, seed=self.config.seed,
        with_train=final)
    unreadable = _unreadable_files(self.dataset)
    if unreadable:
      metrics.update(unreadable_images=len(unreadable), unreadable_files=unreadable)
    return metrics, test_embeddings

  @staticmethod
  def eval_line(metrics: dict) -> str:
    where = "unseen classes: " if metrics.get("num_unseen_test_classes") else ""
    line = (f"{where}precision@1 {metrics['precision_at_1']:.4f}  "
            f"MAP@R {metrics['map_at_r']:.4f}")
    if "validation_precision_at_1" in metrics:
      line += (f"  validation: precision@1 {metrics['validation_precision_at_1']:.4f}  "
               f"MAP@R {metrics['validation_map_at_r']:.4f}")
    return line

  def after_evaluation(self, workdir: str, epoch: int, test_embeddings: np.ndarray) -> None:
    if self.config.export.pca_every_eval:
      plots = os.path.join(workdir, "plots")
      exports.plot_pca(test_embeddings, self.dataset.test.labels,
                       os.path.join(plots, f"pca_2d_epoch{epoch:03d}.png"),
                       os.path.join(plots, f"pca_3d_epoch{epoch:03d}.png"),
                       title=f"{self.config.loss.name}, epoch {epoch}",
                       class_names=self.dataset.class_names)

  def write_exports(self, workdir: str, final: dict, test_embeddings: np.ndarray,
                    notes: str = "") -> None:
    reports.write_exports(workdir, self.config, self.dataset, test_embeddings, final,
                          notes=notes)

  @staticmethod
  def summary_line(final: dict) -> str:
    return (f"precision@1 {final['precision_at_1']:.4f}  MAP@R {final['map_at_r']:.4f}  "
            f"R-precision {final['r_precision']:.4f}  NMI {final['nmi']:.4f}")

  def close(self) -> None:
    self.dataset.close()


def load_labelled_data(config: ml_collections.ConfigDict) -> datasets.Dataset:
  """The labelled dataset of `config.data`: class split, validation, image options."""
  data = config.data
  return datasets.load_dataset(
      data.name, data.data_dir, seed=config.seed, max_train=data.max_train,
      max_test=data.max_test, class_split=data.class_split,
      validation_fraction=data.validation_fraction, validation_folds=data.validation_folds,
      validation_fold=data.validation_fold, max_validation=data.max_validation,
      image_options=datasets.ImageOptions(
          size=data.image_size, channels=data.image_channels, eval_resize=data.eval_resize,
          unreadable=data.unreadable, workers=data.decode_workers))


def _unreadable_files(dataset: datasets.Dataset) -> dict[str, str]:
  """{path: reason} of the image files skipped as unreadable (the "skip" policy)."""
  for split in (dataset.train, dataset.test, dataset.validation):
    if split is not None and images_lib.is_lazy(split.images):
      return dict(sorted(split.images.decoder.unreadable.items()))
  return {}


def check_config(check: checker.Checker, other_names: tuple[str, ...],
                 other_prefixes: tuple[str, ...]) -> None:
  """`config.data.name` of labelled images, and `data.augment` (in-memory images or files).
  `other_names`, `other_prefixes`: the data names of the other tasks, for the error."""
  name = check["data.name"]
  try:
    datasets.find_loader(name)
  except errors.DataError:
    close = difflib.get_close_matches(str(name), [*datasets.DATASETS, *other_prefixes], n=1)
    valid = ", ".join([*datasets.dataset_names(), *other_names])
    check.fail("data.name", f"must be one of {valid}",
               f"did you mean {close[0]!r}?" if close else None)
  if isinstance(name, str) and name.startswith(datasets.FOLDER_PREFIX):
    check.choice("data.augment", augmentations.FILE_AUGMENTATIONS)
  else:
    check.choice("data.augment", augmentations.AUGMENTATIONS)
