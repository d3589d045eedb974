"""Fashion-MNIST (real, 60k/10k 28x28) from Debian's dataset-fashion-mnist package.

  sudo apt-get install dataset-fashion-mnist   # files in /usr/share/datasets/fashion-mnist
  python -m tripletjax.main --config=configs/fashion_mnist.py --workdir=runs/fashion-semihard
  python -m tripletjax.main --config=configs/fashion_mnist.py --workdir=runs/fashion-hard \
      --config.loss.name=hard

Other IDX directory: --config.data.data_dir=/path/to/fashion-mnist.

Result (measured, see README): precision@1 PENDING.
"""

from tripletjax import default_config


def get_config():
  config = default_config.get_config()
  config.data.name = "fashion_mnist"
  config.model.name = "hsu_cnn"
  config.model.embedding_dim = 64
  config.loss.margin = 0.2
  config.batch.batch_size = 256
  config.num_epochs = 15
  config.optimizer.learning_rate = 1e-3
  config.optimizer.schedule = "cosine"
  config.log_every_steps = 50
  config.export.projector_max_points = 5000
  return config
