"""The Siamese three-tower workflow of the Keras example "Image similarity estimation using a
Siamese Network with a triplet loss": (anchor, positive, negative) triplets from pairs of images
known to look alike, the explicit triplet loss (squared L2, margin 0.5), Adam.

The default runs offline: a pair folder of two "photos" of each of 4,000 Fashion-MNIST items
(JPEG and PNG files of several sizes, written once into data_dir; needs `apt-get install
dataset-fashion-mnist`), a ResNet-18 of width 8 at 32 x 32 trained from scratch:

  python -m tripletjax.main --config=configs/siamese_pairs.py --workdir=runs/siamese-demo

The Keras example itself (Totally Looks Like: a folder of left/ and right/ images whose names
match; an ImageNet-pretrained ResNet-50 at 224 x 224 fine-tuned from stage4.block2, i.e. Keras'
conv5_block2, with the Dense 512-BN-Dense 256-BN-Dense 256 head, Adam 1e-4):

  python -m tripletjax.main --config=configs/siamese_pairs.py:resnet50 \\
      --config.data.name=pairs:/path/to/totally_looks_like \\
      --config.model.weights=/path/to/resnet50-11ad3fa6.pth --workdir=runs/siamese-tll

Result (default): validation triplet accuracy 0.9525, cosine similarity 0.835 (positive) vs
0.005 (negative), recall@1/5/10 0.064/0.250/0.375 among 800 pairs; runs and timings in
benchmarks/RESULTS.md.
"""

from tripletjax.app.config import defaults


def get_config(preset: str = "demo"):
  config = defaults.get_config()
  config.data.name = "pairs_demo:fashion_mnist"
  config.data.validation_fraction = 0.2
  config.loss.name = "triplet"
  config.loss.margin = 0.5
  config.batch.batch_size = 32
  config.model.resnet.head = "mlp"
  config.model.embedding_dim = 256
  config.optimizer.name = "adam"
  config.num_epochs = 6
  if preset == "resnet50":
    config.data.image_size = 224
    config.data.eval_resize = 224
    config.model.name = "resnet50"
    config.model.resnet.freeze_before = "stage4.block2"
    config.optimizer.learning_rate = 1e-4
  elif preset == "demo":
    config.data.image_size = 32
    config.data.eval_resize = 32
    config.model.name = "resnet18"
    config.model.resnet.width = 8
    config.optimizer.learning_rate = 1e-3
  else:
    raise ValueError(f"Unknown preset {preset!r}; expected 'demo' or 'resnet50'.")
  return config
