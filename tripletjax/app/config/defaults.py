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
  # How a train step computes its gradient (tripletjax/app/step/virtual_batch.py):
  #   "direct": forward pass, loss and backward pass in one compiled program;
  #   "split": the step split at the embeddings, the loss computed between two programs (on a
  #     CPU its sorting miners then run in NumPy, whatever the number of devices);
  #   "recompute": split, keeping no activations: each chunk's forward pass is re-run in the
  #     backward program (cached gradients), so memory holds one chunk of
  #     batch_size / (devices x model.forward_chunks) rows: batches larger than memory;
  #   "auto": "split" on a CPU with several devices for a loss that sorts rows, else "direct"
  #     (step/plan.py decides, once per run: the execution plan).
  # All compute the same gradient, so a run may resume with another value.
  config.train_step = "auto"

  config.data = ml_collections.ConfigDict()
  # Labelled images: digits | fashion_mnist | mnist | tfds:<name> | folder:<path> (image files
  # arranged by class, app/data/folders.py). Pairs of images that look alike
  # (app/data/pairs.py): pairs:<folder of left/ and right/, or CSV> | pairs_demo:<digits
  # | fashion_mnist> (an offline pair folder written into data_dir, app/data/pair_demo.py).
  config.data.name = "digits"
  config.data.data_dir = ml_collections.FieldReference(None, field_type=str)
  # At most this many training (test, validation) examples; pairs: training (validation)
  # pairs (max_validation: labelled images only).
  config.data.max_train = ml_collections.FieldReference(None, field_type=int)
  config.data.max_test = ml_collections.FieldReference(None, field_type=int)
  config.data.max_validation = ml_collections.FieldReference(None, field_type=int)
  # Labelled images: train and test on disjoint classes, none | half | <first>:<last>
  # (app/data/splits.py).
  config.data.class_split = "none"
  # Hold out this fraction for validation. Labelled images: of the training classes when the
  # test classes are unseen (class split, SOP, In-Shop), of each class's examples otherwise.
  # Pairs: of the pairs (at least 2). 0: no validation set (labelled images).
  config.data.validation_fraction = 0.0
  # Or hold out a fold of the training classes: validation_folds = K >= 2 cuts them into K
  # class-disjoint folds (app/data/splits.py), fold validation_fold (0..K-1) validates. 0: off.
  config.data.validation_folds = 0
  config.data.validation_fold = 0
  # In-memory images: none | flip | shift | flip_shift; image files (folder:, pairs:): none |
  # flip | crop | crop_flip (app/data/augmentations.py).
  config.data.augment = "none"
  config.data.max_shift = 2  # shift, flip_shift: largest translation in pixels.
  # Image files (folder:, pairs:): square crops of image_size, image_channels 1 (grey) or 3
  # (RGB, folder: only); evaluation resizes the shorter side to eval_resize (None: the crop
  # spans the shorter side; "A Metric Learning Reality Check" resizes to 256 for 224), then
  # crops the centre; training's random resized crops cover crop_scale of the area at aspect
  # ratios crop_ratio.
  config.data.image_size = 224
  config.data.image_channels = 3
  config.data.eval_resize = ml_collections.FieldReference(None, field_type=int)
  config.data.crop_scale = (0.16, 1.0)
  config.data.crop_ratio = (3 / 4, 4 / 3)
  config.data.unreadable = "error"  # error | skip: an unreadable image file stops the run or
  # is skipped, reported once and counted.
  config.data.decode_workers = 0  # Image decoding threads; 0: one per core.
  config.data.prefetch_batches = 2  # Image-file batches decoded ahead of the training step.

  config.model = ml_collections.ConfigDict()
  config.model.name = "tfa_cnn"  # tfa_cnn | hsu_cnn | resnet18 | resnet34 | resnet50
  config.model.embedding_dim = 64
  # A pretrained ResNet backbone from a local file (app/models/weights.py): a torchvision
  # state_dict (.pth, .safetensors), Keras weights (.h5, .keras) or a converted .npz. Its
  # layout sets resnet.style, resnet.preprocess and resnet.stem unless they are set. None:
  # random initialisation.
  config.model.weights = ml_collections.FieldReference(None, field_type=str)
  # Each family of models has its own options, under its own section (app/models/__init__.py,
  # `FAMILIES`); the model of config.model.name reads its own and leaves the others unused, so
  # a config switches models with one override (--config.model.name=resnet18). None keeps the
  # model's own default.
  # The CNNs (app/models/cnn.py): tfa_cnn takes dropout_rate; hsu_cnn all three (batch_norm:
  # BatchNorm after each convolution; negative_slope: the LeakyReLU's).
  config.model.cnn = ml_collections.ConfigDict()
  config.model.cnn.dropout_rate = ml_collections.FieldReference(None, field_type=float)
  config.model.cnn.batch_norm = ml_collections.FieldReference(None, field_type=bool)
  config.model.cnn.negative_slope = ml_collections.FieldReference(None, field_type=float)
  # The ResNets (app/models/resnet.py): width, the first stage's channels; stem auto | small |
  # imagenet; style torchvision | keras; preprocess none | imagenet | caffe; head linear | mlp
  # (Dense 512-BN-Dense 256-BN-Dense); pooling avg | flatten; freeze_before None or a part
  # ("stage4", "stage4.block2", "head"): every part before it is frozen; bn_momentum,
  # BatchNorm's; zero_init_residual: each residual branch's last BatchNorm starts at scale 0.
  config.model.resnet = ml_collections.ConfigDict()
  config.model.resnet.width = ml_collections.FieldReference(None, field_type=int)
  config.model.resnet.stem = ml_collections.FieldReference(None, field_type=str)
  config.model.resnet.style = ml_collections.FieldReference(None, field_type=str)
  config.model.resnet.preprocess = ml_collections.FieldReference(None, field_type=str)
  config.model.resnet.head = ml_collections.FieldReference(None, field_type=str)
  config.model.resnet.pooling = ml_collections.FieldReference(None, field_type=str)
  config.model.resnet.freeze_before = ml_collections.FieldReference(None, field_type=str)
  config.model.resnet.bn_momentum = ml_collections.FieldReference(None, field_type=float)
  config.model.resnet.zero_init_residual = ml_collections.FieldReference(None, field_type=bool)
  # Run the model on this many chunks of each device's batch, one after the other (the loss
  # still mines the whole batch). Smaller convolutions use the CPU caches better; with
  # BatchNorm the statistics become per chunk ("ghost" batch norm). See train.apply_in_chunks.
  config.model.forward_chunks = 1

  config.loss = ml_collections.ConfigDict()
  # Labelled data: semihard | hard | batch_all | contrastive | multi_similarity | ntxent |
  # supcon (docs/comparison-losses.md); pairs: triplet (squared L2).
  config.loss.name = "semihard"
  config.loss.margin = 0.5
  config.loss.metric = "l2"  # l2 | squared_l2 | angular
  config.loss.soft = False  # hard only: softplus instead of the hinge.
  # semihard, batch_all: where rows are sorted and mined, auto | numpy | xla
  # (tripletjax.mining.backend decides what "auto" means on this machine).
  config.loss.mining_backend = "auto"
  # multi_similarity only (pytorch-metric-learning's defaults): the weights of the positive
  # and negative pairs, the similarity both are centred on, and the miner's margin (mining:
  # False uses every pair).
  config.loss.alpha = 2.0
  config.loss.beta = 50.0
  config.loss.base = 0.5
  config.loss.epsilon = 0.1
  config.loss.mining = True
  # ntxent, supcon only: the temperature; None is the loss's own default (0.07, 0.1).
  config.loss.temperature = ml_collections.FieldReference(None, field_type=float)
  # With several devices, who mines what (tripletjax/sharded.py):
  #   "global": each device mines its rows against the gathered embeddings of all devices:
  #     the loss of the whole global batch, as on one device, O(B^2 / devices) per device;
  #   "local": each device mines its rows alone (TF/PyTorch data parallelism's default): the
  #     mean of the per-device losses, negatives from the same device only;
  #   "replicated": every device mines the whole gathered batch (global's loss, for
  #     comparisons: devices x the mining work).
  # Mined losses only (the pairs task's explicit triplet loss is computed on the whole batch).
  config.loss.mining_scope = "global"

  config.batch = ml_collections.ConfigDict()
  config.batch.sampler = "shuffled"  # shuffled | balanced (P classes x K examples)
  config.batch.batch_size = 128
  config.batch.classes_per_batch = 8  # P, balanced only.
  config.batch.samples_per_class = 16  # K, balanced only.

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adam"  # adam | adamw | sgd | rmsprop
  config.optimizer.learning_rate = 1e-3
  config.optimizer.schedule = "constant"  # constant | cosine | warmup_cosine
  config.optimizer.warmup_steps = 0
  config.optimizer.weight_decay = 1e-4  # adamw (decoupled) and rmsprop (L2) only.
  config.optimizer.momentum = 0.9  # sgd and rmsprop only.
  config.optimizer.grad_clip_norm = 0.0  # 0 disables clipping.
  # A step with a non-finite loss or gradient stops the run (False) or is skipped and counted
  # in the metrics' skipped_steps (True). The state is never updated by such a step.
  config.optimizer.skip_nonfinite = False

  config.eval = ml_collections.ConfigDict()
  config.eval.recall_ks = (1, 2, 4, 8)  # The k of recall@k.
  # Neighbour search: auto | numpy | faiss (the same results); auto takes faiss (if installed)
  # for galleries of at least faiss_min_size embeddings searched for at most 64 neighbours.
  config.eval.backend = "auto"
  config.eval.faiss_min_size = 20_000
  # Model selection (app/loop/selection.py): the run keeps the checkpoint of the evaluation with
  # the highest value of this validation metric (validation_precision_at_1,
  # validation_r_precision, validation_map_at_r), and its final evaluation, eval.json and
  # exports are that epoch's. "last", or a run without a validation set: the last epoch.
  config.eval.select_by = "validation_map_at_r"

  config.monitor = ml_collections.ConfigDict()
  # Warn about embedding collapse, dead mining or batches without positive pairs once a sign
  # has lasted patience_steps steps (app/monitor.py).
  config.monitor.enabled = True
  config.monitor.patience_steps = 200

  config.export = ml_collections.ConfigDict()
  config.export.projector_max_points = 2000
  config.export.pca_every_eval = True
  # test_embeddings.npz (embeddings, labels) of the selected model's test split, which
  # `python -m tripletjax.compare` concatenates over the fold models of a seed.
  config.export.test_embeddings = True
  return config
