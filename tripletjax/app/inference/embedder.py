"""A trained run's embedder: `load_embedder(workdir)` rebuilds the model and restores its weights.

The model is rebuilt from the run's `config.json` with the trainer's own code
(`train_step.build_trainer`), its checkpoint (the latest, or a given step) is restored onto the
devices present, and images are embedded exactly as the run's evaluation embeds them: in
evaluation mode (BatchNorm statistics, no dropout), in chunks padded to one batch size (one
compilation) and sharded over the devices (`evaluate.embed_chunks`), image files decoded
and cropped by the evaluation's transform (`pipeline.InputPipeline.eval_chunks`). On the same
devices the embeddings are therefore bit for bit those of the run's final evaluation.

  embedder = load_embedder("runs/fashion")
  embeddings = embedder(images)              # float32 [N, 28, 28, 1] in [0, 1] -> [N, E]
  embeddings = embedder.embed(["a.png", "b.jpg"])   # image files, decoded as in evaluation
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterator, Sequence

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from tripletjax.app import errors
from tripletjax.app import tasks
from tripletjax.app.config import defaults
from tripletjax.app.config import resume
from tripletjax.app.data import datasets
from tripletjax.app.data import images as images_lib
from tripletjax.app.data import pipeline as pipeline_lib
from tripletjax.app.devices import mesh as mesh_lib
from tripletjax.app.evaluation import evaluate
from tripletjax.app.inference import workdirs
from tripletjax.app.loop import checkpointing
from tripletjax.app.loop import selection
from tripletjax.app.step import train_step
from tripletjax.app.tasks import labelled

CHECKPOINTS_DIR = workdirs.CHECKPOINTS_DIR
# Images embedded per compiled call: the evaluation's chunk size, so that the embeddings are
# the evaluation's bit for bit (rounded up to a multiple of devices x forward chunks).
EVAL_BATCH_SIZE = 1024
# The input shapes of the in-memory datasets, which config.json does not spell out.
ARRAY_INPUT_SHAPES = {"digits": (8, 8, 1), "fashion_mnist": (28, 28, 1), "mnist": (28, 28, 1)}


# ----------------------------------------------------------------------------- the run


def _merge(base: dict, recorded: dict) -> dict:
  """`recorded` over `base`, key by key (a key added since the run keeps its default)."""
  merged = dict(base)
  for key, value in recorded.items():
    if isinstance(value, dict) and isinstance(base.get(key), dict):
      merged[key] = _merge(base[key], value)
    else:
      merged[key] = value
  return merged


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was trained with (`config.json`), over today's defaults.

  Raises:
    errors.WorkdirError: `workdir` is not a training run (no config.json, no checkpoints/).
  """
  workdirs.check_is_run(workdir)
  recorded = resume.read_recorded(workdir)
  return ml_collections.ConfigDict(_merge(resume.as_plain_dict(defaults.get_config()),
                                          recorded))


def task_kind(config: ml_collections.ConfigDict) -> str:
  """"labelled" or "pairs" (`tasks.task_for`)."""
  return tasks.task_for(config.data.name)


def trained_on_files(config: ml_collections.ConfigDict) -> bool:
  """Whether the run read image files (folder:, pairs:), rather than in-memory arrays."""
  return task_kind(config) == "pairs" or str(config.data.name).startswith(
      datasets.FOLDER_PREFIX)


def input_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(H, W, C) of the images the run's model takes (its training layout)."""
  data = config.data
  if task_kind(config) == "pairs":
    return (data.image_size, data.image_size, 3)
  if str(data.name).startswith(datasets.FOLDER_PREFIX):
    return (data.image_size, data.image_size, data.image_channels)
  if data.name in ARRAY_INPUT_SHAPES:
    return ARRAY_INPUT_SHAPES[data.name]
  dataset = labelled.load_labelled_data(config)  # tfds: the shape is the data's own.
  try:
    return tuple(dataset.image_shape)
  finally:
    dataset.close()


def _no_loss(labels, embeddings):
  """The trainer is built for its model and embedding function only: no step is taken."""
  del labels, embeddings
  raise AssertionError("an embedder takes no training step")


def _selected_step(workdir: str) -> int | None:
  """The step whose model the run's evaluation reports (`eval.json`'s `selected_step`: the
  epoch chosen on validation, `loop/selection.py`), or None before the run finished."""
  try:
    with open(os.path.join(workdir, "eval.json"), encoding="utf-8") as f:
      selected = json.load(f).get("selected_step")
  except (OSError, ValueError, AttributeError):
    return None
  return selected if isinstance(selected, int) else None


