"""maml_plugin: MAML-family meta-learning for Flax NNX, optax, CLU and TFDS.

The pure core::

  import maml_plugin
  adapted = maml_plugin.adapt(loss_fn, params, support, inner_lr=0.01)
  meta_grad = jax.grad(maml_plugin.maml_loss, argnums=1)(
      loss_fn, params, meta_batch, inner_lr=0.01)

Any NNX module, BatchNorm and Dropout included (`maml_plugin.nnx_bridge`)::

  model = maml_plugin.NNXModel(net)          # params, model_state, keys
  loss_fn = model.task_loss(lambda net, batch: ...)   # a StatefulLoss
  state = maml_plugin.MetaTrainState.create(model.params, tx,
                                            model_state=model.model_state)

The registered train steps (``train_step(state, batch, rng)``): 'maml',
'fomaml', 'reptile', 'metasgd', 'anil', 'mamlpp', 'imaml'::

  train_step = maml_plugin.make_train_step('maml', loss_fn=loss_fn, tx=tx,
                                           inner_lr=0.01)

Each algorithm's hyper-parameters and their defaults:
``maml_plugin.algorithms.describe_hparams('reptile')`` (docs/algorithms.md
lists them all). ``MetaTrainState.create(params, tx)`` is a state for
every algorithm (Meta-SGD's and MAML++'s steps lift it to hold their
learned rates).

The whole algorithm (train step, its own inner loop for evaluation, and
the params its train state holds)::

  algorithm = maml_plugin.make_algorithm('metasgd', loss_fn=loss_fn, tx=tx,
                                         inner_lr=0.01)
  state = maml_plugin.MetaTrainState.create(algorithm.init_params(params), tx)

Everything a config names, for a training loop of your own (the initial
state, the train step, the meta-batch sampler, the evaluator and our
periodic actions; docs/own_loop.md)::

  components = maml_plugin.build_components(config)
"""

import sys as _sys

# Ctrl-C while `python -m maml_plugin.main` imports its libraries: one line,
# exit status 130 (maml_plugin.startup); in any other program, nothing.
from maml_plugin import startup as _startup  # pylint: disable=g-import-not-at-top,wrong-import-position

_startup.guard_command_start()

# Before anything imports TensorFlow or CLU (`maml_plugin.tf_optional`):
# where TensorFlow is installed, its start-up banner stays off unless asked
# for; where it is not (the default install), CLU imports all the same.
from maml_plugin import tf_optional as _tf_optional
_tf_optional.quiet_native_logs()
_tf_optional.let_clu_import_without_tensorflow()

from maml_plugin.core import InnerLoop  # pylint: disable=g-import-not-at-top,wrong-import-position
from maml_plugin.core import StatefulLoss
from maml_plugin.core import adapt
from maml_plugin.core import maml_loss
from maml_plugin.core import maml_loss_and_aux
from maml_plugin.core import sgd_step
from maml_plugin.nnx_bridge import NNXModel
from maml_plugin.algorithms import MetaAlgorithm
from maml_plugin.algorithms import MetaTrainState
from maml_plugin.algorithms import TRAIN_STEPS
from maml_plugin.algorithms import make_algorithm
from maml_plugin.algorithms import make_train_step

__all__ = [
    'adapt', 'maml_loss', 'maml_loss_and_aux', 'sgd_step', 'InnerLoop',
    'StatefulLoss', 'NNXModel',
    'MetaAlgorithm', 'MetaTrainState', 'TRAIN_STEPS', 'make_algorithm',
    'make_train_step', 'build_components', 'Components',
]
__version__ = '0.1.0'

# The trainer's modules (CLU, orbax) load on first use, not on import.
_FROM_COMPONENTS = ('build_components', 'Components')

# Modules of earlier versions that are gone: importing one is a one-line
# error naming where its names live now.
MOVED_MODULES = {
    'maml_plugin.train_steps': 'maml_plugin.algorithms',
    'maml_plugin.tasks.tfds_builders': (
        'maml_plugin.tasks.sinusoid_tfds and maml_plugin.tasks.omniglot_tfds'),
    'maml_plugin.plots': (
        'maml_plugin.tasks.sinusoid (save_adaptation_figure)'),
}


class _MovedModules:
  """A `sys.meta_path` finder that refuses the modules of `MOVED_MODULES`
  in one line (``import maml_plugin.train_steps`` and ``from maml_plugin
  import train_steps`` alike) instead of Python's bare 'No module named'."""

  @staticmethod
  def find_spec(fullname, path=None, target=None):
    del path, target
    if fullname in MOVED_MODULES:
      raise ImportError(
          f'{fullname} is gone: import {MOVED_MODULES[fullname]}',
          name=fullname)
    return None


if not any(isinstance(f, _MovedModules) for f in _sys.meta_path):
  _sys.meta_path.insert(0, _MovedModules())


def __getattr__(name):
  if name in _FROM_COMPONENTS:
    from maml_plugin import components  # pylint: disable=g-import-not-at-top
    return getattr(components, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
