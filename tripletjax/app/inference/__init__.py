"""Using a trained run: load its embedder, embed images, build and search an index, export.

  embedder.py   `load_embedder(workdir, step=None)`: the run's model and parameters, mapping
                images (arrays in the training layout, image files, folders) to embeddings
  sources.py    what to embed: image files, folders and `folder:` datasets, the run's test set
  index.py      an index of a gallery's embeddings, saved to disk, searched with the
                evaluation's neighbour search
  picture.py    queries beside their nearest neighbours, with similarities
  export.py     the embedder serialised with `jax.export`, callable with JAX and NumPy alone

The command lines are `python -m tripletjax.embed`, `tripletjax.search` and
`tripletjax.export`.
"""

__all__ = ["Embedder", "load_embedder"]


def __getattr__(name):
  # Imported on first use: the command lines check their flags before flax and JAX load.
  if name in __all__:
    from tripletjax.app.inference import embedder  # pylint: disable=import-outside-toplevel
    return getattr(embedder, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
