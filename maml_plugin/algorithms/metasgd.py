"""Meta-SGD (Li et al. 2017) as a registered train step, ``'metasgd'``.

Usage::

  algorithm = make_algorithm('metasgd', loss_fn=loss_fn, tx=tx, inner_lr=0.01)
  state = MetaTrainState.create(algorithm.init_params(params), tx)

(``MetaTrainState.create(params, tx)`` of the model's params works too: the
train step lifts it into this layout at its first call,
`base.lifting_train_step`.) A learned inner rate for every parameter: the state's params are
``{'model': ..., 'inner_lr': ...}`` (`inner_lr` has the model's tree and
shapes, initialised to the config's `inner_lr`); both are meta-trained by
the outer optimizer, checkpointed, and used by evaluation
(``p - inner_lr * grad``, elementwise). The rates are not clipped: like the
paper, a rate may turn negative if that helps.

The paper's meta-objective is the query loss after the last inner step
(``msl_anneal_steps=0``, the default). With ``msl_anneal_steps=None`` it is
the mean of the query losses after each of steps 1..N (MAML++'s multi-step
loss, uniform), an int anneals those weights to the last step's over that
many meta-steps (`mamlpp.msl_weights`); the rates stay one per parameter,
shared by every step.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from maml_plugin import core
from maml_plugin import fields
from maml_plugin.algorithms import base
from maml_plugin.algorithms import mamlpp


@dataclasses.dataclass(frozen=True, kw_only=True)
class MetaSGDHParams(base.HParams):
  """`base.HParams` (`inner_lr`: every rate's initial value) and:

  Attributes:
    remat_inner_steps: rematerialize each inner step (same gradient).
    rate_meta_lr: the outer step size of the rates (`base.rate_meta_lr_field`).
    msl_anneal_steps: the multi-step loss (module docstring); 0: off.
  """

  remat_inner_steps: bool = fields.flag(False, changes_training=False)
  rate_meta_lr: float | None = base.rate_meta_lr_field()
  msl_anneal_steps: int | None = fields.field(
      0, check=fields.or_none(fields.non_negative_int),
      allowed='an int >= 0 (0: the last step\'s query loss only, as the '
      'paper) or None (uniform weights over steps 1..N, never annealed)')


def metasgd_params(model_params, inner_lr: float) -> dict:
  """Meta-SGD's train-state params: the model and a rate for every entry."""
  return {'model': model_params,
          'inner_lr': jax.tree.map(lambda p: jnp.full_like(p, inner_lr),
                                   model_params)}


@base.TRAIN_STEPS.register('metasgd', fields=MetaSGDHParams)
def make_metasgd(hparams: MetaSGDHParams, *, loss_fn: core.LossFn,
                 tx: optax.GradientTransformation) -> base.MetaAlgorithm:
  """Meta-SGD (see module docstring)."""
  num_steps, msl = hparams.num_inner_steps, hparams.msl_anneal_steps

  def objective(params, batch, model_state, rng, step):
    if msl == 0:
      return core.maml_loss_and_aux(
          loss_fn, params['model'], batch, inner_lr=params['inner_lr'],
          num_steps=num_steps, remat=hparams.remat_inner_steps,
          model_state=model_state, rng=rng)
    # MAML++'s per-step loss with every step's rates the same tree: the
    # rates' gradient sums over the steps, as Meta-SGD's shared rates.
    per_step_rates = jax.tree.map(
        lambda r: jnp.broadcast_to(r, (num_steps,) + r.shape),
        params['inner_lr'])
    return mamlpp.mamlpp_loss_and_aux(
        loss_fn, {'model': params['model'], 'inner_lr': per_step_rates},
        batch, step=step, num_inner_steps=num_steps, msl_anneal_steps=msl,
        learn_inner_lr=True, first_order=False,
        remat=hparams.remat_inner_steps, model_state=model_state, rng=rng)

  def inner_loop_for(loss):
    return core.InnerLoop(
        init=lambda params: params['model'],
        step=lambda params, p, support, k: core.sgd_step(
            loss, p, support, inner_lr=params['inner_lr']),
        params=lambda p: p)

  return base.MetaAlgorithm(
      train_step=base.gradient_train_step(objective, tx,
                                          hparams.task_batch_size,
                                          core.is_stateful(loss_fn),
                                          pass_step=True),
      inner_loop_for=inner_loop_for,
      model_params=base.model_of,
      init_params=functools.partial(metasgd_params, inner_lr=hparams.inner_lr),
      loss_fn=loss_fn)
