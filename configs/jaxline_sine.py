"""jaxline's config around configs/maml_sine.py (MAML on sinusoids).

Run it with jaxline's own entry point, from the repository root::

  python -m maml_plugin.jaxline_experiment --config=configs/jaxline_sine.py:quick \
      --config.checkpoint_dir=/tmp/maml_jaxline

The argument is maml_sine's (`quick`, an algorithm name, or both); our
fields are under `--config.experiment_kwargs.config.<field>`, jaxline's at
the top level. `maml_plugin.jaxline_experiment.get_config` derives
jaxline's intervals from ours and links `training_steps` to our
`num_train_steps`: `--config.training_steps=20` sets both.
"""

from configs import maml_sine
from maml_plugin import jaxline_experiment


def get_config(arg=None):
  return jaxline_experiment.get_config(maml_sine.get_config(arg),
                                       checkpoint_dir='/tmp/maml_jaxline')
