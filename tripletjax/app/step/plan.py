"""How a run computes, decided once at start from the config, the platform and the devices.

`make_plan` is the one place that decides the train step's kind ("direct", "split",
"recompute"), where the sorting miners run inside the sharded program and in the split steps'
loss on one device (`tripletjax.mining.resolve_backend`), and how the batch is mined over the
devices (the mining scope). It raises the config errors about their combinations. Whatever
builds the step (`train_step.build_trainer`) or the task's loss (`train_step.make_loss_fn`)
reads the `ExecutionPlan`; nothing derives any of it again. The loop prints it once
(`describe`) and records it in config.json and eval.json (`record`).

"auto" is "split" where that lets a sorting miner run in NumPy instead of inside XLA: on the
CPU, with several devices, for a loss that sorts rows (semi-hard, batch-all) with the "auto" or
"numpy" mining backend, mined over the global batch. There the direct step must sort inside XLA
(a host callback in a program sharded over several CPU devices deadlocks), which is several
times slower than NumPy (benchmarks/RESULTS.md, "Split and virtual-batch steps"). Everywhere
else "auto" is "direct": one program, nothing copied to the host.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections

from tripletjax import losses
from tripletjax import mining
from tripletjax.app import errors
from tripletjax.app.config import checker

# How a train step computes its gradient: "direct" in one program, "split" / "recompute" in
# two programs with the loss between them (`virtual_batch`).
STEP_KINDS = ("direct", "split", "recompute")
SPLIT_STEP_KINDS = ("split", "recompute")
# The values of config.train_step: a step kind, or "auto" (`make_plan` decides).
TRAIN_STEP_CHOICES = ("auto", *STEP_KINDS)


@dataclasses.dataclass(frozen=True)
class ExecutionPlan:
  """How a run computes (`make_plan`).

  Attributes:
    step_kind: "direct", "split" or "recompute".
    mining_scope: how the loss of the sharded batch is mined over the devices
      (`tripletjax.sharded.MINING_SCOPES`).
    mining_backend: where the sorting miner runs inside the sharded program (a resolved
      backend, `tripletjax.mining.RESOLVED`); None for a loss that sorts nothing.
    single_device_mining_backend: the same for the loss on one device that the split steps
      compute between their two programs; None for a loss that sorts nothing.
    forward_chunks: chunks of each device's rows the model runs on, one after the other.
    global_batch_size: the rows of a step's batch, over every process.
    num_devices: the devices the batch is split over.
    platform: where the model runs ("cpu", "gpu", "tpu").
  """
  step_kind: str
  mining_scope: str
  mining_backend: str | None
  single_device_mining_backend: str | None
  forward_chunks: int
  global_batch_size: int
  num_devices: int
  platform: str

  @property
  def is_split(self) -> bool:
    return self.step_kind in SPLIT_STEP_KINDS

  def describe(self) -> str:
    """One line, e.g. "train step: split; mining: numpy on the host, global batch of 1024 over
    2 devices"."""
    backend = self.single_device_mining_backend if self.is_split else self.mining_backend
    where = ("no sorting miner" if backend is None else "numpy on the host"
             if backend == "numpy" else f"{backend} inside the program")
    devices = f"{self.num_devices} {self.platform} device{'s' if self.num_devices > 1 else ''}"
    scope = {"global": f"global batch of {self.global_batch_size} over {devices}",
             "local": f"each device's {self.global_batch_size // self.num_devices} rows alone "
                      f"({devices})",
             "replicated": f"the whole batch of {self.global_batch_size} on each of {devices}"}
    chunks = f"; {self.forward_chunks} forward chunks" if self.forward_chunks > 1 else ""
    return f"train step: {self.step_kind}; mining: {where}, {scope[self.mining_scope]}{chunks}"

  def record(self) -> dict:
    """The plan as JSON types."""
    return dataclasses.asdict(self)


def check_config(check: checker.Checker, num_devices: int) -> None:
  """`config.train_step`, and the batch and forward chunks over `num_devices` devices (the
  errors of a step kind's combinations: `make_plan`)."""
  check.choice("train_step", TRAIN_STEP_CHOICES)
  batch_size = check["batch.batch_size"]
  if batch_size % num_devices:
    check.fail("batch.batch_size",
               f"must be a multiple of the {num_devices} devices the batch is split over",
               "on a CPU-only machine --cpu_devices sets the number of devices")
  check.integer("model.forward_chunks", 1)
  chunks = check["model.forward_chunks"]
  if batch_size % (chunks * num_devices):
    check.fail("model.forward_chunks",
               f"must divide the batch size per device ({batch_size} / {num_devices} "
               f"device(s) = {batch_size // num_devices})")


