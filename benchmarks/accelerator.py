"""The one-shot accelerator check: one command, a few minutes on one GPU, results in a folder.

  python -m benchmarks.accelerator --out /tmp/accel          # on the accelerator machine
  python -m benchmarks.accelerator --out /tmp/accel --smoke  # tiny sizes, any CPU, < 60 s

Parts, each in its own child process with its own time limit (a part that fails or runs out of
time is recorded with its error, what it finished is kept, and the next part runs):

  environment  JAX, its devices and which optional packages are present.
  miners       forward+backward (`jax.value_and_grad`) of the semi-hard, batch-hard and
               batch-all losses for B = 1024 ... 16384 and D = 128, with each XLA sort method
               of the sorting miners ("xla:rank_key", "xla:three_keys", "xla:packed_key";
               `tripletjax.mining.backend`), a matmul of the same size as a floor, and for
               every program its sorts read from the compiled HLO: XLA's own sort kernels (with
               their operand counts) or custom calls to CUB's radix sort (XLA:GPU's rewrite).
  scaling      the sharded loss and train step per mining scope on the devices present
               (`benchmarks.scaling`): "global" (sharded) against "replicated".
  training     a short training (`benchmarks.small_training`) on Fashion-MNIST if its IDX
               files are found, else on scikit-learn's digits if scikit-learn is installed;
               test precision@1 before and after.

Results are written as they come: each part appends every result to `DIR/<part>.jsonl` as soon
as it has it; `DIR/results.json` (everything) and `DIR/results.md` (the tables) are rewritten
after every part; `DIR/<part>.log` holds each child's output. Needs only
jax, numpy, flax and optax (what a bare CUDA machine has); the parts import nothing else, and
say so where something they would use is missing.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.util
import json
import os
import platform as platform_lib
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PARTS = ("environment", "miners", "scaling", "training")
LOSSES = ("semihard", "hard", "batch_all")
SORT_METHODS = ("xla:rank_key", "xla:three_keys", "xla:packed_key")
FULL = {"batch_sizes": (1024, 2048, 4096, 8192, 16384), "dim": 128, "repeats": 5,
        "scaling_batch_size": 4096, "scaling_train_batch_size": 256,
        "scaling_model": "hsu_cnn", "scaling_image_shape": (28, 28, 1),
        "scaling_devices": None, "scaling_train_scopes": ("global", "replicated", "local"),
        "train_batch_size": 256, "train_epochs": 2, "train_seconds": 30.0,
        "max_train": None, "max_test": None}
SMOKE = {"batch_sizes": (64,), "dim": 16, "repeats": 2, "scaling_batch_size": 64,
         "scaling_train_batch_size": 32, "scaling_model": "tfa_cnn",
         "scaling_image_shape": (8, 8, 1), "scaling_devices": (2,),
         "scaling_train_scopes": ("global",), "train_batch_size": 32, "train_epochs": 1,
         "train_seconds": 10.0, "max_train": 256, "max_test": 128}
# Seconds each part may take (full run, then smoke run). The full run's add up to under 5
# minutes; the smoke run takes well under a minute on an idle machine, its limits leave room
# for a loaded CI machine.
TIMEOUTS = {"environment": (20, 120), "miners": (140, 300), "scaling": (60, 300),
            "training": (70, 300)}
OPTIONAL_PACKAGES = ("flax", "optax", "chex", "ml_collections", "tqdm", "tensorboardX",
                     "tensorflow_datasets", "sklearn", "matplotlib", "orbax")
DASH = "—"


# ---------------------------------------------------------------------------------- parts
# Each runs in a child process and prints one line "RESULT <json>" per finished item.


_RESULTS_FILE = None  # The part's JSON-lines file, set in the child.


def emit(item: dict) -> None:
  """Appends one result to the part's file at once, so a part killed later keeps it."""
  with open(_RESULTS_FILE, "a") as results:
    results.write(json.dumps(item) + "\n")


def _median_ms(call, repeats: int) -> tuple[float, list[float]]:
  """Median milliseconds of `repeats` calls after one untimed call, and all of them."""
  from benchmarks import timing

  median, seconds = timing.time_calls(call, repeats)
  return 1e3 * median, [1e3 * s for s in seconds]


def part_environment(settings: dict) -> None:
  del settings
  import jax

  devices = jax.devices()
  emit({"jax": jax.__version__, "backend": jax.default_backend(),
        "devices": [f"{d.platform}:{d.device_kind}" for d in devices],
        "device_count": len(devices), "python": platform_lib.python_version(),
        "packages": {name: _installed(name) for name in OPTIONAL_PACKAGES}})


