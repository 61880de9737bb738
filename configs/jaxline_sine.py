"""jaxline's config around configs/maml_sine.py (MAML on sinusoids).

Run it with jaxline's own entry point (from the repository root, or from
anywhere after `pip install .`, see README "Configs from an install")::

  python -m maml_plugin.jaxline_experiment --config=configs/jaxline_sine.py:quick \
      --config.checkpoint_dir=/tmp/maml_jaxline

The argument is maml_sine's (`quick`, an algorithm name, or both); our
fields are under `--config.experiment_kwargs.config.<field>`, jaxline's at
the top level. `maml_plugin.jaxline_experiment.get_config` derives
jaxline's intervals from ours and links `training_steps` to our
`num_train_steps`: `--config.training_steps=20` sets both.
"""

import os

from maml_plugin import config_files
from maml_plugin import jaxline_experiment

# The maml_sine.py beside this file, in the repository or installed (as
# maml_plugin.configs, where `from configs import maml_sine` would fail).
_MAML_SINE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          'maml_sine.py')


def get_config(arg=None):
  maml_sine = config_files.load(
      _MAML_SINE if arg is None else f'{_MAML_SINE}:{arg}')
  return jaxline_experiment.get_config(maml_sine,
                                       checkpoint_dir='/tmp/maml_jaxline')
