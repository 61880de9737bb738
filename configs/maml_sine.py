"""MAML on sinusoid regression, the protocol of Finn et al. (2017), sec. 5.1.

Run it (meta-train, then evaluate on 600 held-out tasks)::

  python -m maml_plugin.main --config=configs/maml_sine.py --workdir=/tmp/maml_sine
  python -m maml_plugin.evaluate --config=configs/maml_sine.py --workdir=/tmp/maml_sine

`--config=configs/maml_sine.py:quick` is a seconds-long variant for tests;
any field can be overridden, e.g. `--config.first_order=True`.
"""

import ml_collections


def get_config(arg=None):
  """Returns the config; `arg` is None (paper protocol) or 'quick'."""
  config = ml_collections.ConfigDict()
  # Tasks: y = A sin(x - phase), K support and K query points per task.
  config.task = 'sinusoid'
  config.num_support = 10
  config.num_query = 10
  # Model: 1-40-40-1 ReLU MLP.
  config.hidden_sizes = (40, 40)
  # Meta-learning algorithm (a registered train step) and its inner loop.
  config.train_step = 'maml'
  config.inner_lr = 0.01
  config.num_inner_steps = 1
  config.first_order = False
  # Outer loop: Adam on the meta-loss.
  config.meta_batch_size = 25
  config.meta_lr = 1e-3
  config.num_train_steps = 70_000
  config.seed = 0
  # Meta-steps fused into one jitted call (a scan); periodic intervals must
  # be multiples of it.
  config.steps_per_call = 100
  config.log_every_steps = 1_000
  config.eval_every_steps = 10_000
  config.checkpoint_every_steps = 10_000
  config.max_checkpoints_to_keep = 3
  # A NaN/Inf meta-loss or meta-gradient: 'stop' the run (the last good
  # checkpoint stays) or 'skip' the update and count it in the metrics.
  config.on_nonfinite = 'stop'
  # Held-out evaluation: fixed seeded tasks, 100 query points, 0..10 steps.
  config.eval_seed = 1_000_003
  config.num_eval_tasks = 600
  config.eval_num_query = 100
  config.eval_num_inner_steps = 10
  config.num_plot_tasks = 3

  if arg == 'quick':
    config.num_train_steps = 200
    config.steps_per_call = 10
    config.log_every_steps = 50
    config.eval_every_steps = 100
    config.checkpoint_every_steps = 100
    config.num_eval_tasks = 50
  elif arg is not None:
    raise ValueError(f"get_config arg={arg!r}: must be None or 'quick'")
  return config
