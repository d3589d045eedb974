"""CUB-200-2011 under the metric-learning protocol: train on classes 1-100, retrieve 101-200.

  # The images of CUB_200_2011.tgz (one folder per class, 001.Black_footed_Albatross, ...):
  python -m tripletjax.main --config=configs/cub200.py \
      --config.data.name=folder:/path/to/CUB_200_2011/images --workdir=runs/cub200
  # With ImageNet-pretrained ResNet-50 weights (the protocol's starting point):
  python -m tripletjax.main --config=configs/cub200.py \
      --config.data.name=folder:/path/to/CUB_200_2011/images \
      --config.model.weights=/path/to/resnet50.pth --workdir=runs/cub200-pretrained

The setting of "A Metric Learning Reality Check" (Musgrave, Belongie and Lim, ECCV 2020): all
images of classes 1-100 (5,864) train, all of classes 101-200 (5,924) are searched leave-one-out;
a quarter of the training classes is held out for validation (one of the paper's four folds);
batches of 32 = 8 classes x 4 images; random resized crops (scale 0.16-1) and flips for
training, resize 256 + centre crop for evaluation; RMSprop at 1e-6 with weight decay 5e-5 and
momentum 0.9; the triplet loss over all triplets of the batch, averaged over the active ones
(batch_all: pytorch-metric-learning's TripletMarginLoss) with the paper's optimised margin.
Differences: ResNet-50 at 224 x 224 instead of BN-Inception at 227 x 227, BatchNorm not frozen.

Compare with the paper's Table 3, row "Triplet", CUB200 columns (precision@1 / R-precision /
MAP@R in %, BN-Inception pretrained on ImageNet): 64.24 / 34.55 / 23.69 for the four fold
models' 128-d embeddings concatenated (512-d); the table's "separated 128-dim" columns give one
model's, the figure to set this config's single 128-d model against.
"""

from tripletjax.app.config import recipes


def get_config():
  config = recipes.metric_learning_reality_check("folder:data/CUB_200_2011/images")
  config.data.class_split = "half"
  config.loss.margin = 0.0961
  config.batch.classes_per_batch = 8
  config.batch.samples_per_class = 4
  config.num_epochs = 100
  config.eval_every_epochs = 5
  config.checkpoint_every_epochs = 5
  config.log_every_steps = 50
  config.eval.recall_ks = (1, 2, 4, 8)
  return config
