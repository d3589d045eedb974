"""Embeds images with a trained run's embedder into a file: `python -m tripletjax.embed`.

  python -m tripletjax.embed --workdir runs/f --images folder:/photos --out embeddings.npz
  python -m tripletjax.embed --workdir runs/f --images a.png b.jpg --out embeddings.tsv

Images are files, folders (a dataset folder in any layout `folder:` reads, labelled by class
folder, or a folder of image files), `folder:<path>`, or one `.npy` array of images in the
training layout. Files are decoded, resized and cropped as the run's evaluation does, a few
batches ahead of the model in worker threads: memory holds a few batches of images whatever
the folder's size. `.npz` holds the embeddings with the images' paths, labels and the run;
`.tsv` the Embedding Projector's vectors, with `<name>.meta.tsv` beside it.
"""

from __future__ import annotations

import sys
from typing import Sequence

from tripletjax.app.inference import commands
from tripletjax.app.inference import workdirs


def _parser():
  parser = commands.parser("tripletjax.embed", __doc__.splitlines()[0])
  parser.add_argument("--images", nargs="+", required=True,
                      help="Image files, folders, folder:<path>, or one .npy array.")
  parser.add_argument("--out", required=True, help="The output file: .npz or .tsv.")
  return parser


def run(argv: Sequence[str] | None = None) -> None:
  args = commands.parse(_parser(), argv)
  workdirs.check_is_run(args.workdir)  # Before JAX and flax load: seconds.
  from tripletjax.app.inference import outputs  # pylint: disable=import-outside-toplevel
  outputs.check_path(args.out)
  commands.set_cpu_devices(args.cpu_devices)
  import numpy as np  # pylint: disable=import-outside-toplevel
  from tripletjax.app.inference import embedder as embedder_lib
  from tripletjax.app.inference import sources  # pylint: disable=import-outside-toplevel
  embedder = embedder_lib.load_embedder(args.workdir, args.step, args.batch_size)
  images = sources.read_images(embedder, args.images)
  print(f"Embedding {len(images)} images with {args.workdir} (step {embedder.step}).",
        flush=True)
  parts = list(embedder.iter_embeddings(images.images, progress=True))
  embeddings = np.concatenate(parts)
  written = outputs.write_embeddings(args.out, embeddings, images, embedder.describe())
  print(f"Wrote {' and '.join(written)}: {len(embeddings)} embeddings of "
        f"{embeddings.shape[1]} dimensions.")


def main(argv: Sequence[str] | None = None) -> None:
  commands.main_guard(run, argv)


if __name__ == "__main__":
  main(sys.argv[1:])
