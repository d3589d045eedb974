"""The three-tower network and freezing: distances against NumPy; frozen parameters and their
BatchNorm statistics bit-identical after training steps, with no optimizer state."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from flax import nnx

from tripletjax import reference
from tripletjax.app import models
from tripletjax.app import tasks
from tripletjax.app.config import defaults
from tripletjax.app.devices import mesh as mesh_lib
from tripletjax.app.models import resnet
from tripletjax.app.models.siamese import SiameseNetwork
from tripletjax.app.step import train_step


def _images(count: int, seed: int, size: int = 16) -> np.ndarray:
  return np.random.default_rng(seed).random((count, size, size, 3), dtype=np.float32)


def test_three_towers_share_one_network_and_distances_match_numpy():
  model = resnet.ResNet((16, 16, 3), stage_sizes=(1, 1), width=4, embedding_dim=6, head="mlp",
                        rngs=nnx.Rngs(0))
  model.eval()
  anchor, positive, negative = (_images(3, seed) for seed in (1, 2, 3))
  siamese = SiameseNetwork(model)
  d_ap, d_an = nnx.jit(lambda network, a, p, n: network(a, p, n))(
      siamese, anchor, positive, negative)
  # Each tower alone, as three separate networks with the same weights would compute them.
  embed = nnx.jit(lambda network, x: network(x).embeddings)
  towers = [np.asarray(embed(model, x), np.float64) for x in (anchor, positive, negative)]
  np.testing.assert_allclose(d_ap, np.sum((towers[0] - towers[1]) ** 2, axis=1), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(d_an, np.sum((towers[0] - towers[2]) ** 2, axis=1), rtol=1e-5,
                             atol=1e-6)
  assert np.all(np.asarray(d_an) > 0)  # Different images: a non-degenerate check.
  # The training loss of such a batch (stacked anchors, positives, negatives) is the seed's.
  stacked = np.concatenate(towers).astype(np.float32)
  loss, stats = tasks.pairs._triplet_batch_loss(np.zeros(9, np.int32), stacked, margin=0.5)
  assert float(loss) == pytest.approx(reference.triplet_loss(*towers, margin=0.5), rel=1e-5)
  assert float(stats["triplet_accuracy"]) == pytest.approx(
      np.mean(np.asarray(d_ap) < np.asarray(d_an)))


def test_part_names_and_what_freezing_before_each_one_freezes():
  names = resnet.part_names((2, 1))
  assert names == ["stem", "stage1", "stage1.block1", "stage1.block2", "stage2",
                   "stage2.block1", "head"]
  model = resnet.ResNet((16, 16, 3), stage_sizes=(2, 1), width=4, embedding_dim=4,
                        freeze_before="stage1.block2", rngs=nnx.Rngs(0))
  assert model.is_frozen(("stem_conv", "kernel")) and model.is_frozen(("blocks", 0, "conv1"))
  assert not model.is_frozen(("blocks", 1, "conv1")) and not model.is_frozen(("dense", "kernel"))
  with pytest.raises(ValueError, match=r"Unknown ResNet part 'stage3'.*stage2.block1, head"):
    resnet.ResNet((16, 16, 3), stage_sizes=(2, 1), width=4, freeze_before="stage3",
                  rngs=nnx.Rngs(0))


def _flat(state) -> dict:
  """{"blocks/0/conv1/kernel": array, ...} of an NNX state."""
  return {"/".join(str(getattr(part, "key", getattr(part, "idx", part))) for part in path):
          np.array(value)
          for path, value in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(state))[0]}


def _path(key: str) -> tuple:
  return tuple(int(part) if part.isdigit() else part for part in key.split("/"))


def test_frozen_parameters_get_no_optimizer_state_and_stay_bit_identical(monkeypatch):
  # A two-stage ResNet registered for the test: every code path of freezing, compiled faster
  # than ResNet-18.
  monkeypatch.setitem(models.MODELS, "tiny_resnet", models.ModelSpec(
      lambda **kwargs: resnet.ResNet(stage_sizes=(2, 1), **kwargs),
      models.MODELS["resnet18"].options, "resnet"))
  config = defaults.get_config()
  config.model.name = "tiny_resnet"
  config.model.resnet.width = 4
  config.model.embedding_dim = 8
  config.model.resnet.head = "mlp"
  config.model.resnet.freeze_before = "stage1.block2"  # The stem and stage1's first block.
  config.optimizer.learning_rate = 1e-2
  mesh = mesh_lib.make_mesh()
  loss_fn = functools.partial(tasks.pairs._triplet_batch_loss, margin=0.5)
  trainer = train_step.build_trainer(config, (16, 16, 3), 3, mesh, loss_fn=loss_fn)
  model = trainer.model
  params = _flat(nnx.state(model, nnx.Param))
  stats = _flat(nnx.state(model, nnx.BatchStat))
  frozen = {key for key in params if key.startswith(("stem_", "blocks/0/"))}
  assert frozen and frozen == {key for key in params if model.is_frozen(_path(key))}

  # No optimizer state for a frozen parameter; Adam's two moments for every other one.
  optimizer_keys = list(_flat(nnx.state(trainer.optimizer)))
  for key in params:
    holders = [k for k in optimizer_keys if k.endswith("/" + key)]
    assert (len(holders) == 0) if key in frozen else (len(holders) == 2), (key, holders)

  labels = np.zeros(12, np.int32)
  model.train()
  for step in range(3):
    images, labels_ = mesh_lib.shard_batch(mesh, _images(12, seed=10 + step), labels)
    metrics = trainer.train_step(model, trainer.optimizer, images, labels_)
    assert int(metrics["nonfinite"]) == 0
  params_after = _flat(nnx.state(model, nnx.Param))
  stats_after = _flat(nnx.state(model, nnx.BatchStat))
  for key in params:
    if key in frozen:
      assert np.array_equal(params_after[key], params[key]), f"frozen {key} changed"
    else:
      assert not np.array_equal(params_after[key], params[key]), f"trainable {key} unchanged"
  for key in stats:
    if model.is_frozen(_path(key)):
      assert np.array_equal(stats_after[key], stats[key]), f"frozen statistics {key} changed"
    else:
      assert not np.array_equal(stats_after[key], stats[key]), f"statistics {key} unchanged"


def test_without_freezing_every_parameter_is_trainable():
  model = nnx.eval_shape(lambda: models.create_model(
      "resnet18", input_shape=(16, 16, 3), embedding_dim=4, rngs=nnx.Rngs(0), width=2))
  assert models.trainable_filter(model) is nnx.Param
