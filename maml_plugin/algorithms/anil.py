"""ANIL (Raghu et al. 2020) as a registered train step, ``'anil'``.

Usage::

  algorithm = make_algorithm('anil', loss_fn=loss_fn, tx=tx, inner_lr=0.01,
                             head_filter='^layers/2/')   # None: last layer

The inner loop adapts the head only, chosen by `head_filter` (see
`head_mask`). The body is a constant of the inner loop, so its inner
gradients are never computed; the outer loop trains body and head, the
body's meta-gradient flowing through the adapted head.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from maml_plugin import core
from maml_plugin import fields
from maml_plugin.algorithms import base


@dataclasses.dataclass(frozen=True, kw_only=True)
class ANILHParams(base.HParams):
  """`base.HParams` and:

  Attributes:
    first_order: drop the inner loop's second derivatives.
    head_filter: regular expression over parameter paths (`base.param_path`)
      selecting the head; None: the last layer.
    remat_inner_steps: rematerialize each inner step (same gradient).
  """

  first_order: bool = fields.flag(False)
  head_filter: str | None = fields.field(
      None, check=fields.regex_or_none,
      allowed='None (the last layer) or a non-empty regular expression '
      'searched in parameter paths like layers/2/kernel/value')
  remat_inner_steps: bool = fields.flag(False, changes_training=False)


def head_mask(params, head_filter: str | None) -> list[bool]:
  """Which leaves (in `jax.tree.leaves` order) ANIL's inner loop adapts.

  `head_filter` is a regular expression searched in each leaf's path
  (`base.param_path`); None means the last layer: the leaves whose path,
  without its last two names (``kernel/value``), equals the last leaf's.

  Raises:
    ValueError: naming the filter and the paths, if it selects no leaf or
      every leaf (then ANIL would be MAML).
  """
  if head_filter is not None:
    return base.select_leaves(params, head_filter, 'head_filter')
  paths = base.leaf_paths(params)
  last = paths[-1].split('/')[:-2]
  return base.some_but_not_all([p.split('/')[:-2] == last for p in paths],
                               paths, 'head_filter=None')


def _with_head(loss_fn, params, mask):
  """`loss_fn` of the head's leaves, the body's held at `params`'."""
  _, body = base.split_leaves(params, mask)
  return base.restrict_loss(
      loss_fn, lambda head: base.merge_leaves(params, head, body, mask))


@base.TRAIN_STEPS.register('anil', fields=ANILHParams)
def make_anil(hparams: ANILHParams, *, loss_fn: core.LossFn,
              tx: optax.GradientTransformation) -> base.MetaAlgorithm:
  """ANIL (see module docstring)."""
  head_filter = hparams.head_filter

  def adapt(params, support, model_state, key):
    mask = head_mask(params, head_filter)
    head, body = base.split_leaves(params, mask)
    out = core.adapt(_with_head(loss_fn, params, mask), head, support,
                     inner_lr=hparams.inner_lr,
                     num_steps=hparams.num_inner_steps,
                     first_order=hparams.first_order,
                     remat=hparams.remat_inner_steps, model_state=model_state,
                     rng=key)
    head, state = out if core.is_stateful(loss_fn) else (out, model_state)
    return base.merge_leaves(params, head, body, mask), state

  def objective(params, batch, model_state, rng):
    fn = core.as_stateful(loss_fn)

    def per_task(task, key):
      qkey = core.query_key(key)
      before, _ = fn(params, model_state, task['query'], qkey)
      adapted, state = adapt(params, task['support'], model_state, key)
      after, state = fn(adapted, state, task['query'], qkey)
      return (before, after), state

    (before, after), states = core.vmap_tasks(per_task, batch, rng)
    after = jnp.mean(after)
    new_state = None
    if core.is_stateful(loss_fn):
      new_state = jax.lax.stop_gradient(core.mean_over_tasks(states))
    return after, core.MetaOutput(
        query_loss_before=jax.lax.stop_gradient(jnp.mean(before)),
        query_loss_after=after, model_state=new_state)

  def inner_loop_for(loss):
    def eval_step(meta_params, p, support, k):
      del meta_params, k
      mask = head_mask(p, head_filter)
      head, body = base.split_leaves(p, mask)
      head = core.sgd_step(_with_head(loss, p, mask), head, support,
                           inner_lr=hparams.inner_lr)
      return base.merge_leaves(p, head, body, mask)
    return core.InnerLoop(init=lambda params: params, step=eval_step,
                          params=lambda p: p)

  def init_params(model_params):
    head_mask(model_params, head_filter)  # Fail early on a bad filter.
    return model_params

  return base.MetaAlgorithm(
      train_step=base.gradient_train_step(objective, tx,
                                          hparams.task_batch_size,
                                          core.is_stateful(loss_fn)),
      inner_loop_for=inner_loop_for, init_params=init_params,
      loss_fn=loss_fn)
