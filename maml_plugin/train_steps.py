"""Registered meta train steps: ``train_step(state, batch, rng) -> (state, metrics)``.

Usage in any Flax-examples-style loop::

  train_step = maml_plugin.make_train_step(
      'maml', loss_fn=loss_fn, tx=optax.adam(1e-3), inner_lr=0.01,
      num_inner_steps=1)
  state = maml_plugin.MetaTrainState.create(params, tx)
  train_step = jax.jit(train_step, donate_argnums=0)
  for step in range(num_steps):
    state, metrics = train_step(state, meta_batch, jax.random.fold_in(key, step))

A factory is registered with ``@TRAIN_STEPS.register(name)`` and takes its
hyper-parameters as keyword arguments named like the config fields they come
from (``inner_lr``, ``num_inner_steps``, ...); the trainer fills them from the
config by name.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from maml_plugin import core
from maml_plugin.metrics import ClassificationTrainMetrics
from maml_plugin.metrics import TrainMetrics
from maml_plugin.registry import Registry

TRAIN_STEPS = Registry('train_step')
TrainStep = Callable[[Any, Any, jax.Array], tuple[Any, Any]]


@flax.struct.dataclass
class MetaTrainState:
  """Everything a meta train step updates: a pytree, checkpointed whole.

  Attributes:
    step: number of meta-updates applied so far (int32 scalar).
    params: the meta-parameters (the initialization the inner loop adapts).
    opt_state: state of the outer optax optimizer.
  """

  step: jax.Array
  params: Any
  opt_state: Any

  @classmethod
  def create(cls, params: Any, tx: optax.GradientTransformation
             ) -> 'MetaTrainState':
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               opt_state=tx.init(params))


def make_train_step(name: str, *, loss_fn: core.LossFn,
                    tx: optax.GradientTransformation, **hparams) -> TrainStep:
  """Builds the registered train step `name` (see module docstring)."""
  return TRAIN_STEPS.lookup(name)(loss_fn=loss_fn, tx=tx, **hparams)


def hparam_names(name: str) -> list[str]:
  """The hyper-parameters (config fields) the factory `name` takes."""
  params = inspect.signature(TRAIN_STEPS.lookup(name)).parameters
  return [p for p in params if p not in _NOT_HPARAMS]


# Factory arguments the trainer supplies itself, not config fields.
_NOT_HPARAMS = ('loss_fn', 'tx', 'metric_fn')


def accepts_metric_fn(name: str) -> bool:
  """Whether the factory `name` reports a metric (e.g. accuracy)."""
  return 'metric_fn' in inspect.signature(TRAIN_STEPS.lookup(name)).parameters


def apply_meta_gradient(state: MetaTrainState, grads: Any,
                        tx: optax.GradientTransformation) -> MetaTrainState:
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  return state.replace(step=state.step + 1,
                       params=optax.apply_updates(state.params, updates),
                       opt_state=opt_state)


def _maml_like(*, loss_fn, tx, inner_lr, num_inner_steps, first_order,
               metric_fn=None) -> TrainStep:
  objective = functools.partial(core.maml_loss_and_aux, loss_fn,
                                inner_lr=inner_lr, num_steps=num_inner_steps,
                                first_order=first_order, metric_fn=metric_fn)
  grad_fn = jax.value_and_grad(objective, has_aux=True)

  def train_step(state: MetaTrainState, batch, rng: jax.Array):
    del rng  # The MAML inner loop is deterministic given the batch.
    (_, aux), grads = grad_fn(state.params, batch)
    outputs = dict(query_loss_before=aux.query_loss_before,
                   query_loss_after=aux.query_loss_after,
                   meta_grad_norm=optax.global_norm(grads))
    if metric_fn is None:
      metrics = TrainMetrics.single_from_model_output(**outputs)
    else:
      metrics = ClassificationTrainMetrics.single_from_model_output(
          query_accuracy_before=aux.query_metric_before,
          query_accuracy_after=aux.query_metric_after, **outputs)
    return apply_meta_gradient(state, grads, tx), metrics

  return train_step


@TRAIN_STEPS.register('maml')
def make_maml_train_step(*, loss_fn: core.LossFn,
                         tx: optax.GradientTransformation, inner_lr: float,
                         num_inner_steps: int = 1,
                         first_order: bool = False,
                         metric_fn: core.LossFn | None = None) -> TrainStep:
  """MAML (Finn et al. 2017): exact second order unless `first_order`.

  With `metric_fn` (classification accuracy) the metrics also hold
  ``query_accuracy_before`` and ``query_accuracy_after``.
  """
  return _maml_like(loss_fn=loss_fn, tx=tx, inner_lr=inner_lr,
                    num_inner_steps=num_inner_steps, first_order=first_order,
                    metric_fn=metric_fn)
