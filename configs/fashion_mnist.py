"""Fashion-MNIST (real, 60k/10k 28x28) from Debian's dataset-fashion-mnist package.

  sudo apt-get install dataset-fashion-mnist   # files in /usr/share/datasets/fashion-mnist
  python -m tripletjax.main --config=configs/fashion_mnist.py --workdir=runs/fashion-semihard
  python -m tripletjax.main --config=configs/fashion_mnist.py --workdir=runs/fashion-hard \
      --config.loss.name=hard

Other IDX directory: --config.data.data_dir=/path/to/fashion-mnist.

Result (measured 2026-11-23 on the 2-core CPU, `runs/fashion-semihard` style run): test
leave-one-out precision@1 0.8967, MAP@R 0.7905, recall@{1,2,4,8} 0.897/0.934/0.952/0.966,
test-vs-train 1-NN accuracy 0.908, after 15 epochs and 908 s of training (raw pixels: 0.809).
The target of 0.90 within 15 minutes is not reached yet: 0.8939-0.8970 over epochs 10-15.
"""

from tripletjax import default_config


def get_config():
  config = default_config.get_config()
  config.data.name = "fashion_mnist"
  config.model.name = "hsu_cnn"
  config.model.embedding_dim = 64
  # Without dropout: 0.853 / 0.865 / 0.877 precision@1 after epochs 1-3, against 0.837 / 0.853 /
  # 0.858 with seed 002's dropout of 0.3, which slows a 15-minute training more than it helps.
  config.model.dropout_rate = 0.0
  config.loss.margin = 0.2
  config.batch.batch_size = 256
  config.num_epochs = 15
  config.optimizer.learning_rate = 1e-3
  config.optimizer.schedule = "cosine"
  config.log_every_steps = 50
  config.export.projector_max_points = 5000
  return config
