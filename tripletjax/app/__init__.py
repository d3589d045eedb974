"""The training application: data, models, the trainer, evaluation, checkpoints and exports.

`python -m tripletjax.main --config=configs/X.py` runs it. A batch goes from disk to update
through, in order:

  tasks/                  what is trained on, by kind of data (the `Task` protocol in
                          tasks/base.py):
    labelled images:      tasks/labelled.py; data/datasets.py (images and labels on the
                          host: digits, IDX files, tfds; or image files, folder: in
                          data/folders.py; class splits in data/splits.py) ->
                          data/samplers.py (the indices of each global batch, deterministic
                          per seed and epoch) -> data/pipeline.py (the rows through
                          data/augmentations.py, or the files decoded by data/images.py's
                          worker threads; deterministic per seed, epoch and step)
    pairs of images:      tasks/pairs.py; data/pairs.py (pair folders or CSVs; (anchor,
                          positive, negative) triplets, deterministic per seed and epoch) ->
                          data/images.py (files decoded and resized in worker threads)
  models/                 the embedding networks and their pretrained backbones
  devices/                the device mesh, the batch sharded over it (mesh.py); the
                          processes of a run (processes.py)
  step/                   the train step (train_step.py): model forward, the task's loss
                          over the global batch, Optax update (optimizers.py); split into
                          two programs over virtual batches (virtual_batch.py)
  loop/                   the loop (train.py): steps, checkpoints (checkpointing.py), stop
                          signals (preemption.py)
  evaluation/             embeddings ranked as a retrieval system (evaluate.py; the
                          metrics in retrieval.py; the neighbour search in search.py and
                          faiss_index.py), or scored on held-out pairs (pair_evaluation.py)
  outputs/                what a run writes: metric logs, the mining-health monitor,
                          exports and reports
  config/                 the defaults, the checks of a config, the rules of a resume

Its dependencies (flax, optax, orbax, ml_collections, scikit-learn, matplotlib, ...) are the
`app` extra; the losses in `tripletjax` itself need only jax and numpy.
"""
