"""Reptile (Nichol et al. 2018) as a registered train step, ``'reptile'``.

Usage::

  tx = optax.sgd(optax.linear_schedule(1.0, 0.0, num_train_steps))
  algorithm = make_algorithm('reptile', loss_fn=loss_fn, tx=tx,
                             inner_lr=0.001, num_inner_steps=5,
                             inner_optimizer='adam')

Each task runs `num_inner_steps` steps of an optax inner optimizer from the
meta-params on ALL of its examples (support and query: Reptile has no
query split in meta-training); the meta-update moves the meta-params toward
the adapted weights. It is written as the pseudo-gradient
``g = theta - mean_i(theta_i)`` handed to the outer optimizer `tx`: with
``optax.sgd(eps)`` that is exactly ``theta + eps * mean_i(theta_i - theta)``,
the paper's batched update; the paper anneals ``eps`` linearly to 0, which
the trainer does with ``config.meta_optimizer='sgd'`` and
``config.meta_lr_schedule='linear'`` (configs/maml_sine.py:reptile).

Evaluation adapts with the same inner optimizer and rate, on the support set.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from maml_plugin import core
from maml_plugin import fields
from maml_plugin.algorithms import base

INNER_OPTIMIZERS = ('sgd', 'adam')


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReptileHParams(base.HParams):
  """`base.HParams` and:

  Attributes:
    inner_optimizer: 'adam' (beta1 = 0, the paper's; the default) or 'sgd'.

  Unlike every other algorithm's, `inner_lr` is the step size of
  `inner_optimizer`: with the default Adam, each step moves every weight
  by about `inner_lr` whatever its gradient's scale, not ``inner_lr *
  grad``; with ``inner_optimizer='sgd'`` it is the plain SGD rate of the
  others. The default ``num_inner_steps=1`` does not meta-learn: one step
  from the meta-params makes Reptile's update a gradient step on the
  tasks' joint loss (Nichol et al. 2018), and in a loop of your own 300
  meta-steps at ``inner_lr=0.01`` ended with adapting worse than not
  (query loss 3.83 before, 6.84 after; 'sgd': 3.73, 6.77). Five steps
  train at 0.01 with either optimizer (300 meta-steps: 'sgd' 3.57 to
  2.49, 'adam' 3.73 to 2.76; docs/algorithms.md);
  configs/maml_sine.py:reptile takes the paper's five Adam steps at 0.01
  and anneals an SGD outer step.
  """

  inner_optimizer: str = fields.choice(*INNER_OPTIMIZERS, default='adam')


def inner_optimizer_for(name: str, inner_lr: float
                        ) -> optax.GradientTransformation:
  """The inner optimizer by name; Adam has beta1 = 0 as in the paper."""
  if name == 'sgd':
    return optax.sgd(inner_lr)
  if name == 'adam':
    return optax.adam(inner_lr, b1=0.0)
  raise fields.bad_value('inner_optimizer', name, 'one of ' + ', '.join(
      repr(n) for n in INNER_OPTIMIZERS))


def adapt_with_optimizer(loss_fn: core.LossFn, params, batch, *,
                         inner_tx: optax.GradientTransformation,
                         num_steps: int, model_state=None, rng=None):
  """`num_steps` steps of `inner_tx` on ONE task's `batch` (pure, scanned).

  For a `core.StatefulLoss`, step k's forward pass gets the state step
  k-1 left and the key ``core.support_key(rng, k)``; returns
  ``(params, model_state)``. Otherwise returns the params.
  """
  fn = core.as_stateful(loss_fn)

  def body(carry, k):
    p, opt_state, state = carry
    grads, state = jax.grad(fn, has_aux=True)(p, state, batch,
                                              core.support_key(rng, k))
    updates, opt_state = inner_tx.update(grads, opt_state, p)
    return (optax.apply_updates(p, updates), opt_state, state), None

  (params, _, model_state), _ = jax.lax.scan(
      body, (params, inner_tx.init(params), model_state),
      jnp.arange(num_steps, dtype=jnp.int32))
  return (params, model_state) if core.is_stateful(loss_fn) else params


def all_examples(task):
  """Support and query of ONE task, concatenated along the example axis."""
  return jax.tree.map(lambda s, q: jnp.concatenate([s, q]),
                      task['support'], task['query'])


def reptile_update(loss_fn: core.LossFn, params, meta_batch, *,
                   inner_tx: optax.GradientTransformation, num_steps: int,
                   model_state=None, rng=None):
  """``(theta - mean_i theta_i, (loss before, loss after, model state))``.

  The losses are the mean over tasks of the loss on all of a task's
  examples before and after its adaptation (for metrics only). The model
  state (`core.StatefulLoss`; None otherwise) is the mean over tasks of the
  state each task's adaptation left.
  """
  fn = core.as_stateful(loss_fn)

  def per_task(task, key):
    data = all_examples(task)
    adapted, state = adapt_with_optimizer(
        core.StatefulLoss(fn), params, data, inner_tx=inner_tx,
        num_steps=num_steps, model_state=model_state, rng=key)
    qkey = core.query_key(key)
    return (adapted, fn(params, model_state, data, qkey)[0],
            fn(adapted, state, data, qkey)[0], state)

  adapted, before, after, states = core.vmap_tasks(per_task, meta_batch, rng)
  direction = jax.tree.map(lambda p, a: p - jnp.mean(a, axis=0), params,
                           adapted)
  new_state = (core.mean_over_tasks(states) if core.is_stateful(loss_fn)
               else None)
  return direction, (jnp.mean(before), jnp.mean(after), new_state)


@base.TRAIN_STEPS.register('reptile', fields=ReptileHParams)
def make_reptile(hparams: ReptileHParams, *, loss_fn: core.LossFn,
                 tx: optax.GradientTransformation) -> base.MetaAlgorithm:
  """Reptile: meta-update toward the task-adapted weights (module docstring).

  `task_batch_size`: adapt that many tasks at a time
  (`core.over_task_batches`); the same update.
  """
  inner_tx = inner_optimizer_for(hparams.inner_optimizer, hparams.inner_lr)
  stateful = core.is_stateful(loss_fn)

  def keyed_update(params, tasks, model_state):
    batch, keys = tasks
    return reptile_update(loss_fn, params, batch, inner_tx=inner_tx,
                          num_steps=hparams.num_inner_steps,
                          model_state=model_state,
                          rng=keys)

  update_fn = core.over_task_batches(keyed_update, hparams.task_batch_size)

  def direction_fn(state: base.MetaTrainState, tasks):
    direction, (before, after, model_state) = update_fn(
        state.params, tasks, base.model_state_of(state))
    return direction, core.MetaOutput(before, after,
                                      model_state=model_state), {}

  train_step = base.meta_update_step(direction_fn, tx, stateful=stateful)

  def inner_loop_for(loss):
    def eval_step(meta_params, carry, support, k):
      del meta_params, k
      p, opt_state = carry
      updates, opt_state = inner_tx.update(jax.grad(loss)(p, support),
                                           opt_state, p)
      return optax.apply_updates(p, updates), opt_state
    return core.InnerLoop(init=lambda p: (p, inner_tx.init(p)),
                          step=eval_step, params=lambda carry: carry[0])

  return base.MetaAlgorithm(
      train_step=train_step, inner_loop_for=inner_loop_for, loss_fn=loss_fn)
