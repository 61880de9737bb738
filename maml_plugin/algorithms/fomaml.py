"""First-order MAML as a registered train step, ``'fomaml'``.

The smallest algorithm here: copy it to add one (its hyper-parameters, a
factory registered under a new name, and an import in `__init__.py`).

Usage::

  algorithm = make_algorithm('fomaml', loss_fn=loss_fn, tx=tx, inner_lr=0.01)

The meta-gradient is the query gradient at the adapted params: the inner
gradient is a constant for the outer derivative, so each inner step's
Jacobian is the identity (Finn et al. 2017, sec. 5.2).
"""

from __future__ import annotations

import optax

from maml_plugin import core
from maml_plugin.algorithms import base
from maml_plugin.algorithms import maml


@base.TRAIN_STEPS.register('fomaml', fields=base.HParams)
def make_fomaml(hparams: base.HParams, *, loss_fn: core.LossFn,
                tx: optax.GradientTransformation,
                metric_fn: core.LossFn | None = None) -> base.MetaAlgorithm:
  """FOMAML: MAML's step with ``first_order=True`` (nothing to remat)."""
  return maml.sgd_meta_algorithm(
      loss_fn=loss_fn, tx=tx, inner_lr=hparams.inner_lr,
      num_inner_steps=hparams.num_inner_steps, first_order=True,
      remat_inner_steps=False, task_batch_size=hparams.task_batch_size,
      metric_fn=metric_fn)
