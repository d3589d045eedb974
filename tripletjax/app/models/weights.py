"""Pretrained ResNet backbones from local files: torchvision, Keras, or this project's `.npz`.

`config.model.weights` names a file; `load_backbone(model, path)` copies its backbone (stem and
stages, BatchNorm running statistics included) into a `ResNet` and leaves the head as
initialised. Nothing is downloaded: get the files once where there is network (see
docs/pretrained-backbones.md), e.g.

  * torchvision `state_dict`s (`.pth`, or `.safetensors`): torchvision's
    `ResNet50_Weights.IMAGENET1K_V2.url` (resnet50-11ad3fa6.pth), `ResNet18_Weights` ...;
    reading `.pth` needs `torch` (pickle), `.safetensors` only the small `safetensors` package;
  * Keras (`.h5` as `keras.applications.ResNet50(weights="imagenet", include_top=False)`
    downloads it, resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5; or a Keras 3 `.keras`
    model file): needs `h5py`;
  * `.npz`: this project's layout, written by
    `python -m tripletjax.app.models.weights SOURCE DEST.npz` from any of the above, which then
    loads with NumPy alone.

Each format implies the model's layout and input normalisation (`FORMATS`): torchvision's
ResNet v1.5 with ImageNet mean/std, Keras' ResNet v1 (conv biases, stride on the first 1x1)
with "caffe" preprocessing. `model_options` sets them when the config leaves them unset.
Every tensor is checked: a file of another depth, width, stem or layout is an error that says
what the file holds and what the model expects.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import zipfile
from typing import Any, Callable

import numpy as np
from flax import nnx

from tripletjax.app import errors
from tripletjax.app.config import checker
from tripletjax.app.models import resnet

# Keys of this project's layout are `nnx.state` paths joined by "/", e.g. "blocks/3/conv1/kernel";
# an `.npz` file also records the layout and preprocessing its weights expect.
NPZ_META_KEYS = ("__style__", "__preprocess__", "__stage_sizes__")
BACKBONE_ROOTS = ("stem_conv", "stem_norm", "blocks")

_TORCH_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
_KERAS_BN = {"gamma": "scale", "beta": "bias", "moving_mean": "mean", "moving_variance": "var"}


class WeightsError(errors.DataError):
  """A weights file that cannot be used for this model (wrong architecture, format, content)."""


# --- reading each format into {source name: array} ----------------------------------------------


def _read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # Optional: only `.pth` files need it.
  except ImportError as error:
    raise errors.MissingDependencyError(
        f"{path}: reading a PyTorch .pth file needs torch (pip install torch)",
        hint="or convert it once where torch is installed: python -m "
             "tripletjax.app.models.weights FILE.pth FILE.npz") from error
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as error:  # Pickle, zip and torch errors: all mean "not a state_dict".
    raise WeightsError(f"{path}: not a readable PyTorch state_dict ({_one_line(error)})") from None
  if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
    state = state["state_dict"]  # A training checkpoint that wraps the state_dict.
  if not isinstance(state, dict):
    raise WeightsError(f"{path}: holds a {type(state).__name__}, not a state_dict (a dict of "
                       "tensors); save model.state_dict(), not the model")
  return {name: value.detach().cpu().numpy() for name, value in state.items()
          if hasattr(value, "detach")}


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  try:
    from safetensors import numpy as safetensors_numpy
  except ImportError as error:
    raise errors.MissingDependencyError(
        f"{path}: reading .safetensors needs the safetensors package (pip install "
        "safetensors)") from error
  try:
    return dict(safetensors_numpy.load_file(path))
  except Exception as error:  # safetensors raises its own SafetensorError and OSErrors.
    raise WeightsError(f"{path}: not a readable safetensors file ({_one_line(error)})") from None


def _import_h5py(path: str):
  try:
    import h5py
  except ImportError as error:
    raise errors.MissingDependencyError(
        f"{path}: reading Keras weights needs h5py (pip install h5py)") from error
  return h5py


def _read_keras_legacy_group(group) -> dict[str, np.ndarray]:
  """Keras 2 / legacy H5 weights: attribute `layer_names`, one group per layer whose
  `weight_names` attribute lists "layer/kernel:0" style datasets."""
  arrays = {}
  for layer in group.attrs["layer_names"]:
    layer = layer.decode() if isinstance(layer, bytes) else str(layer)
    layer_group = group[layer]
    for weight in layer_group.attrs.get("weight_names", []):
      weight = weight.decode() if isinstance(weight, bytes) else str(weight)
      variable = weight.split("/")[-1].split(":")[0]
      arrays[f"{layer}/{variable}"] = np.asarray(layer_group[weight])
  return arrays


# The variables of a Keras 3 layer, in the order it saves them ("vars/0", "vars/1", ...).
_KERAS3_VARIABLES = {
    "Conv2D": ("kernel", "bias"),
    "Dense": ("kernel", "bias"),
    "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance"),
}


def _snake_case(name: str) -> str:
  return re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", name).lower().replace("2_d", "2d")


def _read_keras3(weights_h5, config: dict, path: str) -> dict[str, np.ndarray]:
  """A Keras 3 weights file names each layer by its class and rank among layers of that class
  ("conv2d_3"); the model's config gives the layers' names in that order."""
  layers = config.get("config", {}).get("layers")
  if not isinstance(layers, list):
    raise WeightsError(f"{path}: its config.json has no list of layers")
  arrays, seen = {}, {}
  for layer in layers:
    class_name, name = layer.get("class_name"), layer.get("config", {}).get("name")
    base = _snake_case(str(class_name))
    count = seen.get(base, 0)
    seen[base] = count + 1
    key = f"layers/{base}" + (f"_{count}" if count else "")
    if class_name not in _KERAS3_VARIABLES or key not in weights_h5:
      continue
    group = weights_h5[key].get("vars", {})
    for index, variable in enumerate(_KERAS3_VARIABLES[class_name]):
      if str(index) in group:
        arrays[f"{name}/{variable}"] = np.asarray(group[str(index)])
  return arrays


def _read_keras(path: str) -> dict[str, np.ndarray]:
  h5py = _import_h5py(path)
  try:
    if path.endswith(".keras"):
      with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
        weights_bytes = archive.read("model.weights.h5")
      with h5py.File(io.BytesIO(weights_bytes), "r") as weights_h5:
        return _read_keras3(weights_h5, config, path)
    with h5py.File(path, "r") as f:
      group = f["model_weights"] if "model_weights" in f else f  # A whole saved model.
      if "layer_names" in group.attrs:
        return _read_keras_legacy_group(group)
  except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
    raise WeightsError(f"{path}: not a readable Keras weights file ({_one_line(error)})") from None
  raise WeightsError(
      f"{path}: a Keras 3 .weights.h5 file, which names layers by class, not by name",
      hint="use the legacy .h5 that keras.applications downloads, or save the whole model as "
           ".keras (its config gives the layer names)")


def _read_npz(path: str) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as archive:
      return {name: archive[name] for name in archive.files}
  except (OSError, ValueError, zipfile.BadZipFile) as error:
    raise WeightsError(f"{path}: not a readable .npz file ({_one_line(error)})") from None


# --- mapping each layout's names to this project's -------------------------------------------


def _torchvision_name(name: str, block_index: dict) -> str | None:
  """"layer2.0.conv1.weight" -> "blocks/<i>/conv1/kernel"; None for names outside the backbone."""
  if name.endswith("num_batches_tracked") or name.startswith("fc."):
    return None
  if match := re.fullmatch(r"(conv1|bn1)\.(\w+)", name):
    layer, variable = match.groups()
    return f"stem_conv/{_conv_variable(variable)}" if layer == "conv1" else (
        f"stem_norm/{_TORCH_BN.get(variable, variable)}")
  if match := re.fullmatch(r"layer(\d+)\.(\d+)\.(conv\d|bn\d|downsample\.[01])\.(\w+)", name):
    stage, block, layer, variable = match.groups()
    prefix = _block_prefix(block_index, int(stage), int(block) + 1)
    if layer.startswith("conv"):
      return f"{prefix}/{layer}/{_conv_variable(variable)}"
    if layer.startswith("bn"):
      return f"{prefix}/norm{layer[2:]}/{_TORCH_BN.get(variable, variable)}"
    if layer == "downsample.0":
      return f"{prefix}/projection/conv/{_conv_variable(variable)}"
    return f"{prefix}/projection/norm/{_TORCH_BN.get(variable, variable)}"
  return name  # Unknown: reported as unexpected.


def _block_prefix(block_index: dict, stage: int, block: int) -> str:
  """"blocks/<index>" of block `block` of stage `stage` (both from 1), or "blocks/?S.B" for a
  block the model does not have (reported as unexpected)."""
  index = block_index.get((stage, block))
  return f"blocks/{index}" if index is not None else f"blocks/?{stage}.{block}"


def _conv_variable(variable: str) -> str:
  return {"weight": "kernel"}.get(variable, variable)


def _from_torchvision(arrays: dict[str, np.ndarray], block_index: dict) -> dict[str, np.ndarray]:
  converted = {}
  for name, value in arrays.items():
    target = _torchvision_name(name, block_index)
    if target is None:
      continue
    if target.endswith("/kernel") and value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)  # [O, I, H, W] -> [H, W, I, O].
    converted[target] = value
  return converted


def _keras_name(name: str, block_index: dict) -> str | None:
  """"conv3_block1_0_conv/kernel" -> "blocks/<i>/projection/conv/kernel"; None outside."""
  layer, _, variable = name.partition("/")
  if match := re.fullmatch(r"conv1_(conv|bn)", layer):
    kind = match.group(1)
    return (f"stem_conv/{variable}" if kind == "conv"
            else f"stem_norm/{_KERAS_BN.get(variable, variable)}")
  if match := re.fullmatch(r"conv(\d+)_block(\d+)_(\d)_(conv|bn)", layer):
    stage, block, position, kind = match.groups()
    prefix = _block_prefix(block_index, int(stage) - 1, int(block))
    module = "projection/" if position == "0" else ""
    if kind == "conv":
      return f"{prefix}/{module}{'conv' if module else 'conv' + position}/{variable}"
    norm = "norm" if module else f"norm{position}"
    return f"{prefix}/{module}{norm}/{_KERAS_BN.get(variable, variable)}"
  if layer.startswith(("predictions", "probs", "fc")):  # A classifier top.
    return None
  return name


def _from_keras(arrays: dict[str, np.ndarray], block_index: dict) -> dict[str, np.ndarray]:
  converted = {}
  for name, value in arrays.items():
    target = _keras_name(name, block_index)
    if target is not None:
      converted[target] = value
  return converted


def _from_npz(arrays: dict[str, np.ndarray], block_index: dict) -> dict[str, np.ndarray]:
  """This project's layout, its blocks re-indexed from the file's stage sizes."""
  if "__stage_sizes__" not in arrays:
    raise WeightsError("the .npz file lacks __stage_sizes__: it was not written by "
                       "`python -m tripletjax.app.models.weights`")
  positions = [(stage, block) for stage, size in enumerate(arrays["__stage_sizes__"], start=1)
               for block in range(1, int(size) + 1)]
  converted = {}
  for name, value in arrays.items():
    if name in NPZ_META_KEYS:
      continue
    if match := re.fullmatch(r"blocks/(\d+)/(.*)", name):
      index, rest = int(match.group(1)), match.group(2)
      if index >= len(positions):
        raise WeightsError(f"the .npz file's {name} is beyond its __stage_sizes__")
      name = f"{_block_prefix(block_index, *positions[index])}/{rest}"
    converted[name] = value
  return converted


# --- formats ---------------------------------------------------------------------------------


class Format:
  """A weights file format: how to read it, how its names map, what the model must be.

  Attributes:
    name: shown in messages.
    read: path -> {name in the file: array}.
    convert: (arrays, {(stage, block): index in model.blocks}) -> {project key: array}.
    style: the `ResNet` style its weights need (`resnet.STYLES`).
    preprocess: the input normalisation they were trained with (`resnet.PREPROCESSING`).
  """

  def __init__(self, name: str, read: Callable, convert: Callable, style: str | None,
               preprocess: str | None):
    self.name, self.read, self.convert = name, read, convert
    self.style, self.preprocess = style, preprocess


# By file extension.
FORMATS: dict[str, Format] = {
    ".pth": Format("torchvision state_dict", _read_torch, _from_torchvision, "torchvision",
                   "imagenet"),
    ".pt": Format("torchvision state_dict", _read_torch, _from_torchvision, "torchvision",
                  "imagenet"),
    ".safetensors": Format("torchvision state_dict", _read_safetensors, _from_torchvision,
                           "torchvision", "imagenet"),
    ".h5": Format("Keras weights", _read_keras, _from_keras, "keras", "caffe"),
    ".keras": Format("Keras model", _read_keras, _from_keras, "keras", "caffe"),
    ".npz": Format("tripletjax backbone", _read_npz, _from_npz, None, None),
}


def find_format(path: str) -> Format:
  """The `Format` of `path` by its extension; `WeightsError` listing the known ones."""
  extension = os.path.splitext(str(path))[1].lower()
  if extension not in FORMATS:
    raise WeightsError(f"{path}: unknown weights file type {extension or '(no extension)'!r}; "
                       f"expected one of {', '.join(sorted(FORMATS))}")
  return FORMATS[extension]


def _check_file(path: str) -> None:
  if not os.path.exists(path):
    raise errors.DataNotFoundError(
        f"no such weights file: {path}",
        hint="nothing is downloaded at run time; see docs/pretrained-backbones.md for "
             "where to get the files")
  if not os.path.isfile(path):
    raise WeightsError(f"{path}: not a file")


def _npz_meta(path: str) -> dict[str, str]:
  arrays = _read_npz(path)
  return {key.strip("_"): str(arrays[key]) for key in ("__style__", "__preprocess__")
          if key in arrays}


def model_options(path: str, options: dict[str, Any]) -> dict[str, Any]:
  """`options` for `models.create_model` completed for weights file `path`.

  Sets "style" and "preprocess" to the file's (unless set), and "stem" to "imagenet" (unless
  set): pretrained ResNets have the ImageNet stem. An explicit "style" that differs from the
  file's is an error.
  """
  _check_file(path)
  file_format = find_format(path)
  style, preprocess = file_format.style, file_format.preprocess
  if style is None:  # .npz: recorded in the file.
    meta = _npz_meta(path)
    style, preprocess = meta.get("style", "torchvision"), meta.get("preprocess", "none")
  if options.get("style") not in (None, style):
    raise errors.ConfigError(
        f"config.model.resnet.style={options['style']!r} does not match the weights file {path}, "
        f"which is a {file_format.name} of style {style!r}",
        hint="leave config.model.resnet.style=None to take the file's")
  completed = dict(options)
  completed["style"] = style
  completed.setdefault("preprocess", preprocess)
  completed.setdefault("stem", "imagenet")
  return completed


# --- loading into a model ----------------------------------------------------------------------


def _block_index(model) -> dict[tuple[int, int], int]:
  """{(stage, block) numbered from 1: index in model.blocks}."""
  index, result = 0, {}
  for stage, num_blocks in enumerate(model.stage_sizes, start=1):
    for block in range(1, num_blocks + 1):
      result[(stage, block)] = index
      index += 1
  return result


def _describe(converted: dict[str, np.ndarray]) -> str:
  """What backbone a converted file holds, e.g. "a 7x7 stem of 64 channels on 3 input
  channel(s), bottleneck blocks"."""
  stem = converted.get("stem_conv/kernel")
  parts = []
  if stem is not None:
    parts.append(f"a {stem.shape[0]}x{stem.shape[1]} stem of {stem.shape[-1]} channels "
                 f"on {stem.shape[2]} input channel(s)")
  bottleneck = any("/conv3/" in key for key in converted)
  parts.append("bottleneck blocks" if bottleneck else "basic blocks")
  return ", ".join(parts)


