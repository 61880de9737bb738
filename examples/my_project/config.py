"""The project's config: its own task family, model and algorithm, by name.

  python -m maml_plugin.main --config=examples/my_project/config.py --workdir=DIR
  python -m maml_plugin.evaluate --config=examples/my_project/config.py --workdir=DIR

`--config=examples/my_project/config.py:quick` is a seconds-long run (for
tests). Any field can be overridden, the project's own included, e.g.
`--config.inner_lr_scale=0.25` or `--config.max_slope=3.0`.
"""

import ml_collections
from ml_collections import config_dict


def get_config(arg=None):
  """Returns the config for `arg` (None or 'quick')."""
  if arg not in (None, 'quick'):
    raise ValueError(f"get_config arg={arg!r}: must be None or 'quick'")
  config = ml_collections.ConfigDict()
  # The modules that register what the names below name, by their import
  # path from where you run the command (a copy in ./my_project/:
  # 'my_project.tasks', ...).
  config.imports = ('examples.my_project.tasks', 'examples.my_project.model',
                    'examples.my_project.algorithm')
  # Task family (tasks.py) and its fields.
  config.task = 'line_tasks'
  config.num_support = 5
  config.num_query = 5
  config.max_slope = 2.0
  # Model (model.py) and its fields.
  config.model = 'norm_mlp'
  config.width = 32
  config.dropout_rate = 0.1
  # Algorithm (algorithm.py) and its hyper-parameters: MAML's, and its own.
  config.train_step = 'scaled_maml'
  config.inner_lr = 0.05
  config.inner_lr_scale = 0.5
  config.num_inner_steps = 1
  # The trainer's fields (maml_plugin.config_validation.TrainerFields).
  config.meta_batch_size = 16
  config.meta_lr = 1e-3
  config.num_train_steps = 5_000
  config.steps_per_call = 100
  config.seed = 0
  config.on_nonfinite = 'stop'
  config.log_every_steps = 500
  config.eval_every_steps = 2_500
  config.checkpoint_every_steps = 2_500
  config.checkpoint_every_secs = config_dict.placeholder(float)
  config.max_checkpoints_to_keep = 2
  config.eval_seed = 1
  config.num_eval_tasks = 600
  config.eval_num_query = 20
  config.eval_num_inner_steps = 5

  if arg == 'quick':
    config.width = 16
    config.meta_batch_size = 8
    config.num_train_steps = 20
    config.steps_per_call = 10
    config.log_every_steps = 10
    config.eval_every_steps = 20
    config.checkpoint_every_steps = 20
    config.max_checkpoints_to_keep = 1
    config.num_eval_tasks = 20
    config.eval_num_query = 10
    config.eval_num_inner_steps = 2
  return config
