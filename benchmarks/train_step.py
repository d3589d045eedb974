"""Benchmark of the train step: direct, split and recompute, by batch size and CPU devices.

For every number of devices x train step (`config.train_step`: direct, split, recompute) x
batch size it starts one child process on that many JAX CPU devices (the device count is fixed
when JAX starts) that builds the trainer of a config (default `configs/fashion_mnist.py`) with
that batch size and step, trains on one fixed batch of the config's training images, and
reports:

  * the step time: the median of `--repeats` steps after `--warmup` steps (the first compiles),
    each step waited for (its metrics fetched to the host), as the training loop does every
    `log_every_steps`;
  * the compile time (the first step, compilation included, minus the median step);
  * the child's peak resident set size (VmHWM of /proc/self/status: Python, the JAX runtime,
    the dataset, the compiled programs and the steps), the memory the run needs on a CPU;
  * the load average of the machine before the child started: timings on a loaded machine
    are not results.

`--memory-limit-gb G` searches instead for the largest batch that trains within G GB: for each
step it doubles the batch from the first of `--batch-sizes` until the peak resident set size
exceeds G GB (or the child fails, or the batch reaches `--max-batch`), with one warm-up and
one timed step.

Usage:
  # The step times (fashion_mnist: batch 256, 1024, 4096, on 1 and 2 CPU devices):
  python -m benchmarks.train_step
  python -m benchmarks.train_step --batch-sizes 1024 --devices 2 --steps split
  # The largest batch that trains within 4 GB, direct vs recompute (2 CPU devices):
  python -m benchmarks.train_step --memory-limit-gb 4 --steps direct recompute --devices 2 \
      --batch-sizes 2048 --chunk-rows 256
  # A batch of 8192 with cached gradients (recompute), its peak memory:
  python -m benchmarks.train_step --batch-sizes 8192 --steps recompute --devices 2 \
      --chunk-rows 256 --repeats 2

The batch is embedded in chunks of `--chunk-rows` rows (default 64: `config.model.forward_chunks`
= batch / 64, the Fashion-MNIST config's 4 chunks at 256), so every batch size runs chunks of
the size the config runs, and 1 and 2 devices compute the same function (BatchNorm statistics
per chunk); `--set key=value` overrides any other config key. Prints a markdown table and
writes the results to --out (default benchmarks/results/train_step.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "train_step.json"
STEPS = ("direct", "split", "recompute")


def _peak_rss_mb() -> float:
  """This process's peak resident set size in MB (VmHWM)."""
  with open("/proc/self/status") as status:
    for line in status:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024
  return float("nan")


