"""Pairs of images known to look alike: batches of (anchor, positive, negative) triplets built
from them (`data.pairs`), the explicit triplet loss, and the pair metrics of
`evaluation.pair_evaluation` on held-out pairs.

Data names: `pairs:<folder or CSV>`, `pairs_demo:<source>`.
"""

from __future__ import annotations

import functools
import itertools
import os
import sys
from typing import Iterator

import jax.numpy as jnp
import ml_collections
import numpy as np

from tripletjax import losses
from tripletjax.app import errors
from tripletjax.app.config import checker
from tripletjax.app.data import images as images_lib
from tripletjax.app.data import pair_demo
from tripletjax.app.data import pairs as pairs_lib
from tripletjax.app.evaluation import evaluate
from tripletjax.app.evaluation import pair_evaluation
from tripletjax.app.outputs import exports
from tripletjax.app.outputs import reports
from tripletjax.app.step import plan as plan_lib

PAIRS_PREFIX = "pairs:"
PAIRS_DEMO_PREFIX = "pairs_demo:"
PAIR_DEMO_SOURCES = ("digits", "fashion_mnist")
# Where `pairs_demo:` writes its folder when config.data.data_dir is None.
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "tripletjax")
# Pairs in the demo folder of each source (digits has 1,797 images in all).
PAIR_DEMO_SIZES = {"digits": 1797, "fashion_mnist": 4000}
# Augmentations of image files (config.data.augment): (random resized crop, flip).
PAIR_AUGMENTATIONS = {"none": (False, False), "flip": (False, True), "crop": (True, False),
                      "crop_flip": (True, True)}
# Validation pairs shown in the retrieval picture, and the neighbours shown for each.
RETRIEVAL_EXAMPLES = 6
RETRIEVAL_TOP_K = 5
THUMBNAIL_SIZE = 28
PICTURE_SIZE = 96


def _triplet_batch_loss(labels, embeddings, *, margin: float):
  """The explicit triplet loss of a batch [3N, E] stacked as anchors, positives, negatives."""
  del labels  # A triplet batch has no labels: its structure says which images match.
  anchor, positive, negative = jnp.split(embeddings, 3)
  return losses.triplet_loss(anchor, positive, negative, margin=margin, return_stats=True)


def load_pairs(config: ml_collections.ConfigDict) -> pairs_lib.PairSet:
  """The pairs of `config.data.name`: "pairs:<folder or CSV>" or "pairs_demo:<source>"."""
  name = config.data.name
  if name.startswith(PAIRS_DEMO_PREFIX):
    source = name[len(PAIRS_DEMO_PREFIX):]
    if source not in PAIR_DEMO_SOURCES:
      raise errors.ConfigError(f"config.data.name={name!r}: the demo sources are "
                               f"{', '.join(PAIRS_DEMO_PREFIX + s for s in PAIR_DEMO_SOURCES)}")
    folder = os.path.join(config.data.data_dir or DEFAULT_CACHE_DIR,
                          f"pairs_demo-{source}-seed{config.seed}")
    if not os.path.exists(os.path.join(folder, pair_demo.DEMO_RECORD)):
      print(f"Writing the demo pair folder {folder} (once).", flush=True)
    pair_demo.build_pair_demo(folder, source, PAIR_DEMO_SIZES[source], seed=config.seed)
    return pairs_lib.read_pair_folder(folder)
  return pairs_lib.read_pairs(name[len(PAIRS_PREFIX):])


