"""MAML on Omniglot few-shot classification (Finn et al. 2017, sec. 5.2).

Run it (meta-train on the Vinyals train split, then evaluate on 600 tasks of
its 423-character test split)::

  export MAML_PLUGIN_DATA_DIR=/path/to/data   # holds omniglot/images_*.zip
  python -m maml_plugin.main --config=configs/maml_omniglot.py --workdir=/tmp/omni
  python -m maml_plugin.evaluate --config=configs/maml_omniglot.py --workdir=/tmp/omni

The default is the paper's 5-way 1-shot protocol: meta-batch 32, 1 inner
step at alpha=0.4, Adam 1e-3, 60,000 meta-steps, 10 inner steps at test.
Arguments: `:5w5s`, `:20w1s` (meta-batch 16, 5 inner steps at alpha=0.1),
`:20w5s`, and `:quick` (a seconds-long 5-way 1-shot run for tests). Any field
can be overridden, e.g. `--config.first_order=True`.
"""

import ml_collections

_VARIANTS = ('5w1s', '5w5s', '20w1s', '20w5s', 'quick')


def get_config(arg=None):
  """Returns the config for `arg` in (None, '5w1s', '5w5s', '20w1s', ...)."""
  if arg is not None and arg not in _VARIANTS:
    raise ValueError(f'get_config arg={arg!r}: must be None or one of '
                     + ', '.join(repr(v) for v in _VARIANTS))
  config = ml_collections.ConfigDict()
  # Tasks: N-way K-shot episodes of the Vinyals split, rotations as classes.
  config.task = 'omniglot'
  config.data_dir = ''  # '' means $MAML_PLUGIN_DATA_DIR.
  config.train_split = 'vinyals_train'
  config.eval_split = 'vinyals_test'
  config.ways = 5
  config.num_support = 1  # images per class in the support set (K)
  config.num_query = 1  # query images per class in training (as MAML's code)
  # Model: Conv-4, 64 filters, stride-2 convolutions (MAML's Omniglot net).
  config.num_filters = 64
  config.conv_downsample = 'stride'
  # Batch norm with the statistics of the batch it sees (the reference code's
  # transductive setting); False: query examples are normalised with their
  # task's support statistics and never see each other.
  config.transductive = True
  # Meta-learning algorithm (a registered train step) and its inner loop.
  config.train_step = 'maml'
  config.inner_lr = 0.4
  config.num_inner_steps = 1
  config.first_order = False
  # Outer loop: Adam on the meta-loss.
  config.meta_batch_size = 32
  # Meta-gradient one task at a time (a lax.map over tasks): the same
  # gradient, about 2x faster than vmapping all 32 tasks on CPU
  # (benchmarks/omniglot_speed.py); a multiple of the device count.
  config.task_batch_size = 1
  config.meta_lr = 1e-3
  config.num_train_steps = 60_000
  config.seed = 0
  # Meta-steps fused into one jitted call; intervals are multiples of it.
  config.steps_per_call = 50
  config.log_every_steps = 500
  config.eval_every_steps = 5_000
  config.checkpoint_every_steps = 5_000
  config.max_checkpoints_to_keep = 3
  # A NaN/Inf meta-loss or meta-gradient: 'stop' the run (the last good
  # checkpoint stays) or 'skip' the update and count it in the metrics.
  config.on_nonfinite = 'stop'
  # Held-out evaluation: 600 fixed tasks, 15 query images per class, 0..10
  # inner steps, evaluated one task at a time (a lax.map over tasks: about
  # 1.6x faster on CPU than vmapping 50, and little memory).
  config.eval_seed = 1_000_003
  config.num_eval_tasks = 600
  config.eval_num_query = 15
  config.eval_num_inner_steps = 10
  config.eval_task_batch_size = 1

  if arg in ('5w5s', '20w5s'):
    config.num_support = 5
    config.num_query = 5
  if arg in ('20w1s', '20w5s'):
    config.ways = 20
    config.meta_batch_size = 16
    config.inner_lr = 0.1
    config.num_inner_steps = 5
    config.eval_num_query = 5  # 20 classes x (5 + 5) images fit 20 per class
  if arg == 'quick':
    config.num_filters = 16
    config.meta_batch_size = 4
    config.num_train_steps = 20
    config.steps_per_call = 10
    config.log_every_steps = 10
    config.eval_every_steps = 20
    config.checkpoint_every_steps = 20
    config.num_eval_tasks = 20
    config.eval_num_query = 5
    config.eval_num_inner_steps = 3
  return config
