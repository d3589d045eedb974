"""Exports a trained run's embedder for serving: `python -m tripletjax.export`.

  python -m tripletjax.export --workdir runs/f --out embedder.jax

Writes the embedder serialised with `jax.export` (float32 [batch, H, W, C] images in [0, 1],
the training layout, -> L2-normalised float32 [batch, E] embeddings; the batch dimension
symbolic) and, beside it, `embedder.json`: the input's shape, layout and preprocessing, the
output, the run and checkpoint step. It runs where only `jax`, `numpy` and `flatbuffers`
(`jax.export`'s file format) are installed:

  import jax, numpy as np
  with open("embedder.jax", "rb") as f:
    embed = jax.export.deserialize(bytearray(f.read()))
  embeddings = np.asarray(embed.call(images))

The export is checked before the command ends: the file read back gives the loaded
embedder's embeddings of a few images to within 1e-6.
"""

from __future__ import annotations

import sys
from typing import Sequence

from tripletjax.app.inference import commands
from tripletjax.app.inference import workdirs

# The largest difference between the exported function and the embedder that passes the check.
TOLERANCE = 1e-6


def _parser():
  parser = commands.parser("tripletjax.export", __doc__.splitlines()[0])
  parser.add_argument("--out", default="embedder.jax", help="The exported file.")
  parser.add_argument("--saved_model", default=None,
                      help="Also write a TensorFlow SavedModel into this folder (needs "
                           "TensorFlow).")
  return parser


def run(argv: Sequence[str] | None = None) -> None:
  args = commands.parse(_parser(), argv)
  workdirs.check_is_run(args.workdir)  # Before JAX and flax load: seconds.
  commands.set_cpu_devices(args.cpu_devices)
  import numpy as np  # pylint: disable=import-outside-toplevel
  from tripletjax.app.inference import embedder as embedder_lib
  from tripletjax.app.inference import export  # pylint: disable=import-outside-toplevel
  embedder = embedder_lib.load_embedder(args.workdir, args.step, args.batch_size)
  meta = export.export_embedder(embedder, args.out)
  images = np.random.default_rng(0).uniform(size=(3, *embedder.input_shape)).astype(np.float32)
  error = export.check_roundtrip(embedder, args.out, images)
  if not error <= TOLERANCE:
    raise RuntimeError(f"the exported embedder differs from the run's by {error:.3g}")
  print(f"Wrote {args.out} ({', '.join(meta['platforms'])}; step {embedder.step}; input "
        f"float32 [batch, {', '.join(map(str, embedder.input_shape))}] in [0, 1] -> "
        f"[batch, {embedder.embedding_dim}]) and {export.metadata_path(args.out)}; checked: "
        f"max |difference| {error:.2g}. Load it with:\n\n{meta['loader']}")
  if args.saved_model:
    print(f"Wrote the SavedModel {export.export_saved_model(embedder, args.saved_model)} "
          "(signature serving_default).")


def main(argv: Sequence[str] | None = None) -> None:
  commands.main_guard(run, argv)


if __name__ == "__main__":
  main(sys.argv[1:])
