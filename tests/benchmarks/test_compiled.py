"""`benchmarks/compiled.py`: what it reads from the text of a compiled program."""

from __future__ import annotations

from benchmarks import compiled

# Lines in the form of XLA:GPU's optimised HLO: a sort XLA rewrote to CUB's radix sort (a
# custom call with its scratch buffer), and one it kept (three operands).
GPU_HLO = "\n".join([
    "ENTRY %main {",
    "  %p0 = u32[256,16384]{1,0} parameter(0)",
    "  %p1 = s32[256,16384]{1,0} parameter(1)",
    "  %custom-call.1 = (u32[256,16384]{1,0}, s32[256,16384]{1,0}, u8[8448]{0}) "
    "custom-call(%p0, %p1), custom_call_target=\"__cub$DeviceRadixSort\", "
    "backend_config={\"descending\":false}",
    "  %sort.2 = (f32[64,64]{1,0}, s32[64,64]{1,0}, s32[64,64]{1,0}) sort(%a, %b, %c), "
    "dimensions={1}, to_apply=%compare",
    "  %sort.3 = u32[64,64]{1,0} sort(%d), dimensions={1}, is_stable=true, to_apply=%compare.1",
    "  %cublas = (f32[64,64]{1,0}, s8[0]{0}) custom-call(%x, %y), "
    "custom_call_target=\"__cublas$gemm\"",
    "}",
])


def test_sort_kernels_tells_cub_radix_sorts_from_xla_sorts():
  kernels = compiled.sort_kernels(GPU_HLO)
  assert kernels["cub_sorts"] == ["__cub$DeviceRadixSort"]
  assert kernels["xla_sorts"] == [3, 1]
  assert kernels["custom_calls"] == ["__cub$DeviceRadixSort", "__cublas$gemm"]


def test_largest_array_and_arrays_above_a_size():
  # u32[256,16384] and s32[256,16384] are equally large: the answer must not depend on the
  # order of a set of shapes (hash randomisation), so the last by type wins.
  assert compiled.largest_array(GPU_HLO) == ("u32[256,16384]", 256 * 16384)
  found = compiled.arrays_with_at_least(GPU_HLO, 64 * 64)
  assert found[:3] == ["u32[256,16384]", "s32[256,16384]", "u8[8448]"]
  assert set(found[3:]) == {"f32[64,64]", "s32[64,64]", "u32[64,64]"}
  assert compiled.arrays_with_at_least(GPU_HLO, 256 * 16384 + 1) == []
