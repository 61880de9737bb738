"""MAML on N-way K-shot episodes of any TFDS image-classification dataset.

Name the dataset; it must be prepared under `data_dir` (nothing downloads)::

  tfds build omniglot --data_dir=/data/tfds      # once, where you have network
  python -m maml_plugin.main --config=configs/maml_tfds.py \
      --config.dataset=omniglot --config.data_dir=/data/tfds --workdir=/tmp/tfds
  python -m maml_plugin.evaluate --config=configs/maml_tfds.py \
      --config.dataset=omniglot --config.data_dir=/data/tfds --workdir=/tmp/tfds

Any dataset with an image and an int label feature works (`mnist`,
`emnist`, `cifar100`, your own): override `train_split` and `eval_split`
(TFDS split strings, `train[:80%]`), `image_key` and `label_key` (the
feature names) as the dataset needs, `image_size` (0 keeps the stored
size; N resizes the images to N x N), and the task sizes `ways`,
`num_support` (K shots) and `num_query`. A missing dataset, split or
feature stops the run in one line naming what the dataset has.

The default is TFDS's `omniglot` (background alphabets to train, the
evaluation alphabets to test, 105x105 RGB images) in the 5-way 1-shot
protocol of configs/maml_omniglot.py. Arguments, comma-separated: `quick`
(a seconds-long run for tests).
"""

import ml_collections
from ml_collections import config_dict


def get_config(arg=None):
  """Returns the config for `arg` (None or 'quick')."""
  words = [] if arg is None else [w.strip() for w in arg.split(',')]
  if any(w != 'quick' for w in words):
    raise ValueError(f"get_config arg={arg!r}: must be None or 'quick'")
  config = ml_collections.ConfigDict()
  # Tasks: N-way K-shot episodes of a TFDS dataset's splits.
  config.task = 'tfds_episodic'
  config.dataset = 'omniglot'
  config.data_dir = ''  # '': $TFDS_DATA_DIR or ~/tensorflow_datasets
  config.train_split = 'train'
  config.eval_split = 'test'
  config.image_key = 'image'
  config.label_key = 'label'
  config.image_size = 0  # 0: as stored; N: images resized to N x N
  config.ways = 5
  config.num_support = 1  # images per class in the support set (K)
  config.num_query = 1  # query images per class in training
  # Model: Conv-4 with stride-2 convolutions, for square images of any size.
  config.model = 'conv4'
  config.num_filters = 64
  config.conv_downsample = 'stride'
  # Batch norm with the statistics of the batch it sees; False: query
  # examples are normalised with their task's support statistics.
  config.transductive = True
  # Meta-learning algorithm (a registered train step) and its inner loop.
  config.train_step = 'maml'
  config.inner_lr = 0.4
  config.num_inner_steps = 1
  config.first_order = False
  config.remat_inner_steps = False
  # Outer loop: Adam on the meta-loss, one task at a time (a lax.map).
  config.meta_batch_size = 32
  config.task_batch_size = 1
  config.meta_lr = 1e-3
  config.num_train_steps = 60_000
  config.seed = 0
  config.steps_per_call = 50
  config.log_every_steps = 500
  config.eval_every_steps = 5_000
  config.checkpoint_every_steps = 5_000
  config.checkpoint_every_secs = config_dict.placeholder(float)
  config.max_checkpoints_to_keep = 3
  config.on_nonfinite = 'stop'
  # Held-out evaluation: 600 fixed tasks of eval_split, 15 query images per
  # class, 0..10 inner steps, one task at a time.
  config.eval_seed = 1_000_003
  config.num_eval_tasks = 600
  config.eval_num_query = 15
  config.eval_num_inner_steps = 10
  config.eval_task_batch_size = 1

  if 'quick' in words:
    config.num_filters = 8
    config.meta_batch_size = 2
    config.task_batch_size = 1
    config.num_train_steps = 20
    config.steps_per_call = 10
    config.log_every_steps = 10
    config.eval_every_steps = 20
    config.checkpoint_every_steps = 20
    config.num_eval_tasks = 10
    config.eval_num_query = 2
    config.eval_num_inner_steps = 2
  return config