def _installed(name: str) -> bool:
  """Whether the package `name` can be found (without importing it)."""
  try:
    return importlib.util.find_spec(name) is not None
  except (ImportError, ValueError):
    return False


def part_miners(settings: dict) -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np

  import tripletjax
  from benchmarks import compiled as compiled_lib

  dim, repeats = settings["dim"], settings["repeats"]
  for batch_size in settings["batch_sizes"]:
    rng = np.random.default_rng(batch_size)
    labels = jax.device_put(rng.integers(0, 10, batch_size).astype(np.int32))
    embeddings = jax.device_put(rng.standard_normal((batch_size, dim)).astype(np.float32))
    # The floor: the Gram matrix of the batch, as the losses compute it.
    matmul = jax.jit(lambda x: jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST))
    try:
      compiled = matmul.lower(embeddings).compile()
      ms, runs = _median_ms(lambda: jax.block_until_ready(compiled(embeddings)), repeats)
      emit({"case": "matmul", "batch_size": batch_size, "dim": dim, "ms": ms, "runs_ms": runs})
    except Exception as error:  # pylint: disable=broad-except
      emit({"case": "matmul", "batch_size": batch_size, "error": _describe(error)})
    for loss_name in LOSSES:
      loss = tripletjax.MINED_LOSSES[loss_name]
      for method in SORT_METHODS if loss.sorts_rows else (None,):
        item = {"case": loss_name, "method": method, "batch_size": batch_size, "dim": dim}
        try:
          options = {"mining_backend": method} if method else {}
          fn = functools.partial(loss.fn, margin=1.0, **options)
          function = jax.jit(jax.value_and_grad(lambda x, y, fn=fn: fn(y, x)))
          start = time.perf_counter()
          compiled = function.lower(embeddings, labels).compile()
          item["compile_s"] = time.perf_counter() - start
          item["sorts"] = compiled_lib.sort_kernels(compiled.as_text())
          item["memory"] = compiled_lib.memory_mb(compiled)
          value, gradient = compiled(embeddings, labels)
          item["loss"] = float(value)
          item["gradient_abs_sum"] = float(jnp.sum(jnp.abs(gradient)))
          item["ms"], item["runs_ms"] = _median_ms(
              lambda: jax.block_until_ready(compiled(embeddings, labels)), repeats)
        except Exception as error:  # pylint: disable=broad-except
          item["error"] = _describe(error)
        emit(item)


def part_scaling(settings: dict) -> None:
  import jax

  from benchmarks import scaling
  from benchmarks import small_training

  args = scaling.parse_args([
      "--batch-size", str(settings["scaling_batch_size"]), "--dim", str(settings["dim"]),
      "--train-batch-size", str(settings["scaling_train_batch_size"]),
      "--model", settings["scaling_model"],
      "--image-shape", *map(str, settings["scaling_image_shape"]),
      "--repeats", str(settings["repeats"]), "--scopes", "global", "replicated", "local"])
  args.image_shape = tuple(args.image_shape)
  count = jax.device_count()
  device_counts = settings["scaling_devices"] or [
      2**k for k in range(count.bit_length()) if 2**k <= count]
  for num_devices in device_counts:
    mesh = small_training.make_mesh(num_devices)
    for scope in args.scopes:
      for kind, run in (("loss", scaling.loss_case), ("train", scaling.train_case)):
        if kind == "train" and scope not in settings["scaling_train_scopes"]:
          continue
        item = {"case": kind, "devices": num_devices, "scope": scope,
                "batch_size": args.batch_size if kind == "loss" else args.train_batch_size}
        try:
          item.update(run(mesh, scope, args))
        except Exception as error:  # pylint: disable=broad-except
          item["error"] = _describe(error)
        emit(item)


def part_training(settings: dict) -> None:
  import jax

  from benchmarks import small_training
  from tripletjax.app.data import datasets

  dataset, source = _training_data(datasets, settings)
  if dataset is None:
    emit({"skipped": source})
    return
  mesh = small_training.make_mesh(jax.device_count())
  batch_size = settings["train_batch_size"]
  # The recipes of configs/fashion_mnist.py and configs/digits.py.
  recipe = ({"model_name": "hsu_cnn", "model_options": {"batch_norm": True, "dropout_rate": 0.0},
             "margin": 0.2, "learning_rate": 3e-3} if dataset.name == "fashion_mnist" else
            {"model_name": "tfa_cnn", "margin": 0.5, "learning_rate": 2e-3})
  emit({"stage": "data", "dataset": dataset.name, "source": source})
  result = small_training.train(dataset, mesh, epochs=settings["train_epochs"],
                                batch_size=batch_size, max_seconds=settings["train_seconds"],
                                on_progress=emit, **recipe)
  emit({"stage": "done", "dataset": dataset.name, "source": source,
        "train_examples": len(dataset.train.labels),
        "test_examples": len(dataset.test.labels), "batch_size": batch_size,
        "devices": jax.device_count(), "model": recipe["model_name"], **result})