def _load_config(path: str, overrides: list[str]):
  import importlib.util

  import ml_collections

  spec = importlib.util.spec_from_file_location("benchmark_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for override in overrides:
    key, value = override.split("=", 1)
    *groups, name = key.split(".")
    node = config
    for group in groups:
      node = node[group]
    field = node[name]
    node[name] = value if isinstance(field, str) else json.loads(value)
  assert isinstance(config, ml_collections.ConfigDict)
  return config


def run_case(case: dict) -> dict:
  """One case, in this process (the child): build, warm up, time. Returns its measurements."""
  import jax

  jax.config.update("jax_num_cpu_devices", case["devices"])
  import numpy as np

  from tripletjax.app.config import checks
  from tripletjax.app.data import datasets
  from tripletjax.app.devices import mesh as mesh_lib
  from tripletjax.app.step import train_step

  config = _load_config(case["config"], case["set"])
  config.batch.batch_size = case["batch_size"]
  config.train_step = case["step"]
  if case["chunk_rows"]:
    config.model.forward_chunks = max(1, case["batch_size"] // case["chunk_rows"])
  checks.check_config(config)
  dataset = datasets.load_dataset(config.data.name, config.data.data_dir, seed=config.seed)
  batch = case["batch_size"]
  indices = np.random.default_rng(0).choice(len(dataset.train.labels), batch,
                                            replace=batch > len(dataset.train.labels))
  mesh = mesh_lib.make_mesh()
  trainer = train_step.build_trainer(config, dataset.train.images.shape[1:], 1000, mesh)
  assert trainer.step_kind == case["step"], trainer.step_kind
  images, labels = mesh_lib.shard_batch(mesh, dataset.train.images[indices],
                                        dataset.train.labels[indices].astype(np.int32))

  def one_step() -> float:
    start = time.perf_counter()
    metrics = trainer.train_step(trainer.model, trainer.optimizer, images, labels)
    jax.device_get(metrics)
    return time.perf_counter() - start

  first = one_step()
  for _ in range(case["warmup"] - 1):
    one_step()
  times = [one_step() for _ in range(case["repeats"])]
  median = statistics.median(times)
  return {"step_ms": 1000 * median, "times_ms": [1000 * t for t in times],
          "compile_s": first - median, "peak_rss_mb": _peak_rss_mb(),
          "forward_chunks": config.model.forward_chunks,
          "devices": jax.device_count(), "platform": jax.default_backend()}


def run_child(case: dict) -> dict:
  """Runs `case` in a fresh process; its result, or the reason it failed."""
  load = os.getloadavg()[0]
  started = time.time()
  result = subprocess.run([sys.executable, "-m", "benchmarks.train_step", "--child",
                           json.dumps(case)], cwd=REPO, capture_output=True, text=True)
  record = {**case, "load_before": load, "wall_s": time.time() - started}
  if result.returncode != 0:
    lines = (result.stderr or result.stdout).strip().splitlines()
    record["error"] = lines[-1] if lines else f"exit status {result.returncode}"
    return record
  record.update(json.loads(result.stdout.strip().splitlines()[-1]))
  return record


def machine() -> dict:
  import jax

  return {"date": datetime.datetime.now().isoformat(timespec="minutes"),
          "processor": platform.processor() or platform.machine(), "cores": os.cpu_count(),
          "python": platform.python_version(), "jax": jax.__version__}


def _row(record: dict) -> str:
  if "error" in record:
    return (f"| {record['devices']} | {record['step']} | {record['batch_size']} | — | — | — | — | "
            f"{record['load_before']:.1f} | failed: {record['error'][:60]} |")
  return (f"| {record['devices']} | {record['step']} | {record['batch_size']} | "
          f"{record['forward_chunks']} | {record['step_ms']:.0f} | {record['compile_s']:.1f} | "
          f"{record['peak_rss_mb']:.0f} | {record['load_before']:.1f} | |")


HEADER = ("| devices | step | batch | forward chunks | step ms (median) | compile s | peak RSS MB "
          "| load before | |\n| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default=str(REPO / "configs" / "fashion_mnist.py"))
  parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024, 4096])
  parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
  parser.add_argument("--devices", type=int, nargs="+", default=[1, 2])
  parser.add_argument("--chunk-rows", type=int, default=64,
                      help="rows of the batch in each forward chunk: forward_chunks = batch / "
                           "rows (default 64, the Fashion-MNIST config's 256 / 4); 0 keeps the "
                           "config's forward_chunks")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a config override, e.g. loss.name=batch_all")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--memory-limit-gb", type=float, default=0.0,
                      help="search the largest batch within this peak memory instead")
  parser.add_argument("--max-batch", type=int, default=32768,
                      help="the memory search stops after this batch size")
  parser.add_argument("--out", default=str(DEFAULT_OUT))
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    print(json.dumps(run_case(json.loads(args.child))))
    return

  base = {"config": args.config, "set": args.set, "chunk_rows": args.chunk_rows,
          "warmup": args.warmup, "repeats": args.repeats}
  results = {"machine": machine(), "command": " ".join(sys.argv), "cases": []}
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  print(HEADER, flush=True)

  def record(case):
    result = run_child(case)
    results["cases"].append(result)
    out.write_text(json.dumps(results, indent=2))
    print(_row(result), flush=True)
    return result

  for devices in args.devices:
    for step in args.steps:
      if args.memory_limit_gb:
        batch = args.batch_sizes[0]
        while True:
          result = record({**base, "devices": devices, "step": step, "batch_size": batch,
                           "warmup": 1, "repeats": 1})
          if ("error" in result or result["peak_rss_mb"] > 1024 * args.memory_limit_gb
              or batch >= args.max_batch):
            break
          batch *= 2
        continue
      for batch in args.batch_sizes:
        record({**base, "devices": devices, "step": step, "batch_size": batch})
  print(f"\n{results['machine']}; results in {out}")


if __name__ == "__main__":
  main()
