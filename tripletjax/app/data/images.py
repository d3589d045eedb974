"""Image files -> float32 batches [N, H, W, C]: decoding, resizing and cropping in worker threads.

The pipeline of "A Metric Learning Reality Check" (Musgrave et al., 2020), for images of any
size and format PIL reads (JPEG, PNG, BMP, WebP, GIF, TIFF; grey, RGB, RGBA, palette, 16-bit):

  * `EvalTransform`: resize the shorter side to `resize` (256), then a centre crop of `size`
    (224 x 224): what every test image goes through.
  * `TrainTransform`: a random resized crop (a random area fraction in `scale` and aspect ratio
    in `ratio` of the image, resized to `size`), then a left-right flip with probability 1/2.
    MLRC resizes to 256 first and crops that; cropping the original instead is the same crop up
    to the resampling, and it resamples once.

Crop boxes are computed from the image size alone and drawn from `np.random.default_rng` of the
caller's seed (e.g. [seed, epoch, step, position]), so a batch is a pure function of its
arguments whatever the number of threads: a resumed run decodes exactly the same pixels.
Large JPEGs are decoded at a reduced scale (`Image.draft`) when the crop allows it.

Decoding runs in a thread pool (`ImageDecoder`): PIL releases the GIL while it decodes and
resamples, so the threads use every core, and `ImageDecoder.prefetch` keeps the next batches
decoding while the accelerator works on the current one. Nothing holds more than the batches
in flight: a folder of any size streams through a few batches of memory.

Unreadable or corrupt files (missing, truncated, not an image) follow a policy:
  * "error": `UnreadableImageError` (an `errors.DataError`) naming the path and the reason;
  * "skip": the image is replaced (see `ImageFiles`), the path is reported once with a warning
    and counted in `ImageDecoder.unreadable`.

`ImageFiles` is a lazily decoded image array over a list of (path, label) items: it has the
`shape`, `dtype`, `len` and slicing of the float32 array it stands for, decoding what is asked
(`images[i:j]` goes through the evaluation transform).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import threading
import warnings
from collections import deque
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps

from tripletjax.app import errors

# The file extensions of image files (lower case) that a folder dataset picks up.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif",
                              ".tiff", ".ppm", ".pgm"})
UNREADABLE_POLICIES = ("error", "skip")
# Channel normalisations applied after scaling to [0, 1]: (mean, std) per channel, by name.
# "imagenet" is what torchvision's ImageNet-pretrained weights expect.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "none": None,
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
# MLRC's crop parameters (torchvision's RandomResizedCrop with scale (0.16, 1)).
DEFAULT_SCALE = (0.16, 1.0)
DEFAULT_RATIO = (3 / 4, 4 / 3)
# Attempts at a random crop within the image before falling back to a centre crop.
_CROP_ATTEMPTS = 10
# Errors PIL and the file system raise for a file that is not a readable image.
_UNREADABLE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height.


class UnreadableImageError(errors.DataError):
  """An image file that cannot be read or decoded; `path` is the file."""

  def __init__(self, path: str, reason: str):
    super().__init__(
        f"{path}: cannot read this image ({reason}).",
        "fix or remove the file, or set config.data.unreadable='skip' to skip such files "
        "(each is reported once and counted)")
    self.path = path


# ----------------------------------------------------------------------------- transforms

Box = tuple[float, float, float, float]  # (left, top, right, bottom) in source pixels.


def _check_size(size) -> tuple[int, int]:
  if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
    size = (size, size)
  size = tuple(size)
  if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s >= 1 for s in size):
    raise ValueError(f"size must be a positive integer or (height, width), got {size!r}.")
  return int(size[0]), int(size[1])


@dataclasses.dataclass(frozen=True)
class EvalTransform:
  """Resize the shorter side to `resize`, then a centre crop of `size` (MLRC's evaluation).

  Attributes:
    size: (height, width) of the output (an int: square).
    resize: the shorter side after resizing; None: just large enough for the crop (the crop
      then spans the whole shorter side).
  """
  size: tuple[int, int]
  resize: int | None = None

  def __post_init__(self):
    object.__setattr__(self, "size", _check_size(self.size))
    if self.resize is not None and (isinstance(self.resize, bool) or self.resize < 1):
      raise ValueError(f"resize must be a positive integer or None, got {self.resize!r}.")
    if self.resize is not None and self.resize < max(self.size):
      raise ValueError(f"resize {self.resize} is smaller than the crop {self.size}: the "
                       "centre crop would not fit.")

  @property
  def random(self) -> bool:
    return False

  def crop(self, width: int, height: int, rng=None) -> tuple[Box, bool]:
    """The source box of the crop of a `width` x `height` image, and whether to flip it."""
    del rng
    out_height, out_width = self.size
    if self.resize is None:
      scale = max(out_height / height, out_width / width)
    else:
      scale = self.resize / min(width, height)
    crop_width, crop_height = out_width / scale, out_height / scale
    left, top = (width - crop_width) / 2, (height - crop_height) / 2
    return (left, top, left + crop_width, top + crop_height), False


@dataclasses.dataclass(frozen=True)
class TrainTransform:
  """A random resized crop, then a left-right flip with probability 1/2 (MLRC's training).

  Attributes:
    size: (height, width) of the output (an int: square).
    scale: range of the crop's area as a fraction of the image's.
    ratio: range of the crop's aspect ratio (width / height), drawn log-uniformly.
    random_crop: False: no random crop, the evaluation transform's centre crop instead.
    flip: mirror left-right with probability 1/2.
    resize: the evaluation resize used when `random_crop` is False.
  """
  size: tuple[int, int]
  scale: tuple[float, float] = DEFAULT_SCALE
  ratio: tuple[float, float] = DEFAULT_RATIO
  random_crop: bool = True
  flip: bool = True
  resize: int | None = None

  def __post_init__(self):
    object.__setattr__(self, "size", _check_size(self.size))
    scale, ratio = tuple(self.scale), tuple(self.ratio)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
      raise ValueError(f"scale must be (low, high) with 0 < low <= high <= 1, got {scale!r}.")
    if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
      raise ValueError(f"ratio must be (low, high) with 0 < low <= high, got {ratio!r}.")
    object.__setattr__(self, "scale", scale)
    object.__setattr__(self, "ratio", ratio)
    EvalTransform(self.size, self.resize)  # Checks resize against size.

  @property
  def random(self) -> bool:
    return self.random_crop or self.flip

  def crop_box(self, width: int, height: int, rng: np.random.Generator) -> Box:
    """A random box of `scale` x the area and aspect ratio in `ratio` (torchvision's rule).

    Up to 10 draws of (area, log aspect ratio) are tried; the first box that fits the image
    is placed uniformly at random. If none fits, the largest centred box whose aspect ratio
    is clamped to `ratio`.
    """
    area = width * height
    log_low, log_high = math.log(self.ratio[0]), math.log(self.ratio[1])
    for _ in range(_CROP_ATTEMPTS):
      target_area = area * rng.uniform(*self.scale)
      aspect = math.exp(rng.uniform(log_low, log_high))
      crop_width = round(math.sqrt(target_area * aspect))
      crop_height = round(math.sqrt(target_area / aspect))
      if 0 < crop_width <= width and 0 < crop_height <= height:
        top = int(rng.integers(0, height - crop_height + 1))
        left = int(rng.integers(0, width - crop_width + 1))
        return (left, top, left + crop_width, top + crop_height)
    image_ratio = width / height
    if image_ratio < self.ratio[0]:
      crop_width, crop_height = width, round(width / self.ratio[0])
    elif image_ratio > self.ratio[1]:
      crop_width, crop_height = round(height * self.ratio[1]), height
    else:
      crop_width, crop_height = width, height
    left, top = (width - crop_width) // 2, (height - crop_height) // 2
    return (left, top, left + crop_width, top + crop_height)

  def crop(self, width: int, height: int, rng: np.random.Generator) -> tuple[Box, bool]:
    """The source box of the crop of a `width` x `height` image, and whether to flip it."""
    if rng is None:
      raise ValueError("TrainTransform needs a random generator per image.")
    if self.random_crop:
      box = self.crop_box(width, height, rng)
    else:
      box, _ = EvalTransform(self.size, self.resize).crop(width, height)
    flip = bool(rng.random() < 0.5) if self.flip else False
    return box, flip


Transform = EvalTransform | TrainTransform


def image_rng(seed: int, *keys: int) -> np.random.Generator:
  """The generator of one image's random transform, e.g. `image_rng(seed, epoch, step, i)`."""
  return np.random.default_rng([int(seed), *map(int, keys)])


# ----------------------------------------------------------------------------- decoding


def _to_channels(image: Image.Image, channels: int) -> Image.Image:
  """Any PIL mode -> "L" (channels=1) or "RGB" (channels=3); transparency over white."""
  if image.mode.startswith("I"):
    # 16-bit grey (PNG), which PIL opens as "I;16" or "I": keep the top 8 of the 16 bits
    # (PIL's convert("L") would clip everything above 255 to white).
    values = np.asarray(image).astype(np.int64)
    image = Image.fromarray((np.clip(values, 0, 65535) >> 8).astype(np.uint8))
  elif image.mode == "F":
    image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8))
  if image.mode == "P" and "transparency" in image.info:
    image = image.convert("RGBA")
  if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
    image = image.convert("RGBA")
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    image = Image.alpha_composite(background, image)
  return image.convert("L" if channels == 1 else "RGB")


def _orientation(image: Image.Image) -> int:
  """The EXIF orientation (1-8; 1: as stored), read from the header only."""
  try:
    orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
  except _UNREADABLE_ERRORS:  # A broken EXIF block: use the image as it is stored.
    return 1
  return orientation if orientation in range(1, 9) else 1


def load_image(path: str, transform: Transform, *, channels: int = 3,
               rng: np.random.Generator | None = None) -> np.ndarray:
  """Decodes one image file through `transform`.

  Args:
    path: the image file.
    transform: `EvalTransform` or `TrainTransform`.
    channels: 1 (grey) or 3 (RGB).
    rng: the image's generator (`image_rng`); needed by a random transform.

  Returns:
    uint8 [height, width, channels] with (height, width) = `transform.size`.

  Raises:
    UnreadableImageError: the file is missing, unreadable, truncated or not an image.
  """
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 or 3, got {channels!r}.")
  out_height, out_width = transform.size
  try:
    image = Image.open(path)
  except _UNREADABLE_ERRORS as error:
    raise _unreadable(path, error) from error
  with image:
    try:
      orientation = _orientation(image)
      width, height = image.size
    except _UNREADABLE_ERRORS as error:
      raise _unreadable(path, error) from error
    if orientation in _TRANSPOSED_ORIENTATIONS:
      width, height = height, width
    box, flip = transform.crop(width, height, rng)
    # A JPEG can be decoded at 1/2, 1/4 or 1/8 scale: ask for the smallest scale that still
    # gives the crop at least the output's resolution.
    reduction = min(1.0, max(out_width / max(box[2] - box[0], 1e-9),
                             out_height / max(box[3] - box[1], 1e-9)))
    try:
      if reduction < 1.0 and image.format == "JPEG":
        stored = image.size
        image.draft(image.mode, (math.ceil(stored[0] * reduction),
                                 math.ceil(stored[1] * reduction)))
      image.load()
      decoded = ImageOps.exif_transpose(image) if orientation != 1 else image
      decoded = _to_channels(decoded, channels)
    except _UNREADABLE_ERRORS as error:
      raise _unreadable(path, error) from error
  # The box in the decoded image's pixels (a reduced decode is smaller), inside the image
  # (float rounding can put a full-size box a hair outside it).
  decoded_width, decoded_height = decoded.size
  factor_x, factor_y = decoded_width / width, decoded_height / height
  scaled_box = (min(max(box[0] * factor_x, 0.0), decoded_width),
                min(max(box[1] * factor_y, 0.0), decoded_height),
                min(max(box[2] * factor_x, 0.0), decoded_width),
                min(max(box[3] * factor_y, 0.0), decoded_height))
  result = decoded.resize((out_width, out_height), Image.Resampling.BILINEAR, box=scaled_box)
  if flip:
    result = result.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  return np.asarray(result, dtype=np.uint8).reshape(out_height, out_width, channels)


def _unreadable(path, error: BaseException) -> UnreadableImageError:
  reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
  return UnreadableImageError(os.fspath(path), reason)


def _check_policy(on_error: str) -> str:
  if on_error not in UNREADABLE_POLICIES:
    raise ValueError(f"Unknown unreadable-file policy {on_error!r}; expected one of "
                     f"{', '.join(UNREADABLE_POLICIES)}.")
  return on_error


def normalize(images: np.ndarray, name: str) -> np.ndarray:
  """Applies normalisation `name` of `NORMALIZATIONS` to float images in [0, 1], in place.

  Args:
    images: float32 [N, H, W, C].
    name: "none" or "imagenet" (then C must be 3).
  """
  if name not in NORMALIZATIONS:
    raise ValueError(f"Unknown normalization {name!r}; expected one of "
                     f"{', '.join(sorted(NORMALIZATIONS))}.")
  stats = NORMALIZATIONS[name]
  if stats is None:
    return images
  mean, std = (np.asarray(v, np.float32) for v in stats)
  if images.shape[-1] != mean.size:
    raise ValueError(f"normalization {name!r} needs {mean.size} channels, the images have "
                     f"{images.shape[-1]}.")
  images -= mean
  images /= std
  return images


def default_workers() -> int:
  """One decoding thread per core this process may use."""
  return max(1, len(os.sched_getaffinity(0)))


class ImageDecoder:
  """Decodes batches of image files in a thread pool, under an unreadable-file policy.

  Args:
    channels: 1 (grey) or 3 (RGB).
    workers: decoding threads (default `default_workers()`).
    on_error: "error" or "skip" (see the module docstring).
  Attributes:
    unreadable: {path: reason} of the files found unreadable so far (with "skip").
  """

  def __init__(self, channels: int = 3, workers: int | None = None, on_error: str = "error"):
    if channels not in (1, 3):
      raise ValueError(f"channels must be 1 or 3, got {channels!r}.")
    self.channels = channels
    self.on_error = _check_policy(on_error)
    self.workers = default_workers() if workers in (None, 0) else int(workers)
    if self.workers < 1:
      raise ValueError(f"workers must be >= 1, got {workers!r}.")
    self.unreadable: dict[str, str] = {}
    self._lock = threading.Lock()
    self._pool = concurrent.futures.ThreadPoolExecutor(self.workers,
                                                       thread_name_prefix="image-decoder")

  def close(self) -> None:
    self._pool.shutdown(wait=True, cancel_futures=True)

  def __enter__(self) -> "ImageDecoder":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def _record(self, error: UnreadableImageError) -> None:
    with self._lock:
      if error.path in self.unreadable:
        return
      self.unreadable[error.path] = str(error)
    warnings.warn(f"skipping unreadable image {error}", stacklevel=3)

  def _decode_into(self, out: np.ndarray, index: int, path: str, transform: Transform,
                   rng) -> bool:
    """Decodes `path` into out[index] (float32 in [0, 1]); False if unreadable ("skip")."""
    try:
      pixels = load_image(path, transform, channels=self.channels, rng=rng)
    except UnreadableImageError as error:
      if self.on_error == "error":
        raise
      self._record(error)
      out[index] = 0.0
      return False
    np.multiply(pixels, np.float32(1 / 255), out=out[index], casting="unsafe")
    return True

  def submit(self, paths: Sequence[str], transform: Transform,
             rngs: Sequence[np.random.Generator] | None = None) -> "PendingBatch":
    """Starts decoding `paths` into one float32 batch [N, H, W, C]; returns at once."""
    if transform.random and rngs is None:
      raise ValueError("a random transform needs one generator per image (rngs).")
    if rngs is not None and len(rngs) != len(paths):
      raise ValueError(f"{len(paths)} paths but {len(rngs)} generators.")
    out = np.empty((len(paths), *transform.size, self.channels), np.float32)
    futures = [self._pool.submit(self._decode_into, out, index, path, transform,
                                 None if rngs is None else rngs[index])
               for index, path in enumerate(paths)]
    return PendingBatch(out, futures)

  def decode(self, paths: Sequence[str], transform: Transform,
             rngs: Sequence[np.random.Generator] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decodes `paths` into float32 [N, H, W, C] in [0, 1] and a bool [N] of readable files.

    Raises:
      UnreadableImageError: with the "error" policy, the first unreadable file.
    """
    return self.submit(paths, transform, rngs).result()

  @staticmethod
  def prefetch(jobs: Iterable[Callable[[], "PendingBatch"]], depth: int = 2) -> Iterator:
    """Yields the `result()` of each job's batch while up to `depth` later ones decode.

    Args:
      jobs: zero-argument callables that start a batch and return it, e.g.
        `functools.partial(decoder.submit, paths, transform, rngs)`; called in order, each
        only when its batch is `depth` batches ahead of the one being consumed.
      depth: batches decoding ahead of the one being consumed (>= 1).

    Yields:
      (images, readable) of each job, in order.
    """
    if depth < 1:
      raise ValueError(f"depth must be >= 1, got {depth!r}.")
    pending = deque()
    try:
      for job in jobs:
        pending.append(job())
        if len(pending) > depth:
          yield pending.popleft().result()
      while pending:
        yield pending.popleft().result()
    finally:
      for batch in pending:  # Stopped early: do not decode what nobody will read.
        batch.cancel()


class PendingBatch:
  """A batch being decoded: `result()` waits and returns (images, readable)."""

  def __init__(self, out: np.ndarray, futures: list):
    self._out = out
    self._futures = futures

  def result(self) -> tuple[np.ndarray, np.ndarray]:
    readable = np.fromiter((future.result() for future in self._futures), bool,
                           count=len(self._futures))
    return self._out, readable

  def cancel(self) -> None:
    for future in self._futures:
      future.cancel()


def decode_images(paths: Sequence[str], transform: Transform, *, channels: int = 3,
                  rngs: Sequence[np.random.Generator] | None = None,
                  workers: int | None = None) -> np.ndarray:
  """Decodes image files into one float32 batch [N, H, W, C] in [0, 1] (a one-off decoder).

  Raises:
    UnreadableImageError: naming the first file that cannot be read.
  """
  with ImageDecoder(channels, workers) as decoder:
    images, _ = decoder.decode(list(paths), transform, rngs)
  return images


# ----------------------------------------------------------------------------- sources


@dataclasses.dataclass(frozen=True, eq=False)
class ImageFileSource:
  """A random-access source of (path, label) items: `source[i] -> {"path", "label"}`.

  Attributes:
    paths: [N] file paths (str).
    labels: int32 [N].
  """
  paths: np.ndarray
  labels: np.ndarray

  def __post_init__(self):
    paths = np.asarray(self.paths, dtype=object)
    labels = np.asarray(self.labels)
    if paths.ndim != 1 or labels.ndim != 1 or len(paths) != len(labels):
      raise ValueError(f"paths and labels must be [N] of the same length, got {paths.shape} "
                       f"and {labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer):
      raise TypeError(f"labels must be integers, got dtype {labels.dtype}.")
    object.__setattr__(self, "paths", paths)
    object.__setattr__(self, "labels", labels.astype(np.int32))

  @classmethod
  def from_items(cls, items: Iterable[tuple[str, int]]) -> "ImageFileSource":
    items = list(items)
    return cls(np.asarray([path for path, _ in items], dtype=object),
               np.asarray([label for _, label in items], dtype=np.int64).reshape(-1))

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict:
    return {"path": self.paths[index], "label": int(self.labels[index])}


class ImageFiles:
  """A lazily decoded float32 image array [N, H, W, C] over image files.

  It stands where a dataset split holds its images: `shape`, `dtype`, `ndim`, `len` are those
  of the decoded array, and `images[i]`, `images[i:j]` or `images[index_array]` decode those
  images through the evaluation transform. Training batches decode through a random transform
  with `submit`. `take(indices)` is the lazy subset (no decoding).

  With the "skip" policy an unreadable file decodes as zeros; its index is then listed in
  `unreadable_indices()` (evaluation leaves them out), and `replacement(i)` names the next
  readable item of the same label (training uses it instead).

  Args:
    paths: [N] file paths.
    labels: [N] int labels (used to find replacements).
    decoder: the shared `ImageDecoder` (threads, channels, policy).
    eval_transform: the transform of `__getitem__`.
  """

  def __init__(self, paths, labels, decoder: ImageDecoder, eval_transform: EvalTransform):
    self.source = ImageFileSource(paths, labels)
    self.decoder = decoder
    self.eval_transform = eval_transform

  # The array interface of the decoded images.
  @property
  def shape(self) -> tuple[int, int, int, int]:
    return (len(self.source), *self.eval_transform.size, self.decoder.channels)

  @property
  def dtype(self) -> np.dtype:
    return np.dtype(np.float32)

  @property
  def ndim(self) -> int:
    return 4

  def __len__(self) -> int:
    return len(self.source)

  def __repr__(self) -> str:
    return f"ImageFiles({len(self)} files, decoded as float32 {self.shape})"

  def _indices(self, key) -> np.ndarray:
    return np.arange(len(self))[key]

  def __getitem__(self, key) -> np.ndarray:
    indices = self._indices(key)
    if np.ndim(indices) == 0:
      return self.decode(np.asarray([indices]))[0]
    return self.decode(indices)

  def take(self, indices) -> "ImageFiles":
    """The lazy subset of the items at `indices` (int array or slice)."""
    indices = self._indices(indices)
    return ImageFiles(self.source.paths[indices], self.source.labels[indices], self.decoder,
                      self.eval_transform)

  def concatenate(self, other: "ImageFiles") -> "ImageFiles":
    """The items of `self` then those of `other` (same decoder and transform)."""
    return ImageFiles(np.concatenate([self.source.paths, other.source.paths]),
                      np.concatenate([self.source.labels, other.source.labels]),
                      self.decoder, self.eval_transform)

  def submit(self, indices, transform: Transform | None = None,
             rngs: Sequence[np.random.Generator] | None = None) -> PendingBatch:
    """Starts decoding the items at `indices` (default transform: evaluation)."""
    indices = np.asarray(indices).reshape(-1)
    return self.decoder.submit(list(self.source.paths[indices]),
                               transform or self.eval_transform, rngs)

  def decode(self, indices, transform: Transform | None = None,
             rngs: Sequence[np.random.Generator] | None = None) -> np.ndarray:
    """float32 [len(indices), H, W, C] in [0, 1] of the items at `indices`."""
    images, _ = self.submit(indices, transform, rngs).result()
    return images

  def unreadable_indices(self) -> np.ndarray:
    """Indices of the items found unreadable so far (int64, sorted)."""
    if not self.decoder.unreadable:
      return np.zeros(0, np.int64)
    bad = np.fromiter((path in self.decoder.unreadable for path in self.source.paths), bool,
                      count=len(self))
    return np.flatnonzero(bad)

  def replacement(self, index: int) -> int | None:
    """The next item of the same label after `index` (cyclically) whose file has not been
    found unreadable; None when every item of the label is unreadable."""
    labels, paths = self.source.labels, self.source.paths
    same = np.flatnonzero(labels == labels[index])
    start = int(np.searchsorted(same, index))
    for offset in range(1, len(same) + 1):
      candidate = int(same[(start + offset) % len(same)])
      if paths[candidate] not in self.decoder.unreadable:
        return candidate
    return None


def is_lazy(images) -> bool:
  """Whether `images` is an `ImageFiles` (decoded on demand) rather than a NumPy array."""
  return isinstance(images, ImageFiles)


def take(images, indices):
  """`images[indices]` for an array, the lazy subset for `ImageFiles`."""
  return images.take(indices) if is_lazy(images) else images[indices]


def concatenate(first, second):
  """The images of `first` then `second`: arrays or `ImageFiles`, both of one kind."""
  if is_lazy(first) != is_lazy(second):
    raise TypeError("cannot concatenate image files and an in-memory array.")
  return first.concatenate(second) if is_lazy(first) else np.concatenate([first, second])


def list_image_files(folder: str) -> list[str]:
  """The image files (by `IMAGE_EXTENSIONS`) directly in `folder`, sorted by name."""
  return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
                and not name.startswith("."))


__all__ = [
    "EvalTransform",
    "IMAGE_EXTENSIONS",
    "ImageDecoder",
    "ImageFileSource",
    "ImageFiles",
    "NORMALIZATIONS",
    "PendingBatch",
    "TrainTransform",
    "UNREADABLE_POLICIES",
    "UnreadableImageError",
    "concatenate",
    "decode_images",
    "default_workers",
    "image_rng",
    "is_lazy",
    "list_image_files",
    "load_image",
    "normalize",
    "take",
]
