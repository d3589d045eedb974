"""Stanford Online Products: 11,318 product classes train, 11,316 unseen ones are retrieved.

  # The official release (Ebay_train.txt, Ebay_test.txt and the *_final/ folders):
  python -m tripletjax.main --config=configs/sop.py \
      --config.data.name=folder:/path/to/Stanford_Online_Products --workdir=runs/sop
  # With ImageNet-pretrained ResNet-50 weights (the protocol's starting point):
  python -m tripletjax.main --config=configs/sop.py \
      --config.data.name=folder:/path/to/Stanford_Online_Products \
      --config.model.weights=/path/to/resnet50.pth --workdir=runs/sop-pretrained

The setting of "A Metric Learning Reality Check" (Musgrave, Belongie and Lim, ECCV 2020): the
official class-disjoint split (59,551 training images, 60,502 test images searched
leave-one-out, recall@1/10/100/1000 as SOP papers report it); a quarter of the training
classes held out for validation; random resized crops and flips, resize 256 + centre crop for
evaluation; RMSprop at 1e-6, weight decay 5e-5, momentum 0.9; batch_all
(pytorch-metric-learning's TripletMarginLoss) with the paper's optimised margin for SOP.
Batches of 32 = 16 classes x 2 images: SOP classes have as few as 2 images (the paper's
sampler takes 4 per class, repeating images of smaller classes). Differences: ResNet-50 at
224 x 224 instead of BN-Inception at 227 x 227, BatchNorm not frozen. Recall@1000 needs
1000 neighbours per query, which NumPy finds faster than faiss on a CPU (config.eval.backend).

Compare with the paper's Table 3, row "Triplet", SOP columns (precision@1 / R-precision /
MAP@R, "separated 128-dim" for one model like this config's).
"""

from tripletjax.app.config import recipes


def get_config():
  config = recipes.metric_learning_reality_check("folder:data/Stanford_Online_Products")
  config.loss.margin = 0.0451
  config.batch.classes_per_batch = 16
  config.batch.samples_per_class = 2
  config.num_epochs = 50
  config.eval_every_epochs = 5
  config.checkpoint_every_epochs = 1
  config.log_every_steps = 100
  config.eval.recall_ks = (1, 10, 100, 1000)
  return config