def _subsample(indices: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
  if limit is None or limit >= len(indices):
    return indices
  return np.sort(np.random.default_rng([seed, len(indices), limit]).choice(
      indices, size=limit, replace=False))


class PairTask:
  """Pairs of images that look alike: (anchor, positive, negative) triplets, the explicit
  triplet loss (squared L2), pair metrics on held-out pairs (`pair_evaluation`)."""

  def __init__(self, config: ml_collections.ConfigDict, plan: plan_lib.ExecutionPlan):
    self.config = config
    data = config.data
    self.pairs = load_pairs(config)
    pairs_lib.check_pairs(self.pairs)
    num_pairs = len(self.pairs)
    train, validation = pairs_lib.split_pairs(num_pairs, data.validation_fraction, config.seed)
    self.train_pairs = _subsample(train, data.max_train, config.seed)
    validation = _subsample(validation, data.max_test, config.seed + 1)
    if len(validation) < 2:
      raise errors.ConfigError(f"config.data.max_test={data.max_test}: the validation needs "
                               "at least 2 pairs")
    self.decoder = images_lib.ImageDecoder(3, data.decode_workers, data.unreadable)
    size = data.image_size
    self.eval_transform = images_lib.EvalTransform(size, data.eval_resize)
    random_crop, flip = PAIR_AUGMENTATIONS[data.augment]
    self.train_transform = (images_lib.TrainTransform(
        size, scale=tuple(data.crop_scale), ratio=tuple(data.crop_ratio),
        random_crop=random_crop, flip=flip, resize=data.eval_resize)
        if random_crop or flip else self.eval_transform)
    # Image i: the left image of pair i (i < P), or the right one of pair i - P.
    self.files = images_lib.ImageFiles(self.pairs.paths, np.tile(np.arange(num_pairs), 2),
                                       self.decoder, self.eval_transform)
    self.sampler = pairs_lib.TripletBatches(self.train_pairs, num_pairs,
                                            config.batch.batch_size, config.seed)
    self.validation = pairs_lib.validation_triplets(validation, num_pairs, config.seed)
    self.steps_per_epoch = self.sampler.steps_per_epoch
    self.global_batch_size = plan.global_batch_size  # Anchors, positives, negatives.
    self.input_shape = (size, size, 3)
    self.loss_fn = functools.partial(_triplet_batch_loss, margin=config.loss.margin)
    self.single_device_loss_fn = self.loss_fn
    self.description = f"triplets of {len(self.train_pairs)} pairs"
    self.replaced_triplets = 0
    if config.model.weights is None and config.model.name.startswith("resnet"):
      print("warning: config.model.weights is None: the backbone starts from random weights; "
            "the pair workflow is meant to fine-tune a pretrained one "
            "(docs/pretrained-backbones.md)", file=sys.stderr, flush=True)

  def _start_batch(self, epoch: int, step: int, indices: np.ndarray):
    rngs = None
    if self.train_transform.random:
      rngs = [images_lib.image_rng(self.config.seed, epoch, step, i)
              for i in range(len(indices))]
    return self.files.submit(indices, self.train_transform, rngs)

  def _without_unreadable(self, images: np.ndarray, readable: np.ndarray) -> np.ndarray:
    """With the "skip" policy, each triplet holding an unreadable image becomes a copy of the
    first readable triplet of the batch (and is counted); the batch keeps its shape."""
    if readable.all():
      return images
    triplets = readable.reshape(3, -1).all(axis=0)
    if not triplets.any():
      raise errors.DataError("every triplet of a batch holds an unreadable image (paths: "
                             f"{', '.join(sorted(self.decoder.unreadable)[:5])})")
    first = int(np.flatnonzero(triplets)[0])
    grouped = images.reshape(3, len(triplets), *images.shape[1:])
    grouped[:, ~triplets] = grouped[:, first:first + 1]
    self.replaced_triplets += int(np.sum(~triplets))
    return grouped.reshape(images.shape)

  def batches(self, epoch: int, start_step: int,
              rows: slice | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    jobs = (functools.partial(self._start_batch, epoch, step, indices)
            for step, indices in enumerate(
                itertools.islice(self.sampler.epoch(epoch), start_step, None), start=start_step))
    labels = np.zeros(self.global_batch_size, np.int32)
    rows = slice(None) if rows is None else rows
    # A triplet's replacement depends on the whole batch: every process decodes all of it.
    for images, readable in images_lib.ImageDecoder.prefetch(
        jobs, depth=self.config.data.prefetch_batches):
      yield self._without_unreadable(images, readable)[rows], labels[rows]

  def _validation_images(self):
    """The lazily decoded validation images: the left images, then the right ones."""
    pair_ids = self.validation[:, 0]
    return self.files.take(np.concatenate([pair_ids, pair_ids + len(self.pairs)]))

  def evaluate(self, trainer, mesh, final: bool) -> tuple[dict, dict]:
    del final
    num_validation = len(self.validation)
    # Chunks of a training batch's size: large images must fit in memory as they do there.
    embeddings = evaluate.embed(trainer, mesh, self._validation_images(),
                                  batch_size=3 * self.config.batch.batch_size)
    # Image id -> row of `embeddings`: left images first, then right ones.
    row = {int(image): i for i, image in enumerate(np.concatenate(
        [self.validation[:, 0], self.validation[:, 1]]))}
    anchors, positives = embeddings[:num_validation], embeddings[num_validation:]
    negatives = embeddings[[row[int(image)] for image in self.validation[:, 2]]]
    # With the "skip" policy, the triplets holding an unreadable image are left out.
    paths = self.files.source.paths
    usable = np.array([all(paths[image] not in self.decoder.unreadable for image in triplet)
                       for triplet in self.validation])
    if usable.sum() < 2:
      raise errors.DataError(f"{num_validation - usable.sum()} of the {num_validation} "
                             "validation triplets hold an unreadable image: too few are left")
    metrics = pair_evaluation.pair_metrics(anchors[usable], positives[usable],
                                           negatives[usable], margin=self.config.loss.margin)
    metrics["unreadable_images"] = len(self.decoder.unreadable)
    metrics["replaced_triplets"] = self.replaced_triplets
    return metrics, {"embeddings": embeddings, "usable": usable}

  @staticmethod
  def eval_line(metrics: dict) -> str:
    recall = metrics["recall_at_k"]
    return (f"triplet accuracy {metrics['triplet_accuracy']:.4f}  similarity "
            f"{metrics['positive_similarity']:.3f} (positive) vs "
            f"{metrics['negative_similarity']:.3f} (negative)  recall@1 {recall.get(1, 0):.4f}")

  def after_evaluation(self, workdir: str, epoch: int, payload: dict) -> None:
    del workdir, epoch, payload

  def write_exports(self, workdir: str, final: dict, payload: dict, notes: str = "") -> None:
    num_validation = len(self.validation)
    embeddings = payload["embeddings"]
    limit = min(self.config.export.projector_max_points, len(embeddings))
    # Thumbnails decoded small for the sprite: the projector shows at most 28 x 28.
    images = self._validation_images()
    thumbnails = images.decode(np.arange(limit), images_lib.EvalTransform(THUMBNAIL_SIZE))
    # Both images of a pair get the pair's number and name.
    exports.write_projector_files(
        os.path.join(workdir, "projector"), embeddings[:limit],
        np.arange(limit) % num_validation, images=thumbnails,
        class_names=[str(self.pairs.names[pair]) for pair in self.validation[:, 0]])
    # A few queries and their top 5 among all validation right images.
    usable = np.flatnonzero(payload["usable"])
    queries = usable[:RETRIEVAL_EXAMPLES]
    anchors, gallery = embeddings[:num_validation], embeddings[num_validation:]
    ranked = pair_evaluation.ranked_gallery(anchors[queries], gallery,
                                            min(RETRIEVAL_TOP_K, num_validation))
    picture = images_lib.EvalTransform(PICTURE_SIZE)
    query_images = images.decode(queries, picture)
    retrieved = images.decode(num_validation + ranked.reshape(-1), picture)
    retrieved = retrieved.reshape(*ranked.shape, *retrieved.shape[1:])
    figure = exports.plot_retrieval_examples(
        query_images, retrieved, ranked == queries[:, None],
        os.path.join(workdir, "plots", "retrieval_examples.png"),
        query_names=[self.pairs.names[self.validation[q, 0]] for q in queries])
    reports.write_pair_exports(workdir, self.config, final, [figure], notes=notes)

  @staticmethod
  def summary_line(final: dict) -> str:
    recall = final["recall_at_k"]
    ks = "  ".join(f"recall@{k} {value:.4f}" for k, value in recall.items())
    return (f"triplet accuracy {final['triplet_accuracy']:.4f}  positive similarity "
            f"{final['positive_similarity']:.4f}  negative similarity "
            f"{final['negative_similarity']:.4f}  {ks}")

  def close(self) -> None:
    self.decoder.close()


def check_config(check: checker.Checker) -> None:
  """`config.data.name` of pairs, and the data and batch keys a pair task reads its own way."""
  name = check["data.name"]
  if name.startswith(PAIRS_DEMO_PREFIX):
    check.choice("data.name", [PAIRS_DEMO_PREFIX + source for source in PAIR_DEMO_SOURCES])
  elif name == PAIRS_PREFIX:
    check.fail("data.name", "must name a pair folder or CSV file after 'pairs:'")
  check.number("data.validation_fraction", minimum=0.0, exclusive_minimum=True, below=1.0)
  if check["data.validation_folds"] != 0:
    check.fail("data.validation_folds",
               "must be 0 for pairs (their validation is a fraction of the pairs)")
  check.choice("data.augment", PAIR_AUGMENTATIONS)
  check.choice("batch.sampler", ["shuffled"])
  if check["data.class_split"] != "none":
    check.fail("data.class_split",
               "must be 'none' for pairs (a pair's two images are its only class)")
