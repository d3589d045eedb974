"""The training application: data, models, the trainer, evaluation, checkpoints and exports.

`python -m tripletjax.main --config=configs/X.py` runs it. A batch goes from disk to update
through, in order:

  data/datasets.py        images and labels on the host (digits, IDX files, tfds), or image
                          files (folder:, data/folders.py), class splits (data/splits.py)
  data/samplers.py        the indices of each global batch (deterministic per seed and epoch)
  data/pipeline.py        the rows, augmented (data/augmentations.py), or the files decoded
                          in worker threads (data/images.py); deterministic per seed, epoch
                          and step
  parallel.py             the device mesh; the batch sharded over it
  train_step.py           model forward, the mined loss over the global batch, Optax update
  train.py                the loop: steps, logging, the mining-health monitor (monitor.py),
                          evaluation, checkpoints, exports

Its dependencies (flax, optax, orbax, ml_collections, scikit-learn, matplotlib, ...) are the
`app` extra; the losses in `tripletjax` itself need only jax and numpy.
"""