def _checkpoints_holding(workdir: str, step: int | None) -> checkpointing.StepCheckpoints:
  """The run's training checkpoints, or its selected ones (`selected/`) when only they hold
  `step`."""
  checkpoints = checkpointing.StepCheckpoints(os.path.join(workdir, CHECKPOINTS_DIR))
  selected_dir = os.path.join(workdir, selection.SELECTED_DIR)
  if step is None or step in checkpoints.steps() or not os.path.isdir(selected_dir):
    return checkpoints
  selected = checkpointing.StepCheckpoints(selected_dir)
  if step in selected.steps():
    checkpoints.close()
    return selected
  selected.close()
  return checkpoints


def _restore(trainer, workdir: str, step: int | None, mesh) -> int:
  """Restores the checkpoint of `step` into `trainer`; its step. The default is the model the
  run's final evaluation reports (the selected epoch's under model selection), else the
  latest checkpoint."""
  asked = step
  if step is None:
    step = _selected_step(workdir)
  checkpoints = _checkpoints_holding(workdir, step)
  try:
    steps = checkpoints.steps()
    if not steps:
      raise errors.WorkdirError(f"--workdir={workdir}: the run has no checkpoint yet "
                                f"(nothing in {checkpoints.directory})")
    if step is None:
      step = steps[-1]
    elif step not in steps and asked is None:
      raise errors.WorkdirError(
          f"--workdir={workdir}: eval.json names the model of step {step}, whose checkpoint is "
          "in neither checkpoints/ nor selected/",
          hint=f"pass --step with one of the run's steps: {', '.join(map(str, steps))}")
    elif step not in steps:
      raise errors.WorkdirError(f"--step={step}: {workdir} has no checkpoint of that step "
                                f"(its steps: {', '.join(map(str, steps))})")
    abstract = train_step.abstract_training_state(trainer, mesh)
    try:
      state, _ = checkpoints.restore(step, abstract)
    except Exception as error:  # Orbax and TensorStore raise many types; all mean unreadable.
      reason = " ".join(str(error).split())[:300] or type(error).__name__
      raise errors.WorkdirError(
          f"checkpoint {checkpoints.path(step)} cannot be read ({reason})",
          hint=f"the run's checkpoints: steps {', '.join(map(str, steps))}; pass --step with "
               "another one") from error
  finally:
    checkpoints.close()
  train_step.set_training_state(trainer, state)
  return step


# ----------------------------------------------------------------------------- the embedder