def convert(path: str, block_index: dict[tuple[int, int], int]) -> dict[str, np.ndarray]:
  """Reads weights file `path` into this project's layout.

  Args:
    path: the weights file.
    block_index: {(stage, block), both from 1: index in the model's `blocks`}; blocks not in
      it come back as "blocks/?S.B/...".

  Returns:
    {"stem_conv/kernel": array, "blocks/0/conv1/kernel": array, ...}: the backbone only.
  """
  _check_file(path)
  file_format = find_format(path)
  arrays = file_format.read(path)
  if not arrays:
    raise WeightsError(f"{path}: holds no weights")
  return file_format.convert(arrays, block_index)


def load_backbone(model, path: str) -> None:
  """Copies the backbone of weights file `path` into `model` (a `ResNet`), in place.

  Every backbone parameter and BatchNorm statistic of the model must be in the file with its
  shape; the file may hold nothing else but a classifier top. The head keeps its
  initialisation.

  Raises:
    WeightsError: a file that does not fit the model, naming the tensors that differ.
    errors.DataNotFoundError: no such file.
    errors.MissingDependencyError: the reader of the format is not installed.
  """
  if not hasattr(model, "stage_sizes"):
    raise errors.ConfigError(f"config.model.weights: pretrained weights load into ResNets only, "
                             f"not into {type(model).__name__}")
  converted = convert(path, _block_index(model))
  state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
  flat = {"/".join(str(part) for part in key): variable
          for key, variable in nnx.to_flat_state(state)}
  backbone = {key: variable for key, variable in flat.items()
              if key.split("/")[0] in BACKBONE_ROOTS}
  missing = sorted(set(backbone) - set(converted))
  unexpected = sorted(set(converted) - set(backbone))
  mismatched = [f"{key}: file {tuple(converted[key].shape)}, model "
                f"{tuple(backbone[key].get_value().shape)}"
                for key in sorted(set(backbone) & set(converted))
                if tuple(converted[key].shape) != tuple(backbone[key].get_value().shape)]
  if missing or unexpected or mismatched:
    problems = []
    if mismatched:
      problems.append(f"{len(mismatched)} shape(s) differ ({'; '.join(mismatched[:3])})")
    if missing:
      problems.append(f"{len(missing)} tensor(s) of the model are not in the file "
                      f"({', '.join(missing[:4])})")
    if unexpected:
      problems.append(f"{len(unexpected)} tensor(s) of the file have no place in the model "
                      f"({', '.join(unexpected[:4])})")
    raise WeightsError(
        f"{path} does not fit the model: {'; '.join(problems)}. The file holds "
        f"{_describe(converted)}; the model is a ResNet with stages {model.stage_sizes}, "
        f"style {model.style!r}, stem {model.stem!r}, {model.in_channels} input channel(s)",
        hint="pretrained ResNets need the matching config.model.name (resnet18/34/50), "
             "width=None (64), stem 'imagenet', 3-channel (RGB) images, and the file's style")
  for key, variable in backbone.items():
    value = converted[key]
    variable.set_value(np.asarray(value, dtype=variable.get_value().dtype))
  nnx.update(model, state)


