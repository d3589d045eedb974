"""In-Shop Clothes Retrieval: queries search a separate gallery of unseen clothing items.

  # The official release (Eval/list_eval_partition.txt and img/):
  python -m tripletjax.main --config=configs/inshop.py \
      --config.data.name=folder:/path/to/InShop --workdir=runs/inshop
  # With ImageNet-pretrained ResNet-50 weights:
  python -m tripletjax.main --config=configs/inshop.py \
      --config.data.name=folder:/path/to/InShop \
      --config.model.weights=/path/to/resnet50.pth --workdir=runs/inshop-pretrained

The split of Liu et al., "DeepFashion" (CVPR 2016): 25,882 training images of 3,997 items; 14,218
query images search a gallery of 12,612 images of 3,985 other items; recall@1/10/20/30/40/50
over the gallery, with MAP@R (R: the gallery images of the query's item). Trained as the other
benchmark configs (the "A Metric Learning Reality Check" recipe: random resized crops and
flips, RMSprop at 1e-6, batch_all over batches of 16 items x 2 images, a quarter of the
training items held out for validation) with 512-d embeddings as In-Shop papers use; margin 0.1
(the paper tuned none for In-Shop, which it does not cover).

Compare with Wang et al., "Multi-Similarity Loss with General Pair Weighting for Deep Metric
Learning" (CVPR 2019), In-Shop table: recall@1/10/20/30/40/50 of 89.7 / 97.9 / 98.5 / 98.8 /
99.1 / 99.2 (%) with BN-Inception and 512-d embeddings, a tuned loss with its own mining: an
upper reference for a plain triplet loss.
"""

from tripletjax.app.config import recipes


def get_config():
  config = recipes.metric_learning_reality_check("folder:data/InShop")
  config.model.embedding_dim = 512
  config.loss.margin = 0.1
  config.batch.classes_per_batch = 16
  config.batch.samples_per_class = 2
  config.num_epochs = 50
  config.eval_every_epochs = 5
  config.checkpoint_every_epochs = 1
  config.log_every_steps = 100
  config.eval.recall_ks = (1, 10, 20, 30, 40, 50)
  return config
