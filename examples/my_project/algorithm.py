"""An algorithm of your own, ``config.train_step = 'scaled_maml'``, with a
hyper-parameter no other algorithm has (``config.inner_lr_scale``).

Its hyper-parameters extend `maml_plugin.algorithms.HParams` (MAML's
``inner_lr``, ``num_inner_steps``, ...); the factory registered in
`maml_plugin.algorithms.TRAIN_STEPS` gets them with the loss and the
optimizer and returns a `MetaAlgorithm` (here: MAML's, built with a scaled
inner rate; see `maml_plugin/algorithms/fomaml.py` for a whole one).
"""

import dataclasses

from maml_plugin import algorithms
from maml_plugin import fields


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScaledMAMLHParams(algorithms.HParams):
  inner_lr_scale: float = fields.positive(1.0)


@algorithms.TRAIN_STEPS.register('scaled_maml', fields=ScaledMAMLHParams)
def make_scaled_maml(hparams: ScaledMAMLHParams, *, loss_fn, tx,
                     metric_fn=None):
  """MAML whose inner rate is `inner_lr` times `inner_lr_scale`."""
  return algorithms.make_algorithm(
      'maml', loss_fn=loss_fn, tx=tx, metric_fn=metric_fn,
      inner_lr=hparams.inner_lr * hparams.inner_lr_scale,
      num_inner_steps=hparams.num_inner_steps,
      task_batch_size=hparams.task_batch_size)