def save_npz(model, path: str) -> None:
  """Writes `model`'s backbone to `path` in this project's `.npz` layout (with its style)."""
  state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
  arrays = {"/".join(str(part) for part in key): np.asarray(variable.get_value())
            for key, variable in nnx.to_flat_state(state)
            if str(key[0]) in BACKBONE_ROOTS}
  arrays["__style__"] = np.asarray(model.style)
  arrays["__preprocess__"] = np.asarray(model.preprocess)
  arrays["__stage_sizes__"] = np.asarray(model.stage_sizes, np.int64)
  with open(path, "wb") as f:
    np.savez(f, **arrays)


# Model names by (block type, stage sizes), to build the model a file holds when converting.
_ARCHITECTURES = {
    (False, (2, 2, 2, 2)): "resnet18",
    (False, (3, 4, 6, 3)): "resnet34",
    (True, (3, 4, 6, 3)): "resnet50",
}


def _architecture(path: str) -> str:
  """The model name ("resnet50", ...) of the backbone in weights file `path`."""
  stages: dict[int, int] = {}
  converted = convert(path, {})  # Every block comes back as "blocks/?S.B/...".
  for key in converted:
    if match := re.match(r"blocks/\?(\d+)\.(\d+)/", key):
      stage, block = int(match.group(1)), int(match.group(2))
      stages[stage] = max(stages.get(stage, 0), block)
  if not stages:
    raise WeightsError(f"{path}: holds no ResNet blocks (no 'layer1.0.conv1.weight' or "
                       "'conv2_block1_1_conv' tensors)")
  bottleneck = any("/conv3/" in key for key in converted)
  sizes = tuple(stages.get(stage, 0) for stage in range(1, max(stages) + 1))
  if (bottleneck, sizes) not in _ARCHITECTURES:
    raise WeightsError(f"{path}: a ResNet with stages {sizes} of "
                       f"{'bottleneck' if bottleneck else 'basic'} blocks, which is none of "
                       f"{', '.join(sorted(set(_ARCHITECTURES.values())))}")
  return _ARCHITECTURES[(bottleneck, sizes)]


