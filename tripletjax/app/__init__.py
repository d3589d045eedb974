"""The training application: data, models, the trainer, evaluation, checkpoints and exports.

`python -m tripletjax.main --config=configs/X.py` runs it. A batch goes from disk to update
through, in order:

  tasks.py                what is trained on, by kind of data:
    labelled images:      data/datasets.py (images and labels on the host: digits, IDX
                          files, tfds; or image files, folder: in data/folders.py; class
                          splits in data/splits.py) -> data/samplers.py (the indices of each
                          global batch, deterministic per seed and epoch) -> data/pipeline.py
                          (the rows through data/augmentations.py, or the files decoded by
                          data/images.py's worker threads; deterministic per seed, epoch and
                          step)
    pairs of images:      data/pairs.py (pair folders or CSVs; (anchor, positive, negative)
                          triplets, deterministic per seed and epoch) -> data/images.py (files
                          decoded and resized in worker threads, a few batches ahead)
  parallel.py             the device mesh; the batch sharded over it
  train_step.py           model forward, the task's loss over the global batch, Optax update
  train.py                the loop: steps, logging, the mining-health monitor (monitor.py),
                          evaluation, checkpoints, exports

Its dependencies (flax, optax, orbax, ml_collections, scikit-learn, matplotlib, ...) are the
`app` extra; the losses in `tripletjax` itself need only jax and numpy.
"""
