"""The embedded default: scikit-learn's 8x8 handwritten digits, no network needed.

  python -m tripletjax.main --config=configs/digits.py --workdir=runs/digits-semihard
  python -m tripletjax.main --config=configs/digits.py --workdir=runs/digits-hard \
      --config.loss.name=hard

Result: test leave-one-out precision@1 0.9867, MAP@R 0.905 (batch-hard: 0.8867); runs and
timings in benchmarks/RESULTS.md.
"""

from tripletjax.app.config import defaults


def get_config():
  config = defaults.get_config()
  config.data.name = "digits"
  config.model.name = "tfa_cnn"
  config.model.embedding_dim = 64
  config.batch.batch_size = 128
  config.num_epochs = 30
  config.optimizer.learning_rate = 2e-3
  config.optimizer.schedule = "cosine"
  config.eval_every_epochs = 5
  config.checkpoint_every_epochs = 5
  return config
