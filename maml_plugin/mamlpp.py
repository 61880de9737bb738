"""MAML++ (Antoniou et al. 2019) as a registered train step, ``'mamlpp'``.

Usage::

  algorithm = make_algorithm('mamlpp', loss_fn=loss_fn, tx=tx, inner_lr=0.01,
                             num_inner_steps=5, msl_anneal_steps=10_000,
                             learn_inner_lr=True, first_order_steps=5_000)

The parts of MAML++ that apply to any model, an MLP included:

* MSL, multi-step loss: the meta-loss is ``sum_k w_k * query_loss_k`` over
  the inner steps ``k = 1..N``. The weights start uniform (1/N) and are
  annealed linearly over `msl_anneal_steps` meta-steps until every
  non-final weight is ``0.03 / N`` (the paper's floor) and the final step
  carries the rest. ``msl_anneal_steps=0`` turns MSL off (final step only).
* LSLR: a learned inner rate per parameter tensor (a layer's kernel, its
  bias) and per inner step, meta-trained with the weights; held in the
  state as ``params = {'model': ..., 'inner_lr': ...}`` (each rate leaf has
  shape ``[num_inner_steps]``). With ``learn_inner_lr=False`` the rates are
  held fixed at `inner_lr` (their meta-gradient is zero).
* Derivative-order annealing: first-order meta-gradients for the first
  `first_order_steps` meta-steps, exact second order afterwards.
* Cosine annealing of the meta learning rate: an outer-optimizer schedule,
  set by ``config.meta_lr_schedule='cosine'`` (configs/maml_sine.py:mamlpp).

Evaluation with more inner steps than training: step ``k >= num_inner_steps``
reuses the LAST learned rate (step ``num_inner_steps - 1``'s), since no
rate was learned for it; steps before it use their own learned rates.

Not here yet: per-step batch-norm weights and running statistics (BNWB,
BNRS) — they need a model with batch norm (the Conv-4 model); the MLP has
none, so this step is MAML++ without them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from maml_plugin import core
from maml_plugin import train_steps

MSL_FLOOR = 0.03  # times 1/N: the smallest weight of a non-final step.


def msl_weights(step, num_steps: int, anneal_steps: int) -> jax.Array:
  """Per-inner-step loss weights ``[num_steps]`` at meta-step `step`."""
  if anneal_steps == 0 or num_steps == 1:
    return jnp.zeros((num_steps,)).at[-1].set(1.0)
  frac = jnp.minimum(jnp.asarray(step, jnp.float32) / anneal_steps, 1.0)
  nonfinal = jnp.maximum((1.0 - frac) / num_steps, MSL_FLOOR / num_steps)
  weights = jnp.full((num_steps,), nonfinal)
  return weights.at[-1].set(1.0 - (num_steps - 1) * nonfinal)


def mamlpp_params(model_params, *, inner_lr: float, num_inner_steps: int):
  """MAML++'s train-state params: the model and per-step rates per tensor."""
  return {'model': model_params,
          'inner_lr': jax.tree.map(
              lambda p: jnp.full((num_inner_steps,), inner_lr, p.dtype),
              model_params)}


def rates_at(inner_lr, k, num_inner_steps: int):
  """The rates of inner step `k`; steps past training reuse the last one."""
  k = jnp.minimum(k, num_inner_steps - 1)
  return jax.tree.map(lambda r: r[k], inner_lr)


def per_step_query_losses(loss_fn: core.LossFn, params, task, *, inner_lr,
                          num_steps: int, first_order: bool, remat: bool
                          ) -> jax.Array:
  """Query loss of ONE task after each inner step 1..N: ``[num_steps]``."""
  def body(p, rates):
    p = core.sgd_step(loss_fn, p, task['support'], inner_lr=rates,
                      first_order=first_order)
    return p, loss_fn(p, task['query'])

  # Rates leaves are [num_steps]: scan hands step k its own rates.
  _, losses = jax.lax.scan(core.maybe_remat(body, remat), params, inner_lr)
  return losses


def mamlpp_loss_and_aux(loss_fn: core.LossFn, params, meta_batch, *, step,
                        num_inner_steps: int, msl_anneal_steps: int,
                        learn_inner_lr: bool, first_order: bool,
                        remat: bool = False):
  """The MAML++ meta-loss (MSL-weighted) and `core.MetaOutput` for metrics.

  `params` is ``{'model': ..., 'inner_lr': ...}`` (`mamlpp_params`). With
  MSL off and the rates fixed this is `core.maml_loss_and_aux`.
  """
  model, rates = params['model'], params['inner_lr']
  if not learn_inner_lr:
    rates = jax.lax.stop_gradient(rates)

  def per_task(task):
    return loss_fn(model, task['query']), per_step_query_losses(
        loss_fn, model, task, inner_lr=rates, num_steps=num_inner_steps,
        first_order=first_order, remat=remat)

  before, after = jax.vmap(per_task)(meta_batch)  # [tasks], [tasks, steps]
  after = jnp.mean(after, axis=0)
  weights = msl_weights(step, num_inner_steps, msl_anneal_steps)
  loss = jnp.sum(weights * after)
  return loss, core.MetaOutput(
      query_loss_before=jax.lax.stop_gradient(jnp.mean(before)),
      query_loss_after=jax.lax.stop_gradient(after[-1]))


@train_steps.TRAIN_STEPS.register('mamlpp')
def make_mamlpp_train_step(*, loss_fn: core.LossFn,
                           tx: optax.GradientTransformation, inner_lr: float,
                           num_inner_steps: int = 1,
                           msl_anneal_steps: int = 0,
                           learn_inner_lr: bool = True,
                           first_order_steps: int = 0,
                           remat_inner_steps: bool = False,
                           task_batch_size: int | None = None
                           ) -> train_steps.MetaAlgorithm:
  """MAML++ on any model without batch norm (see module docstring).

  `task_batch_size`: meta-gradient that many tasks at a time
  (`core.over_task_batches`); the same gradient.
  """
  def grad_fn(first_order):
    def objective(params, batch, step):
      return mamlpp_loss_and_aux(
          loss_fn, params, batch, step=step, num_inner_steps=num_inner_steps,
          msl_anneal_steps=msl_anneal_steps, learn_inner_lr=learn_inner_lr,
          first_order=first_order, remat=remat_inner_steps)
    return core.over_task_batches(
        jax.value_and_grad(objective, has_aux=True), task_batch_size)

  first, second = grad_fn(True), grad_fn(False)

  def train_step(state: train_steps.MetaTrainState, batch, rng):
    del rng  # Deterministic given the batch.
    if first_order_steps:
      (_, aux), grads = jax.lax.cond(state.step < first_order_steps, first,
                                     second, state.params, batch, state.step)
    else:
      (_, aux), grads = second(state.params, batch, state.step)
    metrics = train_steps.TrainMetrics.single_from_model_output(
        query_loss_before=aux.query_loss_before,
        query_loss_after=aux.query_loss_after,
        meta_grad_norm=optax.global_norm(grads))
    return train_steps.apply_meta_gradient(state, grads, tx), metrics

  def eval_step(meta_params, p, support, k):
    return core.sgd_step(loss_fn, p, support, inner_lr=rates_at(
        meta_params['inner_lr'], k, num_inner_steps))

  def init_params(model_params):
    return mamlpp_params(model_params, inner_lr=inner_lr,
                         num_inner_steps=num_inner_steps)

  return train_steps.MetaAlgorithm(
      train_step=train_step,
      inner_loop=core.InnerLoop(init=lambda params: params['model'],
                                step=eval_step, params=lambda p: p),
      init_params=init_params)
