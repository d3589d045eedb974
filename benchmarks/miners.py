"""Benchmark of the mined losses: jit-compiled JAX against vectorised NumPy and the loop reference.

For every loss (semihard, hard, batch_all, contrastive, multi_similarity, ntxent, supcon) x mode (forward, forward+backward) x
batch size B x embedding size D it measures, in one run:

  * JAX: `tripletjax.losses` under `jax.jit` (`jax.value_and_grad` for forward+backward), with
    the compile time (lower + compile) reported separately, then the median of several calls
    with `block_until_ready`;
  * NumPy-vectorised: `benchmarks.numpy_vectorized` and, for the losses of cosine
    similarities, `benchmarks.numpy_similarity` (analytic gradients), median of several calls;
  * pytorch-metric-learning (multi_similarity with its miner, ntxent, supcon; where installed):
    its loss on CPU torch tensors (`backward()` for forward+backward), median of several calls;
  * NumPy-reference: one call of the loop reference `tripletjax.reference`, forward only (it has
    no gradient) and only for B <= --reference-max-batch (its loops take seconds beyond);
    larger cases are shown as "—", never extrapolated;
  * peak memory of the JAX case, measured in a separate child process that runs only that case
    (`--memory subprocess`, the default): on CPU the child's peak resident set size (VmHWM of
    /proc/self/status, whole process: Python, JAX runtime, inputs, compilation and the run); on
    GPU/TPU the device allocator's `peak_bytes_in_use`. `--memory xla` reports XLA's
    `compiled.memory_analysis()` instead (arguments + outputs + temporaries; on CPU it misses
    the host buffers of the NumPy row sort), `--memory none` nothing. XLA's estimate is always
    recorded in the JSON.

Inputs: labels uniform over --classes (default 10) random classes, embeddings standard normal
float32, margin 1.0, metric l2 (the losses of cosine similarities: their default options). The same script runs unchanged on GPU (the backend comes from
`jax.devices()[0].platform`; NumPy always runs on the host CPU).

Usage:
  python -m benchmarks.miners --quick          # B in 128, 512, 2048 and D = 128 (~2 minutes)
  python -m benchmarks.miners                  # B in 128 ... 8192 and D in 128, 256
  python -m benchmarks.miners --losses semihard --modes forward+backward --batch-sizes 2048 \
      --dims 256 --out /tmp/semihard.json
  # The sorts inside XLA, as the trainer mines on several CPU devices:
  python -m benchmarks.miners --losses semihard batch_all --mining-backend xla --quick

Prints a markdown table (and machine information) and writes everything to --out (default
benchmarks/results/miners.json, rewritten after every case so a long run keeps its results).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

# The benchmark's children measure the device memory of one case each; a parent that had
# preallocated most of the GPU would leave them nothing. (No effect on CPU.)
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import compiled as compiled_lib  # noqa: E402
from benchmarks import numpy_similarity  # noqa: E402
from benchmarks import numpy_vectorized  # noqa: E402
from benchmarks import timing  # noqa: E402
from tripletjax import losses  # noqa: E402
from tripletjax import mining  # noqa: E402
from tripletjax import reference  # noqa: E402

LOSS_NAMES = tuple(losses.MINED_LOSSES)
MODES = ("forward", "forward+backward")
FULL_BATCH_SIZES = (128, 256, 512, 1024, 2048, 4096, 8192)
FULL_DIMS = (128, 256)
QUICK_BATCH_SIZES = (128, 512, 2048)
QUICK_DIMS = (128,)
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "miners.json"
MARGIN = 1.0
# pytorch-metric-learning is not run where it would allocate more than this.
PML_MAX_GB = 1.0


DASH = "—"


# ----------------------------------------------------------------------------------------------
# Inputs, functions and timers.


def make_inputs(batch_size: int, dim: int, num_classes: int, seed: int = 0):
  """Labels uniform over `num_classes` classes and standard-normal float32 embeddings."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, batch_size).astype(np.int32)
  embeddings = rng.standard_normal((batch_size, dim)).astype(np.float32)
  return labels, embeddings


def margin_options(loss_name: str) -> dict:
  """{"margin": MARGIN} for the losses with a margin; the others run with their defaults."""
  return {"margin": MARGIN} if "margin" in losses.MINED_LOSSES[loss_name].options else {}


