"""NaN in, NaN out: the guard every loss puts around its inputs and its result.

A miner treats a NaN distance as some number, so a loss could come out finite from a batch
with a NaN row while its gradient is NaN. Every loss therefore checks that its inputs are
finite (one `isfinite` reduction, over every device of a mesh axis), makes its gradient NaN
in every row when they are not, and selects NaN for its value and floating-point statistics.
On finite inputs values and gradients are bit-for-bit what they are without the guard.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tripletjax.mining import shards


def poison_unless_finite(*arrays, axis_name: str | None = None):
  """`(arrays, finite)`: the arrays unchanged, but their gradients NaN unless all are finite.

  `finite` says whether every entry of every array is finite (on every device of `axis_name`);
  the losses select NaN for their value when it is not (`finish`), because a miner need not
  turn a NaN distance into a NaN loss, and this makes the gradient of every input NaN as well
  (a `where` alone would give zeros). The forward values are untouched, so finite inputs give
  the same bits as without it.
  """
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in arrays]))
  finite = shards.all_devices(finite, axis_name)
  return tuple(nan_gradient_unless(a, finite) for a in arrays), finite


@jax.custom_jvp
def nan_gradient_unless(x, finite):
  """The identity, whose derivative is NaN unless `finite` (a traced bool)."""
  del finite
  return x


@nan_gradient_unless.defjvp
def nan_gradient_unless_jvp(primals, tangents):
  x, finite = primals
  scale = jnp.where(finite, 1.0, jnp.nan).astype(x.dtype)
  # The barrier keeps XLA from fusing the scaling into the gradient's computation, which could
  # change its rounding.
  return x, jax.lax.optimization_barrier(tangents[0]) * scale


def safe_mean(total, count):
  """total / count, and 0 (never NaN) when count is 0."""
  count = jnp.asarray(count, jnp.float32)
  return jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)


def finish(loss, dtype, stats, return_stats, finite):
  """The loss in `dtype`, and the stats; NaN loss and float stats unless the inputs were finite."""
  nan_unless_finite = lambda x: jnp.where(finite, x, jnp.nan)
  loss = nan_unless_finite(loss).astype(dtype)
  if not return_stats:
    return loss
  return loss, {name: nan_unless_finite(value) if jnp.issubdtype(value.dtype, jnp.floating)
                else value for name, value in stats.items()}
