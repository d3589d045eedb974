"""Fashion-MNIST (real, 60k/10k 28x28) from Debian's dataset-fashion-mnist package.

  sudo apt-get install dataset-fashion-mnist   # files in /usr/share/datasets/fashion-mnist
  python -m tripletjax.main --config=configs/fashion_mnist.py --workdir=runs/fashion-semihard
  python -m tripletjax.main --config=configs/fashion_mnist.py --workdir=runs/fashion-hard \
      --config.loss.name=hard

Other IDX directory: --config.data.data_dir=/path/to/fashion-mnist.

Result (measured 2026-11-23 on the 2-core CPU, this config as it stands, two CPU devices):
test leave-one-out precision@1 0.9042, MAP@R 0.8003, recall@{1,2,4,8} 0.904/0.938/0.956/0.968,
NMI 0.845, test-vs-train 1-NN accuracy 0.913, after 20 epochs and 776 s of training
(`train_seconds` in eval.json; raw pixels give 0.809). With --config.seed=1: precision@1
0.9031, MAP@R 0.7992, 1-NN accuracy 0.915, after 709 s. On a fresh clone of 90f5ccd (the rank-key
sort in the multi-device miner): the same 0.9042 at every evaluation, after 574 s. With --config.num_epochs=24 (after
the rank-key sort made steps faster): 0.9019, MAP@R 0.8023, after 880 s, so 20 epochs stay.
With --config.data.augment=shift (up to 2 pixels): 0.8839 after 619 s; 20 epochs are too few
for translated images to pay off.

What got it there: BatchNorm in seed 002's CNN (model.batch_norm) with a 3x higher learning
rate. The same recipe without BatchNorm at learning rate 1e-3 (semi-hard, margin 0.2, no
dropout, batch 256, cosine decay) hovers at 0.90 without reliably passing it:
  * 20 epochs, 4 forward chunks: 0.8994 after 752 s (0.9002 at epoch 18);
  * 20 epochs, no chunks (epochs took 41-49 s, total not recorded, about 880 s): 0.9016;
  * 22 epochs, 4 forward chunks: 0.8984 after 702 s;
  * 20 epochs, 4 forward chunks, learning rate 2e-3: 0.8982 after 748 s;
  * 20 epochs, 4 forward chunks, 128-d embeddings: 0.8993 after 760 s;
  * 15 epochs, one CPU device: 0.8967 after 908 s;
  * 18 epochs with left-right flips: 0.8914; 18 epochs at batch 128: 0.8959 after 686 s.
4-epoch runs (cosine over 4 epochs) that chose the change: 0.8801 without BatchNorm at 1e-3;
0.8883 with BatchNorm and ReLU at 1e-3, 0.8916 at 3e-3 (a prototype; the model keeps seed 002's
LeakyReLU); 0.8884 for a 3-conv BatchNorm net (5x5/2 32, 3x3 64, 3x3/2 64) at 1.4x the time.
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
  # BatchNorm after each convolution, which makes 3e-3 a good learning rate (see above; without
  # it 2e-3 gave no gain over 1e-3).
  config.model.batch_norm = True
  config.loss.margin = 0.2
  config.batch.batch_size = 256
  # XLA:CPU convolves small batches faster per image: 4 chunks (32 images per device each, on
  # 2 devices) make the step 1.4x faster (202 -> 147 ms on 2 cores); the loss mines all 256.
  config.model.forward_chunks = 4
  config.num_epochs = 20
  config.eval_every_epochs = 2
  config.optimizer.learning_rate = 3e-3
  config.optimizer.schedule = "cosine"
  config.log_every_steps = 50
  config.export.projector_max_points = 5000
  return config
