"""What a compiled XLA program holds, read from the program itself.

For the scaling and accelerator benchmarks and the tests of sharded programs:

  * `array_shapes` / `largest_array`: the array shapes in the optimised HLO (`compiled
    .as_text()`). After SPMD partitioning these are per-device shapes, so a program whose
    largest array has fewer than B^2 elements allocates no full [B, B] array on any device.
  * `memory_mb`: XLA's `compiled.memory_analysis()` per device (arguments, outputs,
    temporaries), in MB.
  * `sort_kernels`: how the program sorts: XLA's own `sort` instructions (with their operand
    counts) and custom calls to CUB's radix sort, which XLA:GPU substitutes for a sort of one
    or two operands that compares one key (XLA's GPU sort rewriter); a three-operand sort
    never goes there.
"""

from __future__ import annotations

import math
import re

# An HLO array type: element type and dimensions, e.g. f32[128,1024]{1,0} or pred[].
_ARRAY = re.compile(r"\b(pred|[subf]\d+|bf16|c64|c128|token)\[([\d,]*)\]")
# A sort instruction: `%name = (f32[..], s32[..]) sort(...)` or `%name = f32[..] sort(...)`.
_SORT = re.compile(r"=\s*(\([^=]*?\)|\S+)\s+sort\(")
_CUSTOM_CALL_TARGET = re.compile(r'custom_call_target="([^"]+)"')


def array_shapes(hlo_text: str) -> set[tuple[str, tuple[int, ...]]]:
  """Every (element type, dimensions) that occurs in the HLO text."""
  return {(dtype, tuple(int(d) for d in dims.split(",") if d))
          for dtype, dims in _ARRAY.findall(hlo_text)}


def largest_array(hlo_text: str) -> tuple[str, int]:
  """The shape (as text, e.g. "f32[128,1024]") and element count of the largest array (among
  equally large ones, the last by element type and dimensions, so the answer never depends on
  the order of a set)."""
  dtype, dims = max(array_shapes(hlo_text),
                    key=lambda shape: (math.prod(shape[1]), shape[0], shape[1]))
  return f"{dtype}[{','.join(map(str, dims))}]", math.prod(dims)


def arrays_with_at_least(hlo_text: str, elements: int) -> list[str]:
  """The shapes (as text) of the arrays with at least `elements` elements, largest first."""
  shapes = sorted(((math.prod(dims), dtype, dims) for dtype, dims in array_shapes(hlo_text)
                   if math.prod(dims) >= elements), reverse=True)
  return [f"{dtype}[{','.join(map(str, dims))}]" for _, dtype, dims in shapes]


def memory_mb(compiled) -> dict | None:
  """XLA's per-device memory analysis of a compiled program, in MB (None where unsupported)."""
  try:
    analysis = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  # Not every backend implements it.
    return None
  if analysis is None:
    return None
  sizes = {
      "argument_mb": analysis.argument_size_in_bytes,
      "output_mb": analysis.output_size_in_bytes,
      "temp_mb": analysis.temp_size_in_bytes,
      "alias_mb": getattr(analysis, "alias_size_in_bytes", 0),
  }
  sizes = {name: value / 2**20 for name, value in sizes.items()}
  sizes["total_mb"] = (sizes["argument_mb"] + sizes["output_mb"] + sizes["temp_mb"]
                       - sizes["alias_mb"])
  return sizes


def sort_kernels(hlo_text: str) -> dict:
  """How the program sorts.

  Returns:
    {"xla_sorts": the operand count of each XLA `sort` instruction, "cub_sorts": the custom
    calls to CUB's radix sort, "custom_calls": every custom-call target}.
  """
  operand_counts = []
  for result in _SORT.findall(hlo_text):
    operand_counts.append(len(_ARRAY.findall(result)) if result.startswith("(") else 1)
  targets = _CUSTOM_CALL_TARGET.findall(hlo_text)
  # XLA:GPU's target is "__cub$DeviceRadixSort" (cuBLAS' "__cublas$..." is no sort).
  cub = [t for t in targets if t.startswith("__cub$") or "radixsort" in t.lower()]
  return {"xla_sorts": operand_counts, "cub_sorts": cub, "custom_calls": sorted(set(targets))}
