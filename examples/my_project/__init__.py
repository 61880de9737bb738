"""An example project outside maml_plugin: copy this folder to start yours.

  python -m maml_plugin.main --config=examples/my_project/config.py --workdir=/tmp/my_project
  python -m maml_plugin.main --config=examples/my_project/config.py:quick --workdir=/tmp/quick

Each file is one extension point, registered by name from its own module:

- `tasks.py`: a task family, ``config.task = 'line_tasks'`` (a sampler of
  meta-batches, its config fields, its loss and metric);
- `model.py`: a Flax NNX model, ``config.model = 'norm_mlp'`` (BatchNorm
  and Dropout included: the trainer carries their state and keys);
- `algorithm.py`: an algorithm, ``config.train_step = 'scaled_maml'``,
  with a hyper-parameter of its own;
- `config.py`: the config that names them and lists their modules in
  ``config.imports``, which the trainer imports before it looks the names
  up.

Nothing in maml_plugin is edited: our trainer, evaluation, checkpoints,
metrics and report run on your entries.
"""
