"""The default training configuration: every key the trainer reads, with its default.

Config files (configs/*.py) start from `get_config()` here and change only what differs, so a
typo in an override (`--config.loss.margn=0.2`) is an error rather than a silently new key.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_epochs = 10
  config.log_every_steps = 20
  config.eval_every_epochs = 1
  config.checkpoint_every_epochs = 1
  config.quiet = False  # True hides the progress bar.

  config.data = ml_collections.ConfigDict()
  config.data.name = "digits"  # digits | fashion_mnist | mnist | tfds:<name>
  config.data.data_dir = ml_collections.FieldReference(None, field_type=str)
  config.data.max_train = ml_collections.FieldReference(None, field_type=int)
  config.data.max_test = ml_collections.FieldReference(None, field_type=int)
  config.data.augment = "none"  # none | flip | shift | flip_shift (app/data/augmentations.py)
  config.data.max_shift = 2  # shift, flip_shift: largest translation in pixels.

  config.model = ml_collections.ConfigDict()
  config.model.name = "tfa_cnn"  # tfa_cnn | hsu_cnn | resnet18 | resnet34 | resnet50
  config.model.embedding_dim = 64
  # Model options; None keeps the model's own default.
  config.model.width = ml_collections.FieldReference(None, field_type=int)  # ResNets.
  config.model.dropout_rate = ml_collections.FieldReference(None, field_type=float)  # CNNs.
  config.model.batch_norm = ml_collections.FieldReference(None, field_type=bool)  # hsu_cnn.
  # Run the model on this many chunks of each device's batch, one after the other (the loss
  # still mines the whole batch). Smaller convolutions use the CPU caches better; with
  # BatchNorm the statistics become per chunk ("ghost" batch norm). See train.apply_in_chunks.
  config.model.forward_chunks = 1

  config.loss = ml_collections.ConfigDict()
  config.loss.name = "semihard"  # semihard | hard | batch_all | contrastive
  config.loss.margin = 0.5
  config.loss.metric = "l2"  # l2 | squared_l2 | angular
  config.loss.soft = False  # hard only: softplus instead of the hinge.
  # semihard, batch_all: where rows are sorted and mined, auto | numpy | xla
  # (tripletjax.mining.backend decides what "auto" means on this machine).
  config.loss.mining_backend = "auto"
  # With several devices, who mines what (tripletjax/sharded.py):
  #   "global": each device mines its rows against the gathered embeddings of all devices:
  #     the loss of the whole global batch, as on one device, O(B^2 / devices) per device;
  #   "local": each device mines its rows alone (TF/PyTorch data parallelism's default): the
  #     mean of the per-device losses, negatives from the same device only;
  #   "replicated": every device mines the whole gathered batch (global's loss, for
  #     comparisons: devices x the mining work).
  config.loss.mining_scope = "global"

  config.batch = ml_collections.ConfigDict()
  config.batch.sampler = "shuffled"  # shuffled | balanced (P classes x K examples)
  config.batch.batch_size = 128
  config.batch.classes_per_batch = 8  # P, balanced only.
  config.batch.samples_per_class = 16  # K, balanced only.

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adam"  # adam | adamw | sgd
  config.optimizer.learning_rate = 1e-3
  config.optimizer.schedule = "constant"  # constant | cosine | warmup_cosine
  config.optimizer.warmup_steps = 0
  config.optimizer.weight_decay = 1e-4  # adamw only.
  config.optimizer.momentum = 0.9  # sgd only.
  config.optimizer.grad_clip_norm = 0.0  # 0 disables clipping.
  # A step with a non-finite loss or gradient stops the run (False) or is skipped and counted
  # in the metrics' skipped_steps (True). The state is never updated by such a step.
  config.optimizer.skip_nonfinite = False

  config.export = ml_collections.ConfigDict()
  config.export.projector_max_points = 2000
  config.export.pca_every_eval = True
  return config