def convert_file(source: str, destination: str, embedding_dim: int = 8) -> str:
  """Converts weights file `source` into this project's `.npz` at `destination`.

  Returns:
    The model name of the backbone ("resnet50", ...).
  """
  from tripletjax.app import models
  name = _architecture(source)
  options = model_options(source, {})
  # Abstract parameters: no random initialisation; the backbone's values come from the file.
  model = nnx.eval_shape(lambda: models.create_model(
      name, input_shape=(224, 224, 3), embedding_dim=embedding_dim, rngs=nnx.Rngs(0),
      **options))
  load_backbone(model, source)
  save_npz(model, destination)
  return name


def _one_line(error: BaseException) -> str:
  text = " ".join(str(error).split()) or type(error).__name__
  return text if len(text) <= 300 else text[:297] + "..."


def check_config(check: checker.Checker) -> None:
  """`config.model.weights`: a readable file of a known format, for a ResNet."""
  weights_path, model_name = check["model.weights"], check["model.name"]
  if weights_path is None:
    return
  if model_name not in resnet.ARCHITECTURES:
    check.fail("model.weights",
               f"pretrained weights load into ResNets ({', '.join(resnet.ARCHITECTURES)}), not "
               f"into {model_name!r}")
  if not isinstance(weights_path, str) or not os.path.isfile(weights_path):
    check.fail("model.weights", "no such file",
               "nothing is downloaded at run time; docs/pretrained-backbones.md says "
               "where to get the files")
  try:
    find_format(weights_path)
  except errors.UserError as error:
    raise errors.ConfigError(f"config.model.weights={weights_path!r}: {error}") from None


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m tripletjax.app.models.weights",
      description="Convert a torchvision (.pth, .safetensors) or Keras (.h5, .keras) ResNet "
                  "into tripletjax's .npz backbone (which then loads with NumPy alone).")
  parser.add_argument("source", help="the weights file to convert")
  parser.add_argument("destination", help="the .npz file to write")
  args = parser.parse_args(argv)
  try:
    if not args.destination.endswith(".npz"):
      raise errors.ConfigError(f"{args.destination}: the destination must end in .npz")
    name = convert_file(args.source, args.destination)
  except errors.UserError as error:
    print(f"error: {_one_line(error)}", file=sys.stderr)
    if error.hint:
      print(f"hint: {error.hint}", file=sys.stderr)
    return 2
  print(f"wrote {args.destination}: the {name} backbone of {args.source}; train with "
        f"--config.model.name={name} --config.model.weights={args.destination}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
