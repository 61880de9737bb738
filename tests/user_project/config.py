"""The user's config: their task family, model and algorithm, by name.

  python -m maml_plugin.main --config=tests/user_project/config.py --workdir=DIR
"""

import ml_collections


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  # Imported first: they register what the names below name.
  config.imports = ('tests.user_project.tasks', 'tests.user_project.model',
                    'tests.user_project.algorithm')
  config.task = 'line_tasks'
  config.num_support = 5
  config.num_query = 5
  config.max_slope = 2.0
  config.model = 'norm_mlp'
  config.width = 16
  config.train_step = 'scaled_maml'
  config.inner_lr = 0.05
  config.inner_lr_scale = 0.5
  config.num_inner_steps = 1
  config.meta_batch_size = 8
  config.meta_lr = 1e-3
  config.num_train_steps = 20
  config.steps_per_call = 10
  config.seed = 0
  config.on_nonfinite = 'stop'
  config.log_every_steps = 10
  config.eval_every_steps = 20
  config.checkpoint_every_steps = 20
  config.max_checkpoints_to_keep = 1
  config.eval_seed = 1
  config.num_eval_tasks = 20
  config.eval_num_query = 10
  config.eval_num_inner_steps = 2
  return config
