"""maml_plugin: MAML-family meta-learning for Flax NNX, optax, CLU and TFDS.

The pure core::

  import maml_plugin
  adapted = maml_plugin.adapt(loss_fn, params, support, inner_lr=0.01)
  meta_grad = jax.grad(maml_plugin.maml_loss, argnums=1)(
      loss_fn, params, meta_batch, inner_lr=0.01)

The registered train steps (``train_step(state, batch, rng)``)::

  train_step = maml_plugin.make_train_step('maml', loss_fn=loss_fn, tx=tx,
                                           inner_lr=0.01)
"""

from maml_plugin.core import adapt
from maml_plugin.core import maml_loss
from maml_plugin.core import maml_loss_and_aux
from maml_plugin.core import sgd_step
from maml_plugin.train_steps import MetaTrainState
from maml_plugin.train_steps import TRAIN_STEPS
from maml_plugin.train_steps import make_train_step

__all__ = [
    'adapt', 'maml_loss', 'maml_loss_and_aux', 'sgd_step', 'MetaTrainState',
    'TRAIN_STEPS', 'make_train_step',
]
__version__ = '0.1.0'
