"""Cars196 under the metric-learning protocol: train on classes 1-98, retrieve 99-196.

  # The official release (cars_annos.mat and car_ims/ in one folder):
  python -m tripletjax.main --config=configs/cars196.py \
      --config.data.name=folder:/path/to/cars196 --workdir=runs/cars196
  # Or a folder of class sub-folders named so that they sort by class id (001, ..., 196):
  python -m tripletjax.main --config=configs/cars196.py \
      --config.data.name=folder:/path/to/cars196_by_class --workdir=runs/cars196
  # With ImageNet-pretrained ResNet-50 weights (the protocol's starting point):
  python -m tripletjax.main --config=configs/cars196.py \
      --config.data.name=folder:/path/to/cars196 \
      --config.model.weights=/path/to/resnet50.pth --workdir=runs/cars196-pretrained

The setting of "A Metric Learning Reality Check" (Musgrave, Belongie and Lim, ECCV 2020): the
official train and test images are pooled; all images of classes 1-98 (8,054) train, all of
classes 99-196 (8,131) are searched leave-one-out; a quarter of the training classes is held out
for validation; batches of 32 = 8 classes x 4 images; random resized crops and flips, resize
256 + centre crop for evaluation; RMSprop at 1e-6, weight decay 5e-5, momentum 0.9; batch_all
(pytorch-metric-learning's TripletMarginLoss) with the paper's optimised margin for Cars196.
Differences: ResNet-50 at 224 x 224 instead of BN-Inception at 227 x 227, BatchNorm not frozen.

Compare with the paper's Table 3, row "Triplet", Cars196 columns (precision@1 / R-precision /
MAP@R, "separated 128-dim" for one model like this config's).
"""

from tripletjax.app.config import recipes


def get_config():
  config = recipes.metric_learning_reality_check("folder:data/cars196")
  config.data.class_split = "half"
  config.loss.margin = 0.1190
  config.batch.classes_per_batch = 8
  config.batch.samples_per_class = 4
  config.num_epochs = 100
  config.eval_every_epochs = 5
  config.checkpoint_every_epochs = 5
  config.log_every_steps = 50
  config.eval.recall_ks = (1, 2, 4, 8)
  return config