@dataclasses.dataclass
class Embedder:
  """A trained run's model in evaluation mode: images -> L2-normalised embeddings [N, E].

  Attributes:
    workdir: the run.
    step: the training step of the restored checkpoint.
    config: the run's config.
    input_shape: (H, W, C) of one image in the training layout (float32, [0, 1]).
    trainer: the run's `train_step.Trainer` (its model and compiled embedding function).
    mesh: the devices the embeddings are computed on.
    batch_size: images per compiled call (every chunk is padded to it).
  """
  workdir: str
  step: int
  config: ml_collections.ConfigDict
  input_shape: tuple[int, int, int]
  trainer: train_step.Trainer
  mesh: jax.sharding.Mesh
  batch_size: int = EVAL_BATCH_SIZE

  def __post_init__(self):
    multiple = jax.device_count() * self.trainer.plan.forward_chunks
    self.batch_size = -(-int(self.batch_size) // multiple) * multiple
    self.pipeline = pipeline_lib.InputPipeline(self.config.data, self.config.seed)

  @property
  def model(self):
    return self.trainer.model

  @property
  def embedding_dim(self) -> int:
    return int(self.config.model.embedding_dim)

  @property
  def eval_transform(self) -> images_lib.EvalTransform:
    """How the evaluation decodes an image file: resize (the run's eval_resize for runs on
    image files), centre crop to the model's input size."""
    resize = self.config.data.eval_resize if trained_on_files(self.config) else None
    return images_lib.EvalTransform(self.input_shape[:2], resize)

  def image_files(self, paths: Sequence[str], labels=None) -> images_lib.ImageFiles:
    """`paths` as a lazily decoded image array in the training layout (the evaluation's
    decoding: channels, crop, [0, 1])."""
    labels = np.full(len(paths), -1, np.int64) if labels is None else np.asarray(labels)
    decoder = images_lib.ImageDecoder(self.input_shape[2], self.config.data.decode_workers)
    return images_lib.ImageFiles(np.asarray(list(paths), dtype=object), labels, decoder,
                                 self.eval_transform)

  def check_images(self, images) -> np.ndarray:
    """`images` as float32 [N, H, W, C] of this model's input shape; one image [H, W, C] is a
    batch of one. Raises `errors.DataError` for another shape."""
    images = np.asarray(images)
    if images.ndim == 3:
      images = images[np.newaxis]
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(self.input_shape):
      raise errors.DataError(
          f"images of shape {images.shape}: this run's model takes float32 [N, "
          f"{', '.join(map(str, self.input_shape))}] (N images of height, width, channels "
          "in [0, 1], its training layout)",
          hint="pass image files instead: they are decoded, resized and cropped as the "
               "run's evaluation does")
    if not (np.issubdtype(images.dtype, np.floating) or np.issubdtype(images.dtype, np.integer)):
      raise errors.DataError(f"images of dtype {images.dtype}: expected float32 in [0, 1]")
    return images.astype(np.float32, copy=False)

  def chunks(self, images) -> Iterator[np.ndarray]:
    """float32 chunks [<= batch_size, H, W, C] of an array or `ImageFiles`, decoded ahead."""
    if not images_lib.is_lazy(images):
      images = self.check_images(images)
    return self.pipeline.eval_chunks(images, self.batch_size)

  def iter_embeddings(self, images, progress: bool = False) -> Iterator[np.ndarray]:
    """Yields the float32 embeddings [<= batch_size, E] of `images` chunk by chunk (memory
    holds a few chunks of images, whatever their number).

    Args:
      images: float32 [N, H, W, C] in the training layout, `ImageFiles`, or image paths.
      progress: show a progress bar (images per second, time left) on stderr.
    """
    own_decoder = not images_lib.is_lazy(images) and _is_path_list(images)
    if own_decoder:
      images = self.image_files(images)
    bar = tqdm(total=len(images), unit="img", desc="embedding", disable=not progress,
               dynamic_ncols=True)
    try:
      for chunk in self.chunks(images):
        embeddings = evaluate.embed_chunks(self.trainer, self.mesh, [chunk], self.batch_size)
        bar.update(len(chunk))
        yield embeddings
    finally:
      bar.close()
      if own_decoder:
        images.decoder.close()

  def embed(self, images, progress: bool = False) -> np.ndarray:
    """float32 [N, E] L2-normalised embeddings of `images` (see `iter_embeddings`)."""
    parts = list(self.iter_embeddings(images, progress))
    if not parts:
      return np.zeros((0, self.embedding_dim), np.float32)
    return np.concatenate(parts)

  __call__ = embed

  def describe(self) -> dict:
    """What a file of this embedder's output records about where it came from."""
    return {"workdir": os.path.abspath(self.workdir), "step": int(self.step),
            "model": self.config.model.name, "data": str(self.config.data.name),
            "loss": self.config.loss.name, "embedding_dim": self.embedding_dim,
            "input_shape": list(self.input_shape)}


def _is_path_list(images) -> bool:
  return isinstance(images, (list, tuple)) and bool(images) and all(
      isinstance(item, (str, os.PathLike)) for item in images)


def load_embedder(workdir: str, step: int | None = None,
                  batch_size: int = EVAL_BATCH_SIZE) -> Embedder:
  """The embedder of the run in `workdir`, its checkpoint of `step` (default: the latest)
  restored on the devices present.

  Raises:
    errors.WorkdirError: not a run, no checkpoint of `step`, a checkpoint that cannot be read.
    errors.ConfigError: a config.json this version cannot build a model from.
  """
  config = read_run_config(workdir)
  shape = input_shape(config)
  mesh = mesh_lib.make_mesh()
  opt = config.optimizer
  # The optimizer's state is restored with the model (the checkpoint holds both); the
  # schedule's length does not change its structure.
  total_steps = int(opt.warmup_steps) + 1_000_000
  try:
    trainer = train_step.build_trainer(config, shape, total_steps, mesh, loss_fn=_no_loss)
  except (ValueError, TypeError, KeyError) as error:
    if isinstance(error, errors.UserError):
      raise
    raise errors.ConfigError(f"{os.path.join(workdir, resume.CONFIG_FILE)}: cannot build the "
                             f"run's model from it ({error})") from error
  restored_step = _restore(trainer, workdir, step, mesh)
  trainer.model.eval()
  return Embedder(workdir, restored_step, config, shape, trainer, mesh, batch_size)
