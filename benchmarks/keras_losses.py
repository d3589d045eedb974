"""tripletjax.keras' TripletSemiHardLoss on each Keras backend, beside tripletjax's function.

    python -m benchmarks.keras_losses                      # every backend, B = 256 ... 4096
    python -m benchmarks.keras_losses --backends torch --batch-sizes 512,2048
    python -m benchmarks.keras_losses --memory             # peak memory at B = 2048, D = 256

Times the loss's forward and backward pass (the gradient with respect to the embeddings) on
random embeddings [B, D] and labels of B / 8 classes, the median of several calls after a
warm-up: on the JAX backend under `jax.jit` (what `model.fit` compiles), on TensorFlow under
`tf.function`, on PyTorch eagerly (Keras' default there), and tripletjax's
`triplet_semihard_loss` under `jax.jit` for comparison. Keras picks its backend once per
process, so each backend runs in its own subprocess (`--worker`).

`--memory` runs forward and backward once at B = 2048, D = 256 in a fresh subprocess per
backend and reports the growth of the process's peak resident memory (`ru_maxrss`) during that
call over what the inputs and a warm-up at B = 8 had used: the memory of the loss.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

import numpy as np

from benchmarks import timing

BACKENDS = ("jax", "tensorflow", "torch")


def _inputs(batch: int, dim: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, max(batch // 8, 2), batch).astype(np.int32)
  return labels, rng.normal(size=(batch, dim)).astype(np.float32)


def _keras_forward_backward(backend: str):
  """A function (labels, embeddings) -> None computing the Keras loss and its gradient."""
  from tripletjax import keras as tjk  # pylint: disable=import-outside-toplevel
  loss = tjk.TripletSemiHardLoss()
  if backend == "jax":
    import jax  # pylint: disable=import-outside-toplevel
    step = jax.jit(jax.value_and_grad(lambda x, y: loss(y, x)))
    return lambda y, x: jax.block_until_ready(step(x, y))
  if backend == "tensorflow":
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    @tf.function
    def step(x, y):
      with tf.GradientTape() as tape:
        tape.watch(x)
        value = loss(y, x)
      return value, tape.gradient(value, x)
    return lambda y, x: [t.numpy() for t in step(tf.constant(x), tf.constant(y))]
  import torch  # pylint: disable=import-outside-toplevel

  def step(y, x):
    tensor = torch.tensor(x, requires_grad=True)
    loss(torch.tensor(y), tensor).backward()
    return tensor.grad
  return step


def _tripletjax_forward_backward():
  import jax  # pylint: disable=import-outside-toplevel
  import tripletjax  # pylint: disable=import-outside-toplevel
  step = jax.jit(jax.value_and_grad(lambda x, y: tripletjax.triplet_semihard_loss(y, x)))
  return lambda y, x: jax.block_until_ready(step(x, y))


def _peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes.


def worker(backend: str, batch_sizes, dim: int, memory: bool) -> dict:
  """Runs in the subprocess whose KERAS_BACKEND is `backend`."""
  import keras  # pylint: disable=import-outside-toplevel
  assert keras.backend.backend() == backend, keras.backend.backend()
  step = _keras_forward_backward(backend)
  if memory:
    small, large = _inputs(8, dim), _inputs(batch_sizes[0], dim)
    step(*small)
    before = _peak_rss_bytes()
    step(*large)
    return {"backend": backend, "batch": batch_sizes[0], "dim": dim,
            "peak_growth_bytes": _peak_rss_bytes() - before}
  results = []
  for batch in batch_sizes:
    inputs = _inputs(batch, dim)
    seconds, _ = timing.time_calls_for(lambda: step(*inputs), min_time_s=2.0, max_repeats=10)
    row = {"backend": backend, "batch": batch, "dim": dim, "keras_s": seconds}
    if backend == "jax":
      reference_step = _tripletjax_forward_backward()
      row["tripletjax_s"], _ = timing.time_calls_for(lambda: reference_step(*inputs),
                                                      min_time_s=2.0, max_repeats=10)
    results.append(row)
    print(json.dumps(row), file=sys.stderr, flush=True)
  return {"rows": results}


def run_backend(backend: str, batch_sizes, dim: int, memory: bool) -> dict:
  environment = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
  command = [sys.executable, "-m", "benchmarks.keras_losses", "--worker", backend,
             "--batch-sizes", ",".join(map(str, batch_sizes)), "--dim", str(dim)]
  if memory:
    command.append("--memory")
  result = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
  if result.returncode:
    raise SystemExit(f"error: the {backend} worker failed:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--backends", default=",".join(BACKENDS))
  parser.add_argument("--batch-sizes", default=None,
                      help="comma-separated (default 256,...,4096; with --memory 2048)")
  parser.add_argument("--dim", type=int, default=None, help="default 128; with --memory 256")
  parser.add_argument("--memory", action="store_true")
  parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  default_batches = "2048" if args.memory else "256,512,1024,2048,4096"
  batch_sizes = [int(b) for b in (args.batch_sizes or default_batches).split(",")]
  dim = args.dim or (256 if args.memory else 128)
  if args.worker:
    print(json.dumps(worker(args.worker, batch_sizes, dim, args.memory)))
    return
  backends = args.backends.split(",")
  unknown = sorted(set(backends) - set(BACKENDS))
  if unknown:
    parser.exit(2, f"error: unknown backends {unknown}; expected some of {BACKENDS}\n")
  for backend in backends:
    result = run_backend(backend, batch_sizes, dim, args.memory)
    if args.memory:
      print(f"{backend}: B={result['batch']} D={result['dim']}: peak memory growth "
            f"{result['peak_growth_bytes'] / 2**20:.0f} MiB")
      continue
    for row in result["rows"]:
      reference = (f", tripletjax {row['tripletjax_s'] * 1e3:.1f} ms"
                   if "tripletjax_s" in row else "")
      print(f"{backend}: B={row['batch']} D={row['dim']}: Keras loss "
            f"{row['keras_s'] * 1e3:.1f} ms{reference}")


if __name__ == "__main__":
  main()