def _training_data(datasets, settings: dict):
  """(dataset, where it came from), or (None, why there is none)."""
  limits = {"max_train": settings["max_train"], "max_test": settings["max_test"]}
  fashion_dir = settings.get("fashion_dir") or datasets.FASHION_MNIST_DEBIAN_DIR
  if os.path.isdir(fashion_dir):
    return datasets.load_dataset("fashion_mnist", fashion_dir, seed=0, **limits), fashion_dir
  if _installed("sklearn"):
    return (datasets.load_dataset("digits", seed=0, **limits),
            f"scikit-learn's digits ({fashion_dir} is absent)")
  return None, (f"no training data: {fashion_dir} (Fashion-MNIST) is absent and scikit-learn "
                "(digits) is not installed; pass --fashion-dir DIR with the four IDX files")


PART_FUNCTIONS = {"environment": part_environment, "miners": part_miners,
                  "scaling": part_scaling, "training": part_training}


def _describe(error: BaseException) -> str:
  return f"{type(error).__name__}: {error}"[:2000]


# --------------------------------------------------------------------------------- parent


def run_part(part: str, settings: dict, timeout_s: float, out: Path) -> dict:
  """Runs one part in a child process; its items, status and wall time."""
  environment = dict(os.environ)
  environment.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  environment["PYTHONPATH"] = os.pathsep.join(
      filter(None, [str(REPO), environment.get("PYTHONPATH")]))
  if settings.get("cpu_devices") and part == "scaling":
    flags = environment.get("XLA_FLAGS", "")
    environment["XLA_FLAGS"] = (f"{flags} --xla_force_host_platform_device_count="
                                f"{settings['cpu_devices']}").strip()
  log_path, items_path = out / f"{part}.log", out / f"{part}.jsonl"
  items_path.write_text("")
  command = [sys.executable, "-m", "benchmarks.accelerator", "--child", part,
             "--settings", json.dumps(settings), "--results-file", str(items_path)]
  start = time.perf_counter()
  with open(log_path, "w") as log:
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                               env=environment)
    try:
      process.wait(timeout=timeout_s)
      status = "ok" if process.returncode == 0 else f"failed (exit {process.returncode})"
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()
      status = f"timed out after {timeout_s:.0f} s"
  items = [json.loads(line) for line in items_path.read_text().splitlines() if line.strip()]
  result = {"status": status, "wall_s": time.perf_counter() - start, "timeout_s": timeout_s,
            "items": items}
  if status != "ok":
    result["log_tail"] = log_path.read_text()[-2000:]
  return result


def _format(value, digits: int = 1) -> str:
  return DASH if value is None else f"{value:.{digits}f}"


def markdown(results: dict) -> str:
  """The tables of what has run so far."""
  lines = [f"# Accelerator check ({'smoke' if results['smoke'] else 'full'})", "",
           f"Started {results['started']}; command `{results['command']}`.", ""]
  for part, result in results["parts"].items():
    lines.append(f"## {part}: {result['status']} ({result['wall_s']:.0f} s of "
                 f"{result['timeout_s']:.0f})")
    lines.append("")
    lines.extend(_PART_TABLES.get(part, _json_lines)(result["items"]))
    if result["status"] != "ok":
      lines += ["", "```", result.get("log_tail", "")[-1000:], "```"]
    lines.append("")
  return "\n".join(lines)


def _json_lines(items):
  return [f"- `{json.dumps(item)}`" for item in items]


def _sorts_text(sorts) -> str:
  if not sorts:
    return DASH
  text = f"XLA sorts {sorts['xla_sorts']}" if sorts["xla_sorts"] else "no XLA sort"
  return text + (f", CUB: {', '.join(sorts['cub_sorts'])}" if sorts["cub_sorts"] else "")


