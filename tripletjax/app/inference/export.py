"""A run's embedder serialised with `jax.export`: callable with JAX and NumPy alone.

`export_embedder(embedder, path)` writes

  * `path` (e.g. `embedder.jax`): the serialised function float32 [b, H, W, C] -> float32
    [b, E] (L2-normalised rows), its weights inside, the batch dimension b symbolic, lowered
    for the CPU and, where possible, CUDA. The model's own input normalisation (ImageNet
    statistics of a pretrained backbone) is inside; decoding and resizing are not;
  * `path` with `.json` for its extension: the input's shape, layout and preprocessing, the
    output, and the run and checkpoint it came from.

Loading it needs JAX, NumPy and flatbuffers (which `jax.export.deserialize` reads the file
with; JAX does not install it), neither flax nor tripletjax:

  import jax, numpy as np
  with open("embedder.jax", "rb") as f:
    embed = jax.export.deserialize(bytearray(f.read()))
  embeddings = np.asarray(embed.call(images))  # images: float32 [N, H, W, C] in [0, 1]
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tripletjax.app import errors

# Lowered for these platforms, in order of preference; those whose lowering fails here are
# left out (the metadata lists the ones the file holds).
PLATFORMS = ("cpu", "cuda")
LOADER = """import jax, numpy as np
with open("{file}", "rb") as f:
  embed = jax.export.deserialize(bytearray(f.read()))
embeddings = np.asarray(embed.call(images))  # float32 [N, {h}, {w}, {c}] in [0, 1] -> [N, {e}]
"""


def _embedding_function(embedder):
  """images [b, H, W, C] -> embeddings [b, E] of the embedder's model in evaluation mode, its
  state on one device (constants of the exported program)."""
  model = embedder.model
  model.eval()
  graphdef, state = nnx.split(model)
  state = jax.device_put(state, jax.devices()[0])

  def embed(images):
    return nnx.merge(graphdef, state)(images).embeddings
  return embed


def export_function(embedder) -> jax.export.Exported:
  """The embedder as a `jax.export.Exported` with a symbolic batch dimension."""
  height, width, channels = embedder.input_shape
  (batch,) = jax.export.symbolic_shape("b")
  spec = jax.ShapeDtypeStruct((batch, height, width, channels), jnp.float32)
  function = jax.jit(_embedding_function(embedder))
  try:
    return jax.export.export(function, platforms=PLATFORMS)(spec)
  except Exception:  # pylint: disable=broad-except
    # A platform this JAX cannot lower for (no CUDA lowering here): the CPU alone.
    return jax.export.export(function, platforms=PLATFORMS[:1])(spec)


def preprocessing(embedder) -> dict:
  """How images reach the training layout, for the metadata."""
  config = embedder.config
  height, width, channels = embedder.input_shape
  transform = embedder.eval_transform
  resize = (f"resize the shorter side to {transform.resize}, then" if transform.resize
            else "resize so the crop spans the shorter side, then")
  return {
      "decode": f"{'grey (L)' if channels == 1 else 'RGB'}, transparency over white, EXIF "
                "orientation applied",
      "crop": f"{resize} a centre crop of {height} x {width} (bilinear)",
      "scale": "uint8 / 255 -> float32 in [0, 1]",
      "inside_the_model": f"config.model.resnet.preprocess="
                          f"{config.model.resnet.preprocess!r} (the backbone's input "
                          "normalisation, if any, is in the exported function)",
  }


def export_embedder(embedder, path: str) -> dict:
  """Writes the exported embedder to `path` and its metadata to `path`'s .json; returns the
  metadata."""
  exported = export_function(embedder)
  try:
    serialized = exported.serialize()
  except ImportError as error:  # "Please install 'flatbuffers' ..."
    raise errors.MissingDependencyError(
        f"jax.export cannot write its file format here ({error})",
        "pip install flatbuffers (in the app extra)") from error
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "wb") as f:
    f.write(serialized)
  height, width, channels = embedder.input_shape
  meta = {
      "format": "jax.export",
      "file": os.path.basename(path),
      "input": {"shape": ["batch", height, width, channels], "dtype": "float32",
                "layout": "NHWC", "range": [0.0, 1.0]},
      "output": {"shape": ["batch", embedder.embedding_dim], "dtype": "float32",
                 "l2_normalised": True, "similarity": "cosine (dot product of rows)"},
      "preprocessing": preprocessing(embedder),
      "platforms": list(exported.platforms),
      "jax_version": jax.__version__,
      "run": embedder.describe(),
      "loader": LOADER.format(file=os.path.basename(path), h=height, w=width, c=channels,
                              e=embedder.embedding_dim),
  }
  with open(metadata_path(path), "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=2)
  return meta


def export_saved_model(embedder, directory: str) -> str:
  """Writes the embedder as a TensorFlow SavedModel (for TF Serving) to `directory`: its
  `serving_default` signature maps float32 [batch, H, W, C] to [batch, E]. Needs TensorFlow
  (`jax2tf` wraps the same StableHLO the `.jax` file holds)."""
  try:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from jax.experimental import jax2tf  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise errors.MissingDependencyError(
        f"--saved_model needs TensorFlow, which cannot be imported ({error})",
        "pip install tensorflow-cpu; the .jax export needs only JAX") from error
  height, width, channels = embedder.input_shape
  converted = jax2tf.convert(_embedding_function(embedder), with_gradient=False,
                             polymorphic_shapes=[f"(b, {height}, {width}, {channels})"])
  module = tf.Module()
  module.embed = tf.function(
      converted, autograph=False,
      input_signature=[tf.TensorSpec([None, height, width, channels], tf.float32)])
  tf.saved_model.save(module, directory, signatures={"serving_default": module.embed})
  return directory


def metadata_path(path: str) -> str:
  return os.path.splitext(path)[0] + ".json"


def check_roundtrip(embedder, path: str, images: np.ndarray) -> float:
  """The largest |exported - embedder| over `images`, the file read back."""
  with open(path, "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  return float(np.max(np.abs(np.asarray(exported.call(images)) - embedder(images))))
