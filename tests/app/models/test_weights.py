"""Pretrained backbones: torchvision and Keras ResNets converted into the project's ResNet give
the same features as the originals, on the same images, in evaluation mode."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from tests import conftest

from tripletjax.app import errors
from tripletjax.app import models
from tripletjax.app.models import weights

# An odd size: the stem gives 38x38 (even), the max-pool 19 (odd), then 10, 5 and 3, so the
# padding and rounding of every stride-2 layer is exercised at both parities.
IMAGE_SIZE = 75
TOLERANCE = 1e-4


def _images(count: int = 2) -> np.ndarray:
  return np.random.default_rng(0).random((count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)


def _flax_features(name: str, path: str, images: np.ndarray) -> np.ndarray:
  options = weights.model_options(path, {})
  # Abstract parameters (no random initialisation, which takes seconds on CPU): the backbone
  # gets every value from the file, and the head is not used.
  model = nnx.eval_shape(lambda: models.create_model(
      name, input_shape=images.shape[1:], embedding_dim=8, rngs=nnx.Rngs(0), **options))
  weights.load_backbone(model, path)
  head = nnx.state(model)  # Still abstract outside the backbone: zeros, to be jit's input.
  nnx.update(model, jax.tree.map(
      lambda x: np.zeros(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else x, head))
  model.eval()
  return np.asarray(_features(model, images))


@nnx.jit
def _features(model, images):
  return model.features(images)


# --- torchvision ---------------------------------------------------------------------------------


def _torchvision_model(torchvision, name: str, seed: int):
  """A torchvision ResNet with random weights (no download) and non-trivial BatchNorm state:
  random affine parameters (small on each residual branch's last BatchNorm, as in trained
  networks, so that features stay of order 1) and running statistics accumulated by train-mode
  passes over normalised random images."""
  import torch
  torch.manual_seed(seed)
  model = getattr(torchvision.models, name)(weights=None)
  with torch.no_grad():
    for module_name, module in model.named_modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        last = module_name.endswith(("bn3", "downsample.1")) or (
            name != "resnet50" and module_name.endswith("bn2"))
        if last:
          module.weight.uniform_(0.05, 0.3)
        else:
          module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.2, 0.2)
        module.momentum = None  # Cumulative averages over the passes below.
    model.train()
    model(_torch_input(torch, np.random.default_rng(seed + 100).random(
        (4, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)))
  model.eval()
  model.fc = torch.nn.Identity()  # Its output is then the pooled features.
  return model


def _torch_input(torch, images: np.ndarray):
  """What torchvision's ImageNet weights expect: normalised by the ImageNet mean and std."""
  mean = np.array([0.485, 0.456, 0.406], np.float32)
  std = np.array([0.229, 0.224, 0.225], np.float32)
  return torch.from_numpy(((images - mean) / std).transpose(0, 3, 1, 2).copy())


@pytest.fixture(scope="module")
def torchvision_resnet50(tmp_path_factory):
  torchvision = conftest.import_torchvision()
  import torch
  model = _torchvision_model(torchvision, "resnet50", seed=0)
  path = str(tmp_path_factory.mktemp("weights") / "resnet50.pth")
  torch.save(model.state_dict(), path)
  with torch.no_grad():
    reference = model(_torch_input(torch, _images())).numpy()
  return path, model, reference


def test_torchvision_resnet50_features_equal_the_converted_models(torchvision_resnet50):
  path, _, reference = torchvision_resnet50
  # The batch statistics made the features of order 1, so the tolerance is a strict one.
  assert 0.1 < np.abs(reference).max() < 10
  features = _flax_features("resnet50", path, _images())
  np.testing.assert_allclose(features, reference, rtol=0, atol=TOLERANCE)


def test_safetensors_file_converts_like_the_pth_file(torchvision_resnet50, tmp_path):
  from safetensors.torch import save_file  # torch is there: the fixture imported it.
  path, model, _ = torchvision_resnet50
  safetensors_path = str(tmp_path / "resnet50.safetensors")
  save_file({name: value.contiguous() for name, value in model.state_dict().items()},
            safetensors_path)
  block_index = {(stage, block): i for i, (stage, block) in enumerate(
      (s, b) for s, n in enumerate((3, 4, 6, 3), start=1) for b in range(1, n + 1))}
  from_pth = weights.convert(path, block_index)
  from_safetensors = weights.convert(safetensors_path, block_index)
  assert sorted(from_pth) == sorted(from_safetensors)
  for key, value in from_pth.items():
    np.testing.assert_array_equal(from_safetensors[key], value, err_msg=key)


def test_torchvision_resnet18_features_and_npz_conversion(torchvision, tmp_path, capsys):
  """Basic blocks too, and the command that converts a file into the project's .npz."""
  import torch
  model = _torchvision_model(torchvision, "resnet18", seed=1)
  path = str(tmp_path / "resnet18.pth")
  torch.save(model.state_dict(), path)
  with torch.no_grad():
    reference = model(_torch_input(torch, _images())).numpy()
  assert 0.1 < np.abs(reference).max() < 10
  np.testing.assert_allclose(_flax_features("resnet18", path, _images()), reference,
                             rtol=0, atol=TOLERANCE)
  npz_path = str(tmp_path / "resnet18.npz")
  assert weights.main([path, npz_path]) == 0
  assert "resnet18" in capsys.readouterr().out
  np.testing.assert_allclose(_flax_features("resnet18", npz_path, _images()), reference,
                             rtol=0, atol=TOLERANCE)


