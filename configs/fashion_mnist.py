"""Fashion-MNIST (real, 60k/10k 28x28) from Debian's dataset-fashion-mnist package.

  sudo apt-get install dataset-fashion-mnist   # files in /usr/share/datasets/fashion-mnist
  python -m tripletjax.main --config=configs/fashion_mnist.py --workdir=runs/fashion-semihard
  python -m tripletjax.main --config=configs/fashion_mnist.py --workdir=runs/fashion-hard \
      --config.loss.name=hard

Other IDX directory: --config.data.data_dir=/path/to/fashion-mnist.

Result (measured 2026-11-23 on the 2-core CPU, this config as it stands, two CPU devices):
test leave-one-out precision@1 0.8994, MAP@R 0.7953, recall@{1,2,4,8}
0.899/0.935/0.955/0.966, test-vs-train 1-NN accuracy 0.910, after 20 epochs and 752 s of
training (`train_seconds` in eval.json; raw pixels give 0.809). The 0.90 target is reached
in some runs but not reliably; runs of this recipe (semi-hard, margin 0.2, seed-002 CNN without
dropout, batch 256, Adam 1e-3 with cosine decay) so far:
  * 20 epochs, 4 forward chunks: 0.8994 after 752 s (0.9002 at epoch 18);
  * 20 epochs, no chunks (epochs took 41-49 s, total not recorded, about 880 s): 0.9016;
  * 22 epochs, 4 forward chunks: 0.8984 after 702 s;
  * 20 epochs, 4 forward chunks, learning rate 2e-3: 0.8982 after 748 s;
  * 20 epochs, 4 forward chunks, 128-d embeddings: 0.8993 after 760 s;
  * 15 epochs, one CPU device: 0.8967 after 908 s;
  * 18 epochs with left-right flips: 0.8914; 18 epochs at batch 128: 0.8959 after 686 s.
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
  # XLA:CPU convolves small batches faster per image: 4 chunks (32 images per device each, on
  # 2 devices) make the step 1.4x faster (202 -> 147 ms on 2 cores); the loss mines all 256.
  config.model.forward_chunks = 4
  config.num_epochs = 20
  config.eval_every_epochs = 2
  config.optimizer.learning_rate = 1e-3
  config.optimizer.schedule = "cosine"
  config.log_every_steps = 50
  config.export.projector_max_points = 5000
  return config
