"""Optimizers and learning-rate schedules by name: each builds, steps and schedules as named."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tripletjax.app.config import defaults
from tripletjax.app.step import optimizers

LEARNING_RATE, TOTAL_STEPS, WARMUP_STEPS = 0.1, 10, 4


def optimizer_config(**overrides):
  config = defaults.get_config().optimizer
  config.learning_rate = LEARNING_RATE
  config.warmup_steps = WARMUP_STEPS
  for key, value in overrides.items():
    config[key] = value
  return config


def run_steps(tx, params, gradients):
  """The parameters after one update per gradient, and the updates."""
  state = tx.init(params)
  updates_seen = []
  for gradient in gradients:
    updates, state = tx.update(gradient, state, params)
    params = optax.apply_updates(params, updates)
    updates_seen.append(updates)
  return params, updates_seen


PARAMS = {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array(0.5)}
GRADIENT = {"w": jnp.array([0.3, 0.0, -0.4]), "b": jnp.array(1.2)}


@pytest.mark.parametrize("schedule", sorted(optimizers.SCHEDULES))
@pytest.mark.parametrize("name", sorted(optimizers.OPTIMIZERS))
def test_every_optimizer_and_schedule_builds_and_steps(name, schedule):
  tx, learning_rate = optimizers.make_optimizer(
      optimizer_config(name=name, schedule=schedule), TOTAL_STEPS)
  params, _ = jax.jit(lambda p: run_steps(tx, p, [GRADIENT] * 3))(PARAMS)
  for key in PARAMS:
    assert np.all(np.isfinite(np.asarray(params[key]))), key
  # Every parameter with a gradient moved against it (the first step of warmup_cosine has a
  # learning rate of 0; the next ones do not).
  for index in (0, 2):
    moved = float(params["w"][index] - PARAMS["w"][index])
    assert moved * float(GRADIENT["w"][index]) < 0, (name, schedule, moved)
  assert float(params["b"]) < float(PARAMS["b"])
  assert float(learning_rate(1)) > 0


def test_schedules_follow_their_names():
  values = {name: [float(schedule(optimizer_config(schedule=name), TOTAL_STEPS)(step))
                   for step in range(TOTAL_STEPS + 1)]
            for name, schedule in optimizers.SCHEDULES.items()}
  np.testing.assert_allclose(values["constant"], LEARNING_RATE)
  cosine = values["cosine"]
  np.testing.assert_allclose(cosine[0], LEARNING_RATE)
  np.testing.assert_allclose(cosine[TOTAL_STEPS // 2], LEARNING_RATE / 2, rtol=1e-6)
  np.testing.assert_allclose(cosine[-1], 0.0, atol=1e-9)
  assert all(a > b for a, b in zip(cosine, cosine[1:]))
  warmup = values["warmup_cosine"]
  # Linear from 0 to the learning rate over the warmup steps, then a cosine down to 0.
  np.testing.assert_allclose(warmup[:WARMUP_STEPS + 1],
                             np.linspace(0.0, LEARNING_RATE, WARMUP_STEPS + 1), rtol=1e-6)
  assert all(a > b for a, b in zip(warmup[WARMUP_STEPS:], warmup[WARMUP_STEPS + 1:]))
  np.testing.assert_allclose(warmup[-1], 0.0, atol=1e-9)


def test_warmup_longer_than_the_run_is_cut_to_it():
  schedule = optimizers.SCHEDULES["warmup_cosine"](optimizer_config(warmup_steps=100), 5)
  np.testing.assert_allclose([float(schedule(step)) for step in range(5)],
                             np.linspace(0.0, LEARNING_RATE, 5), rtol=1e-6)
  for total_steps in (0, 1):  # Degenerate runs still give a schedule.
    for name, build in optimizers.SCHEDULES.items():
      assert np.isfinite(float(build(optimizer_config(), total_steps)(0))), name


def test_optimizers_apply_their_options():
  # sgd: plain momentum, v <- momentum * v + g, step -lr * v.
  tx, _ = optimizers.make_optimizer(optimizer_config(name="sgd", momentum=0.5), TOTAL_STEPS)
  _, (first, second) = run_steps(tx, PARAMS, [GRADIENT, GRADIENT])
  np.testing.assert_allclose(first["w"], -LEARNING_RATE * GRADIENT["w"], rtol=1e-6)
  np.testing.assert_allclose(second["w"], -LEARNING_RATE * 1.5 * GRADIENT["w"], rtol=1e-6)
  # adamw decays the weights even without a gradient; adam does not move them.
  zero = jax.tree.map(jnp.zeros_like, GRADIENT)
  tx, _ = optimizers.make_optimizer(optimizer_config(name="adamw", weight_decay=0.01),
                                    TOTAL_STEPS)
  (update,) = run_steps(tx, PARAMS, [zero])[1]
  np.testing.assert_allclose(update["w"], -LEARNING_RATE * 0.01 * PARAMS["w"], rtol=1e-6)
  tx, _ = optimizers.make_optimizer(optimizer_config(name="adam"), TOTAL_STEPS)
  (update,) = run_steps(tx, PARAMS, [zero])[1]
  np.testing.assert_array_equal(update["w"], 0.0)
  # adam's first step is -lr * sign(g) where g != 0.
  (update,) = run_steps(tx, PARAMS, [GRADIENT])[1]
  np.testing.assert_allclose(update["w"], -LEARNING_RATE * np.sign(GRADIENT["w"]), rtol=1e-4)


@pytest.mark.parametrize("clip_norm", [0.0, 1.0, 100.0])
def test_gradients_are_clipped_to_the_global_norm(clip_norm):
  tx, _ = optimizers.make_optimizer(
      optimizer_config(name="sgd", momentum=0.0, grad_clip_norm=clip_norm), TOTAL_STEPS)
  gradient = jax.tree.map(lambda g: 10.0 * g, GRADIENT)
  norm = float(optax.tree.norm(gradient))
  assert 1.0 < norm < 100.0
  (update,) = run_steps(tx, PARAMS, [gradient])[1]
  # 0 disables clipping; a norm below the limit is left alone.
  scale = clip_norm / norm if 0 < clip_norm < norm else 1.0
  for key in gradient:
    np.testing.assert_allclose(update[key], -LEARNING_RATE * scale * gradient[key], rtol=1e-5)


@pytest.mark.parametrize("key, name, kind, valid", [
    ("name", "lamb", "optimizer", "['adam', 'adamw', 'rmsprop', 'sgd']"),
    ("schedule", "linear", "schedule", "['constant', 'cosine', 'warmup_cosine']"),
])
def test_unknown_names_are_errors_listing_the_valid_ones(key, name, kind, valid):
  with pytest.raises(ValueError) as error:
    optimizers.make_optimizer(optimizer_config(**{key: name}), TOTAL_STEPS)
  assert str(error.value) == f"Unknown {kind} {name!r}; expected one of {valid}."


def test_rmsprop_matches_pytorchs_update_rule():
  # "A Metric Learning Reality Check" trains with PyTorch's RMSprop.
  config = optimizer_config(name="rmsprop", learning_rate=0.01, schedule="constant",
                           weight_decay=0.1, momentum=0.9, grad_clip_norm=0.0)
  tx, _ = optimizers.make_optimizer(config, total_steps=10)
  params = jnp.array([1.0, -2.0])
  state = tx.init(params)
  # torch.optim.RMSprop(alpha=0.99, eps=1e-8, weight_decay=0.1, momentum=0.9), step by step:
  # g += wd p; v = alpha v + (1 - alpha) g^2; buf = momentum buf + g / (sqrt(v) + eps);
  # p -= lr buf.
  expected, square_avg, buffer = np.array([1.0, -2.0]), np.zeros(2), np.zeros(2)
  for step in range(1, 4):
    gradient = np.array([0.3, -0.1]) * step
    updates, state = tx.update(jnp.asarray(gradient), state, params)
    params = optax.apply_updates(params, updates)
    g = gradient + 0.1 * expected
    square_avg = 0.99 * square_avg + 0.01 * g * g
    buffer = 0.9 * buffer + g / (np.sqrt(square_avg) + 1e-8)
    expected = expected - 0.01 * buffer
    np.testing.assert_allclose(np.asarray(params), expected, rtol=1e-6)
