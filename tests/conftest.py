"""Test-session settings."""

import jax

# With partitionable threefry (JAX's default) XLA:CPU compiles every random draw of a model's
# initialisation separately, 2-5 s each; the classic threefry compiles ~10x faster. It only
# changes which random numbers are drawn, and the tests of sharded execution do not depend on it.
jax.config.update("jax_threefry_partitionable", False)