def jax_function(loss_name: str, mode: str, mining_backend: str = "auto"):
  """The jit-compiled JAX function of a case: (labels, embeddings) -> loss or (loss, grad)."""
  loss = losses.MINED_LOSSES[loss_name]
  loss_fn = functools.partial(loss.fn, **margin_options(loss_name))
  if loss.sorts_rows:
    loss_fn = functools.partial(loss_fn, mining_backend=mining_backend)
  if mode == "forward":
    return jax.jit(loss_fn)
  value_and_grad = jax.value_and_grad(lambda embeddings, labels: loss_fn(labels, embeddings))
  return jax.jit(lambda labels, embeddings: value_and_grad(embeddings, labels))


def numpy_function(loss_name: str, mode: str):
  tables = ((numpy_vectorized.FORWARD, numpy_similarity.FORWARD) if mode == "forward"
            else (numpy_vectorized.FORWARD_AND_BACKWARD, numpy_similarity.FORWARD_AND_BACKWARD))
  loss_fn = {**tables[0], **tables[1]}[loss_name]
  return lambda labels, embeddings: loss_fn(labels, embeddings, MARGIN)


def pml_function(loss_name: str, mode: str):
  """pytorch-metric-learning's loss of a case on NumPy inputs, or None (no such loss, or not
  installed): (labels, embeddings) -> loss, after `backward()` for forward+backward."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
    from pytorch_metric_learning import losses as pml_losses  # pylint: disable=import-outside-toplevel
    from pytorch_metric_learning import miners as pml_miners  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  loss, miner = {
      "multi_similarity": (pml_losses.MultiSimilarityLoss, pml_miners.MultiSimilarityMiner),
      "ntxent": (pml_losses.NTXentLoss, None),
      "supcon": (pml_losses.SupConLoss, None),
  }.get(loss_name, (None, None))
  if loss is None:
    return None
  loss, miner = loss(), miner() if miner else None

  def run(labels, embeddings):
    x = torch.from_numpy(embeddings).requires_grad_(mode != "forward")
    y = torch.from_numpy(labels.astype(np.int64))
    with torch.set_grad_enabled(mode != "forward"):
      value = loss(x, y, miner(x, y) if miner else None)
      if mode != "forward" and value.requires_grad:
        value.backward()
    return float(value.detach())
  return run


def _loss_and_grad(output):
  if isinstance(output, tuple):
    return float(output[0]), np.asarray(output[1])
  return float(output), None


# ----------------------------------------------------------------------------------------------
# Peak memory in a child process.


def _resident_peak_mb() -> float | None:
  """Peak resident set size of this process (VmHWM), in MB; None if /proc is unavailable."""
  try:
    with open("/proc/self/status") as status:
      for line in status:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return None


def _child_main(spec: dict) -> None:
  """Runs one case (twice) and prints its peak memory as JSON: the `--child` entry point."""
  import resource

  device = jax.devices()[0]
  labels, embeddings = make_inputs(spec["batch_size"], spec["dim"], spec["classes"])
  labels, embeddings = jax.device_put(labels), jax.device_put(embeddings)
  jax.block_until_ready((labels, embeddings))
  baseline_mb = _resident_peak_mb()
  function = jax_function(spec["loss"], spec["mode"], spec["mining_backend"])
  for _ in range(2):
    jax.block_until_ready(function(labels, embeddings))
  result = {
      "platform": device.platform,
      "baseline_rss_mb": baseline_mb,  # Peak before compiling: Python, JAX and the inputs.
      "peak_rss_mb": _resident_peak_mb(),
      # ru_maxrss can include the parent's size at fork time on Linux; VmHWM does not.
      "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
  }
  stats = None
  if device.platform != "cpu":
    try:
      stats = device.memory_stats()
    except Exception:
      stats = None
  if stats and "peak_bytes_in_use" in stats:
    result["device_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
  print("CHILD_RESULT " + json.dumps(result), flush=True)


def measure_peak_memory(loss_name: str, mode: str, batch_size: int, dim: int, classes: int,
                        timeout_s: float, mining_backend: str = "auto") -> dict:
  """Peak memory of one JAX case, run alone in a fresh child process."""
  spec = {"loss": loss_name, "mode": mode, "batch_size": batch_size, "dim": dim,
          "classes": classes, "mining_backend": mining_backend}
  repo_root = Path(__file__).resolve().parent.parent
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo_root), env.get("PYTHONPATH")]))
  start = time.perf_counter()
  try:
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.miners", "--child", json.dumps(spec)],
        capture_output=True, text=True, timeout=timeout_s, cwd=repo_root, env=env)
  except subprocess.TimeoutExpired:
    return {"error": f"child timed out after {timeout_s:.0f} s"}
  for line in completed.stdout.splitlines():
    if line.startswith("CHILD_RESULT "):
      result = json.loads(line[len("CHILD_RESULT "):])
      result["child_wall_s"] = time.perf_counter() - start
      return result
  return {"error": f"child exited with {completed.returncode}: {completed.stderr[-500:]}"}


# ----------------------------------------------------------------------------------------------
# One case.


def run_case(loss_name: str, mode: str, batch_size: int, dim: int, args) -> dict:
  labels_np, embeddings_np = make_inputs(batch_size, dim, args.classes)
  labels, embeddings = jax.device_put(labels_np), jax.device_put(embeddings_np)
  jax.block_until_ready((labels, embeddings))
  case = {"loss": loss_name, "mode": mode, "batch_size": batch_size, "dim": dim,
          "classes": args.classes, "load_average_1min": os.getloadavg()[0]}

  # JAX: compile, then time the compiled executable.
  start = time.perf_counter()
  compiled = jax_function(loss_name, mode, args.mining_backend).lower(
      labels, embeddings).compile()
  case["jax_compile_s"] = time.perf_counter() - start
  case["xla_memory"] = compiled_lib.memory_mb(compiled)
  jax_output = jax.block_until_ready(compiled(labels, embeddings))
  median, seconds = timing.time_calls_for(
      lambda: jax.block_until_ready(compiled(labels, embeddings)), args.min_time)
  case["jax_ms"], case["jax_runs_ms"] = 1e3 * median, [1e3 * s for s in seconds]

  # Vectorised NumPy.
  numpy_fn = numpy_function(loss_name, mode)
  numpy_output = numpy_fn(labels_np, embeddings_np)
  median, seconds = timing.time_calls_for(lambda: numpy_fn(labels_np, embeddings_np), args.min_time)
  case["numpy_ms"], case["numpy_runs_ms"] = 1e3 * median, [1e3 * s for s in seconds]

  # pytorch-metric-learning, where it has the loss, is installed and fits in memory.
  case["pml_ms"] = None
  pml_fn = pml_function(loss_name, mode)
  if pml_fn is not None and loss_name == "ntxent":
    # Its NTXentLoss builds a [positive pairs, negative pairs] float32 matrix.
    same = labels_np[:, None] == labels_np[None, :]
    pml_gb = 4 * (int(same.sum()) - batch_size) * int((~same).sum()) / 1e9
    if pml_gb > PML_MAX_GB:
      case["pml_skipped"] = (f"NTXentLoss would allocate a [positive pairs x negative pairs] "
                             f"float32 matrix of {pml_gb:,.1f} GB")
      pml_fn = None
  if pml_fn is not None:
    case["pml_loss"] = pml_fn(labels_np, embeddings_np)
    median, seconds = timing.time_calls_for(lambda: pml_fn(labels_np, embeddings_np),
                                            args.min_time)
    case["pml_ms"], case["pml_runs_ms"] = 1e3 * median, [1e3 * s for s in seconds]

  # Agreement of the two implementations on this batch.
  jax_loss, jax_grad = _loss_and_grad(jax_output)
  numpy_loss, numpy_grad = _loss_and_grad(numpy_output)
  case["jax_loss"], case["numpy_loss"] = jax_loss, numpy_loss
  case["loss_relative_difference"] = abs(jax_loss - numpy_loss) / max(abs(jax_loss), 1e-30)
  if jax_grad is not None:
    scale = float(np.abs(jax_grad).max())
    case["grad_max_abs_difference"] = float(np.abs(jax_grad - numpy_grad).max())
    case["grad_max_abs"] = scale

  # The loop reference: forward only, small batches only, one call.
  case["reference_ms"] = None
  if mode == "forward" and batch_size <= args.reference_max_batch:
    start = time.perf_counter()
    reference_loss = reference.MINED_LOSSES[loss_name](labels_np, embeddings_np,
                                                       **margin_options(loss_name))
    case["reference_ms"] = 1e3 * (time.perf_counter() - start)
    case["reference_loss"] = reference_loss

  case["numpy_speedup"] = case["numpy_ms"] / case["jax_ms"]
  case["reference_speedup"] = (case["reference_ms"] / case["jax_ms"]
                               if case["reference_ms"] is not None else None)

  # Peak memory of the JAX case.
  if args.memory == "subprocess":
    case["memory"] = measure_peak_memory(loss_name, mode, batch_size, dim, args.classes,
                                         args.child_timeout, args.mining_backend)
  case["peak_mb"], case["peak_mb_source"] = _peak_mb(case, args.memory)
  return case


def _peak_mb(case: dict, memory: str):
  if memory == "subprocess":
    result = case.get("memory", {})
    if "device_peak_mb" in result:
      return result["device_peak_mb"], "device peak_bytes_in_use (child process)"
    if result.get("peak_rss_mb") is not None:
      return result["peak_rss_mb"], "peak RSS of a child process (VmHWM)"
    return None, result.get("error", "unavailable")
  if memory == "xla" and case.get("xla_memory"):
    return case["xla_memory"]["total_mb"], "XLA memory_analysis (args + outputs + temp)"
  return None, "not measured"


# ----------------------------------------------------------------------------------------------
# Machine information and report.


def machine_info() -> dict:
  cpu_model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as cpuinfo:
      for line in cpuinfo:
        if line.startswith("model name"):
          cpu_model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  device = jax.devices()[0]
  try:
    usable_cores = len(os.sched_getaffinity(0))
  except AttributeError:
    usable_cores = os.cpu_count()
  try:
    import jaxlib
    jaxlib_version = jaxlib.__version__
  except (ImportError, AttributeError):
    jaxlib_version = None
  try:
    with open("/proc/meminfo") as meminfo:
      memory_gb = int(meminfo.readline().split()[1]) / 2**20
  except (OSError, ValueError, IndexError):
    memory_gb = None
  return {
      "cpu_model": cpu_model,
      "cpu_cores": os.cpu_count(),
      "usable_cpu_cores": usable_cores,
      "memory_gb": memory_gb,
      "backend": device.platform,
      "device_kind": device.device_kind,
      "num_devices": jax.device_count(),
      "jax_version": jax.__version__,
      "jaxlib_version": jaxlib_version,
      "numpy_version": np.__version__,
      "python_version": platform.python_version(),
      "platform": platform.platform(),
  }


def _format(value, digits: int = 1, suffix: str = "") -> str:
  if value is None:
    return DASH
  return f"{value:.{digits}f}{suffix}"


def markdown_report(results: dict) -> str:
  machine = results["machine"]
  lines = [
      f"Machine: {machine['cpu_model']}, {machine['usable_cpu_cores']} usable CPU cores "
      f"({machine['cpu_cores']} online), "
      + (f"{machine['memory_gb']:.0f} GB RAM, " if machine["memory_gb"] else "")
      + f"backend {machine['backend']} ({machine['device_kind']}), jax {machine['jax_version']}, "
      f"numpy {machine['numpy_version']}, Python {machine['python_version']}.",
      f"Load average (1 min) at start {results['load_average_start'][0]:.2f}, at end "
      f"{results['load_average_end'][0]:.2f}" if results.get("load_average_end") else "",
      f"Inputs: {results['config']['classes']} random classes, standard-normal float32 "
      f"embeddings, margin {MARGIN}, metric l2. Times: median of several calls "
      f"(JAX: jit-compiled, block_until_ready). Speed-up = other time / JAX time.",
      "NumPy-reference: one call of the loop reference, forward only (it has no gradient), "
      f"B <= {results['config']['reference_max_batch']}; {DASH} = not run.",
      f"Peak MB: {results['memory_note']}.",
      "",
      "| loss | mode | B | D | JAX ms | compile s | NumPy-vectorised ms | NumPy-reference ms "
      "| speed-up vs vectorised | vs reference | peak MB | pytorch-metric-learning ms |",
      "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for case in results["cases"]:
    lines.append(
        f"| {case['loss']} | {case['mode']} | {case['batch_size']} | {case['dim']} "
        f"| {_format(case['jax_ms'])} | {_format(case['jax_compile_s'], 2)} "
        f"| {_format(case['numpy_ms'])} | {_format(case['reference_ms'])} "
        f"| {_format(case['numpy_speedup'], 2, 'x')} "
        f"| {_format(case['reference_speedup'], 1, 'x')} | {_format(case['peak_mb'], 0)} "
        f"| {_format(case.get('pml_ms'))} |")
  return "\n".join(line for line in lines if line is not None)


_MEMORY_NOTES = {
    "subprocess": ("peak memory of a separate child process that runs only that JAX case (on "
                   "CPU its whole-process peak RSS, VmHWM: Python + JAX runtime + inputs + "
                   "compilation + run; on GPU/TPU the device's peak_bytes_in_use)"),
    "xla": ("XLA's compiled.memory_analysis(): arguments + outputs + temporaries (excludes "
            "host buffers such as the NumPy row sort of the CPU path)"),
    "none": "not measured",
}


# ----------------------------------------------------------------------------------------------
# Main.


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      prog="python -m benchmarks.miners", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true",
                      help="B in 128, 512, 2048 and D = 128 only (unless given explicitly).")
  parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output file.")
  parser.add_argument("--batch-sizes", type=int, nargs="+", help="Batch sizes B.")
  parser.add_argument("--dims", type=int, nargs="+", help="Embedding sizes D.")
  parser.add_argument("--losses", nargs="+", choices=LOSS_NAMES, default=list(LOSS_NAMES))
  parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
  parser.add_argument("--classes", type=int, default=10, help="Number of random classes.")
  parser.add_argument("--mining-backend", choices=mining.BACKENDS, default="auto",
                      help="Where semi-hard and batch-all sort and mine their rows "
                      "(tripletjax.mining.backend): 'auto', 'numpy', 'xla' (what the trainer "
                      "uses on several CPU devices), or an XLA sort forced by name.")
  parser.add_argument("--memory", choices=("subprocess", "xla", "none"), default="subprocess",
                      help="How the peak MB column is measured (see the module doc).")
  parser.add_argument("--min-time", type=float, default=None,
                      help="Seconds of timed calls per measurement (at least 3 calls, at most "
                           "20); default 0.5 with --quick, else 1.0.")
  parser.add_argument("--reference-max-batch", type=int, default=256,
                      help="Largest B at which the loop reference is timed.")
  parser.add_argument("--child-timeout", type=float, default=600.0,
                      help="Seconds allowed to a memory child process.")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.batch_sizes is None:
    args.batch_sizes = list(QUICK_BATCH_SIZES if args.quick else FULL_BATCH_SIZES)
  if args.dims is None:
    args.dims = list(QUICK_DIMS if args.quick else FULL_DIMS)
  if args.min_time is None:
    args.min_time = 0.5 if args.quick else 1.0
  return args


def main(argv=None) -> dict | None:
  args = parse_args(argv)
  if args.child:
    _child_main(json.loads(args.child))
    return None
  results = {
      "benchmark": "tripletjax mined losses: JAX vs vectorised NumPy vs NumPy loop reference",
      "started": datetime.datetime.now().isoformat(timespec="seconds"),
      "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.miners"] + sys.argv[1:]),
      "config": {"quick": args.quick, "batch_sizes": args.batch_sizes, "dims": args.dims,
                 "losses": args.losses, "modes": args.modes, "classes": args.classes,
                 "margin": MARGIN, "metric": "l2", "memory": args.memory,
                 "mining_backend": args.mining_backend,
                 "min_time_s": args.min_time, "reference_max_batch": args.reference_max_batch},
      "machine": machine_info(),
      "memory_note": _MEMORY_NOTES[args.memory],
      "load_average_start": os.getloadavg(),
      "cases": [],
  }
  machine = results["machine"]
  print(f"Machine: {machine['cpu_model']}, {machine['usable_cpu_cores']} cores, backend "
        f"{machine['backend']}, jax {machine['jax_version']}; load average "
        f"{results['load_average_start'][0]:.2f}", flush=True)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  cases = [(loss_name, mode, batch_size, dim) for loss_name in args.losses
           for mode in args.modes for dim in args.dims for batch_size in args.batch_sizes]
  # One line per case, with the time so far and an estimate of the time left.
  start = time.perf_counter()
  for index, (loss_name, mode, batch_size, dim) in enumerate(cases):
    case = run_case(loss_name, mode, batch_size, dim, args)
    results["cases"].append(case)
    elapsed = time.perf_counter() - start
    left = elapsed / (index + 1) * (len(cases) - index - 1)
    print(
        f"[{index + 1}/{len(cases)} {elapsed:6.0f} s, ~{left:.0f} s left] {loss_name:11s} "
        f"{mode:16s} B={batch_size:5d} D={dim:4d}  JAX {case['jax_ms']:9.1f} ms (compile "
        f"{case['jax_compile_s']:.2f} s)  NumPy {case['numpy_ms']:9.1f} ms  reference "
        f"{_format(case['reference_ms'])} ms  peak {_format(case['peak_mb'], 0)} MB  "
        f"load {case['load_average_1min']:.2f}", flush=True)
    args.out.write_text(json.dumps(results, indent=1))
  results["wall_s"] = time.perf_counter() - start
  results["load_average_end"] = os.getloadavg()
  results["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
  report = markdown_report(results)
  results["markdown"] = report
  args.out.write_text(json.dumps(results, indent=1))
  print()
  print(report, flush=True)
  print(f"\nWrote {args.out}", flush=True)
  return results


if __name__ == "__main__":
  main()