# --- Keras -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras_resnet50(tmp_path_factory):
  """Keras' ResNet50 (random weights, random BatchNorm state and conv biases), saved as the
  legacy .h5 that keras.applications downloads and as a Keras 3 .keras file."""
  keras = conftest.import_keras()
  import h5py
  from keras.src.legacy.saving import legacy_h5_format
  model = keras.applications.ResNet50(weights=None, include_top=False, pooling="avg",
                                      input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
  rng = np.random.default_rng(1)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      gamma, beta, mean, variance = (np.asarray(w) for w in layer.get_weights())
      last = layer.name.endswith(("_3_bn", "_0_bn"))
      layer.set_weights([rng.uniform(0.05, 0.3, gamma.shape) if last
                         else rng.uniform(0.5, 1.5, gamma.shape),
                         rng.uniform(-0.2, 0.2, beta.shape), rng.normal(0, 0.5, mean.shape),
                         rng.uniform(0.5, 2.0, variance.shape)])
    elif isinstance(layer, keras.layers.Conv2D):
      kernel, bias = layer.get_weights()
      layer.set_weights([kernel, rng.normal(0, 0.1, bias.shape)])
  folder = tmp_path_factory.mktemp("keras")
  h5_path, keras_path = str(folder / "resnet50_notop.h5"), str(folder / "resnet50.keras")
  with h5py.File(h5_path, "w") as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model)
  model.save(keras_path)
  images = _images()
  reference = np.asarray(model.predict(
      keras.applications.resnet.preprocess_input(images * 255.0), verbose=0))
  return h5_path, keras_path, reference


def test_keras_resnet50_features_equal_the_converted_models(keras_resnet50):
  h5_path, keras_path, reference = keras_resnet50
  assert 0.1 < np.abs(reference).max() < 10
  np.testing.assert_allclose(_flax_features("resnet50", h5_path, _images()), reference,
                             rtol=0, atol=TOLERANCE)
  # The .keras file names layers by class and rank; it must give the very same tensors.
  block_index = {}
  from_h5 = weights.convert(h5_path, block_index)
  from_keras = weights.convert(keras_path, block_index)
  assert sorted(from_h5) == sorted(from_keras)
  for key, value in from_h5.items():
    np.testing.assert_array_equal(from_keras[key], value, err_msg=key)


# --- errors --------------------------------------------------------------------------------------


def test_a_file_of_another_architecture_is_an_error_naming_the_shapes(torchvision_resnet50):
  path, _, _ = torchvision_resnet50
  options = weights.model_options(path, {})
  model = nnx.eval_shape(lambda: models.create_model(
      "resnet18", input_shape=(64, 64, 3), embedding_dim=8, rngs=nnx.Rngs(0), **options))
  with pytest.raises(weights.WeightsError, match=r"does not fit the model.*shape.*differ"):
    weights.load_backbone(model, path)
  gray = nnx.eval_shape(lambda: models.create_model(
      "resnet50", input_shape=(64, 64, 1), embedding_dim=8, rngs=nnx.Rngs(0), **options))
  with pytest.raises(weights.WeightsError, match=r"stem_conv/kernel: file \(7, 7, 3, 64\)"):
    weights.load_backbone(gray, path)


def test_bad_weights_files_are_user_errors(tmp_path):
  with pytest.raises(errors.DataNotFoundError, match="no such weights file"):
    weights.model_options(str(tmp_path / "missing.pth"), {})
  unknown = tmp_path / "weights.bin"
  unknown.write_bytes(b"x")
  with pytest.raises(weights.WeightsError, match=r"unknown weights file type '.bin'"):
    weights.model_options(str(unknown), {})
  corrupt = tmp_path / "corrupt.safetensors"
  corrupt.write_bytes(b"not a safetensors file")
  with pytest.raises(weights.WeightsError, match="not a readable safetensors file"):
    weights.convert(str(corrupt), {})
  corrupt_h5 = tmp_path / "corrupt.h5"
  corrupt_h5.write_bytes(b"not hdf5")
  with pytest.raises(weights.WeightsError, match="not a readable Keras weights file"):
    weights.convert(str(corrupt_h5), {})


def test_a_style_that_contradicts_the_file_is_a_config_error(tmp_path):
  path = tmp_path / "resnet.safetensors"
  path.write_bytes(b"")
  with pytest.raises(errors.ConfigError, match="style='keras'.*torchvision"):
    weights.model_options(str(path), {"style": "keras"})
  assert weights.model_options(str(path), {"stem": "imagenet"}) == {
      "style": "torchvision", "preprocess": "imagenet", "stem": "imagenet"}
