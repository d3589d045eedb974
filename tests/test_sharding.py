"""Mining over a batch sharded across devices gives the single-device result.

Runs in a subprocess because the number of (fake CPU) devices is fixed when JAX starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, numpy as np
    import tripletjax as tj
    from tripletjax import train

    assert jax.device_count() == 4
    mesh = train.make_mesh()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = rng.integers(0, 5, 64).astype(np.int32)
    xs, ys = train.shard_batch(mesh, x, y)
    assert len(xs.sharding.device_set) == 4
    for fn in [tj.triplet_semihard_loss, tj.triplet_hard_loss, tj.batch_all_triplet_loss,
               tj.contrastive_loss]:
      step = jax.jit(jax.value_and_grad(fn, argnums=1))
      (single_loss, single_grad), (sharded_loss, sharded_grad) = step(y, x), step(ys, xs)
      np.testing.assert_allclose(float(sharded_loss), float(single_loss), rtol=1e-6)
      np.testing.assert_allclose(np.asarray(sharded_grad), np.asarray(single_grad), atol=1e-6)
    print("OK")
""")


def test_losses_over_a_sharded_global_batch_match_one_device():
  result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith("OK")
