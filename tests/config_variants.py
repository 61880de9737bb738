"""The shipped configs and the arguments each documents (test helper).

Used by tests/test_shipped_configs.py (overrides, the wheel) and
tests/test_field_boundaries.py (each config's schedule); reads no file, so
a copy of the package without docs/ (benchmarks/mutation.py) imports it.
"""

import importlib.util

from configs import maml_miniimagenet
from configs import maml_omniglot
from configs import maml_sine

# Every config in configs/ with every argument it documents (None: default).
VARIANTS = {
    'maml_sine': (None, 'quick', 'paper', 'metasgd,paper') + maml_sine.ALGORITHMS,
    'maml_omniglot': (None, 'quick', 'mamlpp', 'imaml', '20w1s,imaml',
                      'imaml,quick', 'reference', '20w5s,reference',
                      'reference,imaml') + maml_omniglot.PROTOCOLS,
    'jaxline_sine': (None, 'quick', 'paper') + maml_sine.ALGORITHMS,
    'maml_tfds': (None, 'quick'),
    'maml_miniimagenet': (None, 'quick', 'fomaml', 'mamlpp', '5w5s,fomaml',
                          'mamlpp,quick') + maml_miniimagenet.PROTOCOLS,
    'maml_image_folder': (None, 'quick', 'fomaml', 'mamlpp', '5w5s'),
}
# Configs that need an optional dependency: config -> module.
NEEDS = {'jaxline_sine': 'jaxline'}


def available(name):
  return NEEDS.get(name) is None or importlib.util.find_spec(NEEDS[name])


def ours(config):
  """Our config: itself, or the one inside jaxline's config."""
  if 'experiment_kwargs' in config:
    return config.experiment_kwargs.config
  return config
