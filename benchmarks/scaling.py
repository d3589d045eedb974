"""Scaling over devices: the mined loss and the train step on 1, 2, 4, 8 devices, per scope.

For every device count N and mining scope (`tripletjax.sharded.MINING_SCOPES`: "global" =
each device mines its rows against the gathered batch, "replicated" = every device mines the
whole batch, "local" = each device mines its rows alone) it measures, in a child process that
has N devices:

  * the loss alone: `jax.value_and_grad` of the sharded loss of B x D random embeddings
    (jit-compiled; median of several calls), with the compiled program's per-device memory
    (XLA's `memory_analysis`: temporaries and total) and its largest array (per device, from
    the optimised HLO: `benchmarks.compiled`);
  * the train step (`benchmarks.small_training`: hsu_cnn with BatchNorm on 28 x 28 x 1 random
    images, the Fashion-MNIST config's model): median step time, images/s and the compiled
    step's per-device temporary memory.

On a machine without an accelerator the N devices are virtual CPU devices
(--xla_force_host_platform_device_count=N) that share the machine's cores: times there show
the cost of the collectives and of the replicated work, not a speed-up; per-device memory and
the largest array per device are the point. With accelerators, N runs over the first N devices.

Usage:
  python -m benchmarks.scaling                          # N = 1, 2, 4, 8; B = 1024, D = 128
  python -m benchmarks.scaling --devices 1 8 --batch-size 2048 --no-train
  python -m benchmarks.scaling --out /tmp/scaling.json

Prints a markdown table and writes everything to --out (default
benchmarks/results/scaling.json, rewritten after every device count).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import timing

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results" / "scaling.json"
SCOPES = ("global", "replicated", "local")
# The models' options in the train step: the Fashion-MNIST config's (BatchNorm, no dropout)
# for hsu_cnn, no dropout for the others.
MODEL_OPTIONS = {"hsu_cnn": {"batch_norm": True, "dropout_rate": 0.0},
                 "tfa_cnn": {"dropout_rate": 0.0}}
DASH = "—"


def loss_case(mesh, scope: str, args) -> dict:
  """The sharded loss alone, forward and backward, on one B x D batch."""
  import jax
  import numpy as np

  import tripletjax
  from benchmarks import compiled as compiled_lib
  from benchmarks import small_training

  rng = np.random.default_rng(0)
  labels = rng.integers(0, args.classes, args.batch_size).astype(np.int32)
  embeddings = rng.standard_normal((args.batch_size, args.dim)).astype(np.float32)
  labels, embeddings = small_training.shard(mesh, labels, embeddings)
  loss = tripletjax.MINED_LOSSES[args.loss]
  options = {"mining_backend": args.mining_backend} if loss.sorts_rows else {}
  sharded = tripletjax.sharded_loss(functools.partial(loss.fn, margin=args.margin, **options),
                                    mesh, scope=scope)
  function = jax.jit(jax.value_and_grad(lambda x, y: sharded(y, x)))
  start = time.perf_counter()
  compiled = function.lower(embeddings, labels).compile()
  case = {"compile_s": time.perf_counter() - start}
  text = compiled.as_text()
  case["memory"] = compiled_lib.memory_mb(compiled)
  case["largest_array"], case["largest_array_elements"] = compiled_lib.largest_array(text)
  case["full_square_arrays"] = compiled_lib.arrays_with_at_least(
      text, args.batch_size * args.batch_size)
  value, _ = jax.block_until_ready(compiled(embeddings, labels))
  case["loss"] = float(value)
  median, seconds = timing.time_calls(
      lambda: jax.block_until_ready(compiled(embeddings, labels)), args.repeats)
  case["ms"], case["runs_ms"] = 1e3 * median, [1e3 * s for s in seconds]
  return case


def train_case(mesh, scope: str, args) -> dict:
  """The train step of `small_training` on random images."""
  import jax
  import numpy as np

  from benchmarks import compiled as compiled_lib
  from benchmarks import small_training

  rng = np.random.default_rng(1)
  images = rng.random((args.train_batch_size, *args.image_shape), dtype=np.float32)
  labels = rng.integers(0, args.classes, args.train_batch_size).astype(np.int32)
  images, labels = small_training.shard(mesh, images, labels)
  trainer = small_training.build(mesh, input_shape=args.image_shape, model_name=args.model,
                                 model_options=MODEL_OPTIONS.get(args.model, {}),
                                 loss_name=args.loss, margin=args.margin, scope=scope,
                                 mining_backend=args.mining_backend)
  start = time.perf_counter()
  compiled = trainer.step.lower(trainer.model, trainer.optimizer, images, labels).compile()
  case = {"compile_s": time.perf_counter() - start,
          "memory": compiled_lib.memory_mb(compiled)}
  step = lambda: jax.block_until_ready(
      trainer.step(trainer.model, trainer.optimizer, images, labels))
  median, seconds = timing.time_calls(step, args.repeats)
  case["ms"], case["runs_ms"] = 1e3 * median, [1e3 * s for s in seconds]
  case["images_per_s"] = args.train_batch_size / median
  return case


def child_main(num_devices: int, args) -> None:
  """Every scope on `num_devices` devices; prints one JSON line per finished case."""
  import jax

  from benchmarks import small_training

  platform = jax.devices()[0].platform
  if num_devices > jax.device_count():
    print("CASE " + json.dumps({"devices": num_devices, "scope": None, "kind": "child",
                                "error": f"only {jax.device_count()} {platform} devices"}))
    return
  mesh = small_training.make_mesh(num_devices)
  for scope in args.scopes:
    for kind, run in (("loss", loss_case), ("train", train_case)):
      if kind == "train" and args.no_train:
        continue
      case = {"devices": num_devices, "scope": scope, "kind": kind, "platform": platform,
              "load_average_1min": os.getloadavg()[0]}
      try:
        case.update(run(mesh, scope, args))
      except Exception as error:  # pylint: disable=broad-except  # Recorded, the rest runs.
        case["error"] = f"{type(error).__name__}: {error}"[:2000]
      print("CASE " + json.dumps(case), flush=True)


def run_device_count(num_devices: int, args, argv: list[str]) -> list[dict]:
  """Runs `child_main` in a fresh process with `num_devices` devices; its cases (partial ones
  too when it times out or fails, with an error case saying so)."""
  environment = dict(os.environ)
  environment.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  flags = environment.get("XLA_FLAGS", "")
  environment["XLA_FLAGS"] = (
      f"{flags} --xla_force_host_platform_device_count={num_devices}").strip()
  environment["PYTHONPATH"] = os.pathsep.join(
      filter(None, [str(REPO), environment.get("PYTHONPATH")]))
  command = [sys.executable, "-m", "benchmarks.scaling", *argv, "--child", str(num_devices)]
  try:
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                               env=environment, timeout=args.child_timeout)
    stdout, failure = completed.stdout, (
        None if completed.returncode == 0
        else f"child exited with {completed.returncode}: {completed.stderr[-1500:]}")
  except subprocess.TimeoutExpired as error:
    stdout = error.stdout.decode() if isinstance(error.stdout, bytes) else (error.stdout or "")
    failure = f"child timed out after {args.child_timeout:.0f} s"
  cases = [json.loads(line[len("CASE "):]) for line in stdout.splitlines()
           if line.startswith("CASE ")]
  if failure:
    cases.append({"devices": num_devices, "scope": None, "kind": "child", "error": failure})
  return cases


def _format(value, digits: int = 1) -> str:
  return DASH if value is None else f"{value:.{digits}f}"


def markdown_table(cases: list[dict]) -> str:
  """One row per (devices, scope): the loss alone and the train step."""
  rows = {}
  for case in cases:
    if case.get("scope") is not None:
      rows.setdefault((case["devices"], case["scope"]), {})[case["kind"]] = case
  lines = [
      "| devices | scope | loss fwd+bwd ms | loss temp MB / device | largest array / device "
      "| train step ms | images/s | step temp MB / device |",
      "| ---: | --- | ---: | ---: | --- | ---: | ---: | ---: |",
  ]
  for (devices, scope), kinds in sorted(rows.items(),
                                        key=lambda item: (item[0][0], SCOPES.index(item[0][1]))):
    loss, train = kinds.get("loss", {}), kinds.get("train", {})
    lines.append(
        f"| {devices} | {scope} | {_format(loss.get('ms'))} "
        f"| {_format((loss.get('memory') or {}).get('temp_mb'))} "
        f"| {loss.get('largest_array', loss.get('error', DASH)[:60])} "
        f"| {_format(train.get('ms'))} | {_format(train.get('images_per_s'), 0)} "
        f"| {_format((train.get('memory') or {}).get('temp_mb'))} |")
  errors = [case for case in cases if "error" in case]
  for case in errors:
    lines.append(f"\nError ({case['devices']} devices, {case.get('scope')}, {case['kind']}): "
                 f"{case['error'][:300]}")
  return "\n".join(lines)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      prog="python -m benchmarks.scaling", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--devices", type=int, nargs="+",
                      help="Device counts; default 1, 2, 4, 8 virtual CPU devices, or the "
                           "powers of two up to the number of accelerators.")
  parser.add_argument("--scopes", nargs="+", choices=SCOPES, default=list(SCOPES))
  parser.add_argument("--loss", default="semihard",
                      choices=("semihard", "hard", "batch_all", "contrastive"))
  parser.add_argument("--mining-backend", default="auto",
                      help="mining_backend of a sorting loss (tripletjax.mining.backend).")
  parser.add_argument("--batch-size", type=int, default=1024, help="B of the loss alone.")
  parser.add_argument("--dim", type=int, default=128, help="D of the loss alone.")
  parser.add_argument("--classes", type=int, default=10)
  parser.add_argument("--margin", type=float, default=0.2)
  parser.add_argument("--train-batch-size", type=int, default=256)
  parser.add_argument("--image-shape", type=int, nargs=3, default=[28, 28, 1])
  parser.add_argument("--model", default="hsu_cnn")
  parser.add_argument("--no-train", action="store_true", help="Time the loss alone.")
  parser.add_argument("--repeats", type=int, default=5, help="Timed calls per case.")
  parser.add_argument("--child-timeout", type=float, default=1200.0,
                      help="Seconds allowed to each device count's process.")
  parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
  parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def run(args, argv: list[str]) -> dict:
  """Runs every device count (one child process each) and writes `args.out` as it goes."""
  import jax

  from benchmarks import miners  # For the machine description.

  if args.devices is None:
    count = 8 if jax.default_backend() == "cpu" else jax.device_count()
    args.devices = [2**k for k in range(count.bit_length()) if 2**k <= count]

  results = {
      "benchmark": "tripletjax scaling over devices: mining scopes, loss and train step",
      "started": datetime.datetime.now().isoformat(timespec="seconds"),
      "command": " ".join(["python", "-m", "benchmarks.scaling", *argv]),
      "config": {key: (str(value) if isinstance(value, Path) else value)
                 for key, value in vars(args).items() if key != "child"},
      "machine": miners.machine_info(),
      "load_average_start": os.getloadavg(),
      "cases": [],
  }
  args.out.parent.mkdir(parents=True, exist_ok=True)
  for num_devices in args.devices:
    start = time.perf_counter()
    cases = run_device_count(num_devices, args, argv)
    results["cases"].extend(cases)
    print(f"[{num_devices} device(s), {time.perf_counter() - start:.0f} s] "
          + "; ".join(f"{c.get('scope')} {c['kind']} "
                      + (f"{c['ms']:.1f} ms" if "ms" in c else f"error {c['error'][:80]}")
                      for c in cases), flush=True)
    args.out.write_text(json.dumps(results, indent=1))
  results["load_average_end"] = os.getloadavg()
  results["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
  results["markdown"] = markdown_table(results["cases"])
  args.out.write_text(json.dumps(results, indent=1))
  return results


def main(argv=None) -> dict | None:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  args.image_shape = tuple(args.image_shape)
  if args.child is not None:
    child_main(args.child, args)
    return None
  results = run(args, argv)
  machine = results["machine"]
  print(f"\nMachine: {machine['cpu_model']}, {machine['usable_cpu_cores']} usable cores, "
        f"backend {machine['backend']}, jax {machine['jax_version']}; load average "
        f"{results['load_average_start'][0]:.2f} at start, "
        f"{results['load_average_end'][0]:.2f} at end.\n")
  print(results["markdown"])
  print(f"\nWrote {args.out}")
  return results


if __name__ == "__main__":
  main()
