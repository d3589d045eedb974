"""Optax optimizers and learning-rate schedules by name (`config.optimizer`), and the update
that leaves the state as it was when a step is not finite."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

# name -> schedule(optimizer config, total steps).
SCHEDULES: dict[str, Callable[[ml_collections.ConfigDict, int], optax.Schedule]] = {
    "constant": lambda opt, total_steps: optax.constant_schedule(opt.learning_rate),
    "cosine": lambda opt, total_steps: optax.cosine_decay_schedule(
        opt.learning_rate, max(total_steps, 1)),
    "warmup_cosine": lambda opt, total_steps: optax.warmup_cosine_decay_schedule(
        0.0, opt.learning_rate, min(opt.warmup_steps, max(total_steps - 1, 0)),
        max(total_steps, 1)),
}

def _rmsprop(opt: ml_collections.ConfigDict, schedule: optax.Schedule):
  """PyTorch's RMSprop (what "A Metric Learning Reality Check" trains with): squared-gradient
  average with decay 0.99, eps outside the square root, L2 weight decay added to the
  gradient, heavy-ball momentum."""
  return optax.chain(
      optax.add_decayed_weights(opt.weight_decay),
      optax.rmsprop(schedule, decay=0.99, eps=1e-8, eps_in_sqrt=False,
                    momentum=opt.momentum or None))


# name -> optimizer(optimizer config, schedule).
OPTIMIZERS: dict[str, Callable[[ml_collections.ConfigDict, optax.Schedule],
                               optax.GradientTransformation]] = {
    "adam": lambda opt, schedule: optax.adam(schedule),
    "adamw": lambda opt, schedule: optax.adamw(schedule, weight_decay=opt.weight_decay),
    "sgd": lambda opt, schedule: optax.sgd(schedule, momentum=opt.momentum),
    "rmsprop": _rmsprop,
}


def make_optimizer(optimizer_config: ml_collections.ConfigDict, total_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The Optax optimizer of `config.optimizer` and its learning-rate schedule.

  Raises:
    ValueError: for a name that is not in `OPTIMIZERS` or `SCHEDULES`.
  """
  opt = optimizer_config
  for kind, registry, name in (("optimizer", OPTIMIZERS, opt.name),
                               ("schedule", SCHEDULES, opt.schedule)):
    if name not in registry:
      raise ValueError(f"Unknown {kind} {name!r}; expected one of {sorted(registry)}.")
  schedule = SCHEDULES[opt.schedule](opt, total_steps)
  tx = OPTIMIZERS[opt.name](opt, schedule)
  if opt.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx, schedule


def state_before_update(model: nnx.Module, optimizer: nnx.Optimizer):
  """A copy of what `update_if_finite` may put back: parameters, BatchNorm statistics and
  optimizer state (not the RNG streams). Take it before the forward pass, which updates the
  BatchNorm statistics."""
  return jax.tree.map(jnp.asarray, nnx.state((model, optimizer), nnx.Not(nnx.RngState)))


def update_if_finite(model: nnx.Module, optimizer: nnx.Optimizer, gradient, loss: jax.Array,
                     before) -> jax.Array:
  """One optimizer update of `model` by `gradient`, unless `loss` or `gradient` is not
  finite: then the parameters, the optimizer state and the BatchNorm statistics are put back
  to `before` (`state_before_update`) and the dropout streams still advance. The training
  loop stops on such a step or skips it (`config.optimizer.skip_nonfinite`).

  Returns:
    A scalar bool: whether the step was finite (and applied).
  """
  optimizer.update(model, gradient)
  finite = jnp.isfinite(loss) & jnp.all(jnp.stack(
      [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(gradient)]))
  after = nnx.state((model, optimizer), nnx.Not(nnx.RngState))
  nnx.update((model, optimizer),
             jax.tree.map(lambda new, old: jnp.where(finite, new, old), after, before))
  return finite