def _step_kind(requested: str, sorts_rows: bool, backend: str, scope: str, platform: str,
               num_devices: int) -> str:
  """The train step a run uses: "direct", "split" or "recompute"; the one place that decides."""
  if requested != "auto":
    return requested
  sorts_in_numpy = sorts_rows and backend in ("auto", "numpy") and scope != "local"
  return "split" if platform == "cpu" and num_devices > 1 and sorts_in_numpy else "direct"


def _check_combination(step_kind: str, loss_config, sorts_rows: bool, scope: str,
                       platform: str, num_devices: int) -> None:
  """The config errors of a step kind that cannot compute this loss on these devices."""
  if step_kind in SPLIT_STEP_KINDS and scope == "local":
    raise errors.ConfigError(
        f"config.train_step={step_kind!r}: the split steps mine the whole global batch between "
        "two programs, not each device's rows alone (config.loss.mining_scope='local').",
        "set config.train_step='direct' (or 'auto') to mine locally")
  # A host callback inside a program sharded over several CPU devices deadlocks XLA:CPU.
  if (step_kind == "direct" and sorts_rows and loss_config.mining_backend == "numpy"
      and num_devices > 1 and platform == "cpu"):
    raise errors.ConfigError(
        f"config.loss.mining_backend='numpy': the direct train step over {num_devices} CPU "
        "devices cannot call the NumPy miner (a host callback in a sharded program deadlocks "
        "XLA:CPU).", "leave config.train_step='auto' (it then splits the step and mines in "
        "NumPy), or set config.loss.mining_backend='auto'")


def make_plan(config: ml_collections.ConfigDict, *, global_batch_size: int | None = None,
              mining_scope: str | None = None, platform: str | None = None,
              num_devices: int | None = None) -> ExecutionPlan:
  """The execution plan of `config` on this machine.

  Args:
    config: a checked training config.
    global_batch_size: the rows of a step's batch; default config.batch.batch_size (the pairs
      task's batch holds 3 rows per triplet).
    mining_scope: default config.loss.mining_scope (the pairs task computes its loss on the
      whole batch: "replicated").
    platform: where the model runs; default `jax.default_backend()`.
    num_devices: the devices the batch is split over; default `jax.device_count()`.

  Raises:
    errors.ConfigError: a step kind that cannot compute this loss on these devices.
  """
  platform = jax.default_backend() if platform is None else platform
  num_devices = jax.device_count() if num_devices is None else num_devices
  batch = config.batch.batch_size if global_batch_size is None else global_batch_size
  scope = config.loss.mining_scope if mining_scope is None else mining_scope
  loss = losses.MINED_LOSSES.get(config.loss.name)  # None: the pairs task's explicit loss.
  sorts_rows = loss is not None and loss.sorts_rows
  requested = config.train_step
  if requested not in TRAIN_STEP_CHOICES:
    raise errors.ConfigError(f"config.train_step={requested!r}: must be one of "
                             f"{', '.join(map(repr, TRAIN_STEP_CHOICES))}.")
  backend = config.loss.mining_backend
  step_kind = _step_kind(requested, sorts_rows, backend, scope, platform, num_devices)
  _check_combination(step_kind, config.loss, sorts_rows, scope, platform, num_devices)
  sharded_backend = single_backend = None
  if sorts_rows:
    columns = batch // num_devices if scope == "local" else batch
    sharded_backend = mining.resolve_backend(backend, num_columns=columns, platform=platform,
                                             num_devices=num_devices)
    single_backend = mining.resolve_backend(backend, num_columns=batch, platform=platform,
                                            num_devices=1)
  return ExecutionPlan(step_kind=step_kind, mining_scope=scope, mining_backend=sharded_backend,
                       single_device_mining_backend=single_backend,
                       forward_chunks=config.model.forward_chunks, global_batch_size=batch,
                       num_devices=num_devices, platform=platform)
