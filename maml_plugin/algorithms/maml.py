"""MAML (Finn et al. 2017) as a registered train step, ``'maml'``.

Usage::

  algorithm = make_algorithm('maml', loss_fn=loss_fn, tx=optax.adam(1e-3),
                             inner_lr=0.01, num_inner_steps=1)

The meta-gradient is exact second order (`core.maml_loss_and_aux`) unless
``first_order=True``; evaluation adapts with plain SGD at `inner_lr`.
"""

from __future__ import annotations

import dataclasses

import optax

from maml_plugin import core
from maml_plugin import fields
from maml_plugin.algorithms import base


@dataclasses.dataclass(frozen=True, kw_only=True)
class MAMLHParams(base.HParams):
  """`base.HParams` and MAML's own.

  Attributes:
    first_order: drop the inner loop's second derivatives (FOMAML).
    remat_inner_steps: rematerialize each inner step in the backward pass
      (same gradient, memory flat in `num_inner_steps`).
  """

  first_order: bool = fields.flag(False)
  remat_inner_steps: bool = fields.flag(False, changes_training=False)


def sgd_meta_algorithm(*, loss_fn: core.LossFn,
                       tx: optax.GradientTransformation, inner_lr: float,
                       num_inner_steps: int, first_order: bool,
                       remat_inner_steps: bool, task_batch_size: int | None,
                       metric_fn: core.LossFn | None = None
                       ) -> base.MetaAlgorithm:
  """MAML's train step and its SGD inner loop (FOMAML shares them)."""
  def objective(params, batch, model_state, rng):
    return core.maml_loss_and_aux(
        loss_fn, params, batch, inner_lr=inner_lr, num_steps=num_inner_steps,
        first_order=first_order, remat=remat_inner_steps, metric_fn=metric_fn,
        model_state=model_state, rng=rng)

  return base.MetaAlgorithm(
      train_step=base.gradient_train_step(objective, tx, task_batch_size,
                                          core.is_stateful(loss_fn)),
      inner_loop_for=lambda loss: core.sgd_inner_loop(loss, inner_lr),
      loss_fn=loss_fn)


@base.TRAIN_STEPS.register('maml', fields=MAMLHParams)
def make_maml(hparams: MAMLHParams, *, loss_fn: core.LossFn,
              tx: optax.GradientTransformation,
              metric_fn: core.LossFn | None = None) -> base.MetaAlgorithm:
  """MAML: exact second order unless `hparams.first_order`.

  With `metric_fn` (classification accuracy) the metrics also hold
  ``query_accuracy_before`` and ``query_accuracy_after``.
  """
  return sgd_meta_algorithm(
      loss_fn=loss_fn, tx=tx, inner_lr=hparams.inner_lr,
      num_inner_steps=hparams.num_inner_steps,
      first_order=hparams.first_order,
      remat_inner_steps=hparams.remat_inner_steps,
      task_batch_size=hparams.task_batch_size, metric_fn=metric_fn)
