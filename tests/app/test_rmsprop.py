"""The rmsprop optimizer is PyTorch's RMSprop, as "A Metric Learning Reality Check" uses it."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from tripletjax.app import optimizers


def test_rmsprop_matches_pytorchs_update_rule():
  config = ml_collections.ConfigDict(dict(
      name="rmsprop", learning_rate=0.01, schedule="constant", warmup_steps=0,
      weight_decay=0.1, momentum=0.9, grad_clip_norm=0.0))
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