def _miners_table(items):
  lines = ["| loss | sort method | B | D | fwd+bwd ms | compile s | temp MB | sorts in the "
           "compiled program |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
  for item in items:
    lines.append(
        f"| {item['case']} | {item.get('method') or DASH} | {item['batch_size']} "
        f"| {item.get('dim', DASH)} | {_format(item.get('ms'))} "
        f"| {_format(item.get('compile_s'), 2)} "
        f"| {_format((item.get('memory') or {}).get('temp_mb'))} "
        f"| {item['error'][:80] if 'error' in item else _sorts_text(item.get('sorts'))} |")
  return lines


def _scaling_table(items):
  lines = ["| devices | scope | part | B | ms | images/s | temp MB / device | largest array |",
           "| ---: | --- | --- | ---: | ---: | ---: | ---: | --- |"]
  for item in items:
    lines.append(
        f"| {item['devices']} | {item['scope']} | {item['case']} | {item['batch_size']} "
        f"| {_format(item.get('ms'))} | {_format(item.get('images_per_s'), 0)} "
        f"| {_format((item.get('memory') or {}).get('temp_mb'))} "
        f"| {item.get('largest_array', item.get('error', DASH)[:80])} |")
  return lines


def _training_table(items):
  done = [item for item in items if item.get("stage") == "done"]
  if not done:
    return _json_lines(items)
  item = done[0]
  return ["| dataset | model | devices | batch | steps | training s | images/s | precision@1 "
          "before | after |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
          f"| {item['dataset']} ({item['source']}) | {item['model']} | {item['devices']} "
          f"| {item['batch_size']} | {item['steps']} | {_format(item['train_seconds'])} "
          f"| {_format(item['images_per_s'], 0)} | {item['precision_at_1_before']:.4f} "
          f"| {item['precision_at_1']:.4f} |"]


_PART_TABLES = {"miners": _miners_table, "scaling": _scaling_table,
                "training": _training_table}


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      prog="python -m benchmarks.accelerator", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", type=Path, help="Folder for results.json, results.md, logs.")
  parser.add_argument("--smoke", action="store_true",
                      help="Tiny sizes (runs on a CPU in under a minute).")
  parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
  parser.add_argument("--timeout", action="append", default=[], metavar="PART=SECONDS",
                      help="Time limit of a part (repeatable), e.g. --timeout miners=200.")
  parser.add_argument("--fashion-dir", help="Folder of Fashion-MNIST's four IDX files "
                      "(default: Debian's /usr/share/datasets/fashion-mnist).")
  parser.add_argument("--cpu-devices", type=int, default=None,
                      help="Virtual CPU devices for the scaling part on a CPU (default: 2 "
                           "with --smoke, else 1).")
  parser.add_argument("--child", choices=PARTS, help=argparse.SUPPRESS)
  parser.add_argument("--settings", help=argparse.SUPPRESS)
  parser.add_argument("--results-file", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child is None and args.out is None:
    parser.error("--out DIR is required")
  return args


def _timeouts(args) -> dict[str, float]:
  timeouts = {part: limits[1 if args.smoke else 0] for part, limits in TIMEOUTS.items()}
  for entry in args.timeout:
    part, _, seconds = entry.partition("=")
    if part not in PARTS or not seconds:
      raise SystemExit(f"error: --timeout {entry!r}: expected PART=SECONDS, PART in {PARTS}")
    timeouts[part] = float(seconds)
  return timeouts


def main(argv=None) -> dict | None:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  if args.child:
    global _RESULTS_FILE
    _RESULTS_FILE = args.results_file
    PART_FUNCTIONS[args.child](json.loads(args.settings))
    return None
  settings = dict(SMOKE if args.smoke else FULL)
  settings["fashion_dir"] = args.fashion_dir
  settings["cpu_devices"] = args.cpu_devices if args.cpu_devices else (2 if args.smoke else 1)
  timeouts = _timeouts(args)
  args.out.mkdir(parents=True, exist_ok=True)
  results = {"smoke": args.smoke, "command": " ".join(["python", "-m", "benchmarks.accelerator",
                                                       *argv]),
             "started": datetime.datetime.now().isoformat(timespec="seconds"),
             "host": platform_lib.node(), "settings": settings, "timeouts_s": timeouts,
             "parts": {}}
  start = time.perf_counter()
  for part in args.parts:
    result = run_part(part, settings, timeouts[part], args.out)
    results["parts"][part] = result
    results["wall_s"] = time.perf_counter() - start
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "results.md").write_text(markdown(results))
    print(f"{part}: {result['status']} in {result['wall_s']:.0f} s, "
          f"{len(result['items'])} result(s)", flush=True)
  print(f"Wrote {args.out / 'results.json'} and {args.out / 'results.md'} "
        f"({results['wall_s']:.0f} s).", flush=True)
  return results


if __name__ == "__main__":
  main()
