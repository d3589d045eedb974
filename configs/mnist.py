"""MNIST, as in the TensorFlow Addons triplet-loss tutorial (TripletSemiHardLoss on MNIST).

  python -m tripletjax.main --config=configs/mnist.py

Needs either the four MNIST IDX files (--config.data.data_dir=/path/to/mnist, the usual
train-images-idx3-ubyte.gz ... names) or an `mnist` already prepared by tensorflow-datasets
(tfds reads prepared data without TensorFlow but needs TensorFlow to prepare it). Offline, use
configs/digits.py or configs/fashion_mnist.py.
"""

from tripletjax.app.config import defaults


def get_config():
  config = defaults.get_config()
  config.data.name = "mnist"
  config.model.name = "tfa_cnn"
  config.model.embedding_dim = 256  # The tutorial's Dense(256).
  config.loss.margin = 1.0  # TFA's default.
  config.batch.batch_size = 256
  config.num_epochs = 5
  config.optimizer.learning_rate = 1e-3
  config.log_every_steps = 50
  config.export.projector_max_points = 5000
  return config
