"""Where the sorting miners (semi-hard, batch-all) run: the one place that decides.

A loss's `mining_backend` option is what the user asks for:

  * "auto" (the default): "numpy" when the program runs on the CPU on a single device, "xla"
    otherwise;
  * "numpy": the rows are sorted and mined in NumPy on the host, through `jax.pure_callback`
    (`mining.host`). On a CPU this is much faster than XLA:CPU's sort followed by dense
    passes: after one sort only the positive pairs need work;
  * "xla": everything inside the XLA program (`lax.sort` and dense [C, B] passes), for GPUs
    and TPUs, and for programs sharded over several CPU devices, where a host callback
    deadlocks XLA:CPU's collectives (jax 0.10).

`resolve_backend` turns the request into a resolved backend, which also says how XLA sorts: on
the CPU by one uint32 rank key per entry (XLA:CPU sorts single integer operands on a fast
path), elsewhere by (value, tag, column) as three sort operands. "xla:rank_key" and
"xla:three_keys" force one of the two, and "xla:packed_key" a third: one stable sort of a
uint32 (value, tag) key carrying the column, the shape of sort that XLA:GPU may replace by
CUB's radix sort (for benchmarks and tests; `mining.row_sort`).
"""

from __future__ import annotations

import jax

from tripletjax.mining import keys as keys_lib

BACKENDS = ("auto", "numpy", "xla", "xla:rank_key", "xla:three_keys", "xla:packed_key")

# What `resolve_backend` returns: where the miners run and, in XLA, how rows are sorted.
NUMPY = "numpy"
RANK_KEY = "xla:rank_key"
THREE_KEYS = "xla:three_keys"
PACKED_KEY = "xla:packed_key"
RESOLVED = (NUMPY, RANK_KEY, THREE_KEYS, PACKED_KEY)


def check_backend(mining_backend: str) -> str:
  if mining_backend not in BACKENDS:
    raise ValueError(f"Unknown mining_backend {mining_backend!r}; expected one of {BACKENDS}.")
  return mining_backend


def check_resolved(mining_backend: str) -> str:
  """Rejects a backend that `resolve_backend` would not return ("auto", "xla", typos)."""
  if mining_backend not in RESOLVED:
    raise ValueError(f"mining_backend {mining_backend!r} is not resolved; expected one of "
                     f"{RESOLVED} (see resolve_backend).")
  return mining_backend


def resolve_backend(mining_backend: str = "auto", *, num_columns: int,
                    platform: str | None = None, num_devices: int | None = None) -> str:
  """The backend a sorting miner uses: `NUMPY`, `RANK_KEY`, `THREE_KEYS` or `PACKED_KEY`
  (`RESOLVED`).

  Idempotent: a resolved backend resolves to itself (or to `THREE_KEYS` for rank keys on rows
  too long for them).

  Args:
    mining_backend: one of `BACKENDS`, what the caller asked for.
    num_columns: the length of the rows to sort (rank keys fit rows of at most
      `keys.RANK_KEY_MAX_COLUMNS`).
    platform: the platform the program runs on; default `jax.default_backend()`.
    num_devices: the devices the program may be sharded over; default `jax.device_count()`.
      Pass 1 for a program known to run on a single device.
  """
  check_backend(mining_backend)
  platform = jax.default_backend() if platform is None else platform
  num_devices = jax.device_count() if num_devices is None else num_devices
  if mining_backend == "auto":
    mining_backend = NUMPY if platform == "cpu" and num_devices == 1 else "xla"
  if mining_backend == "xla":
    mining_backend = RANK_KEY if platform == "cpu" else THREE_KEYS
  if mining_backend == RANK_KEY and num_columns > keys_lib.RANK_KEY_MAX_COLUMNS:
    mining_backend = THREE_KEYS
  return mining_backend
