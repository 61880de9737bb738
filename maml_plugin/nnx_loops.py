"""Our registered train steps in an NNX-native loop (`nnx.Optimizer`).

Usage, in the shape of the current Flax NNX examples::

  model = MyModel(rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

  def loss(model, batch):                  # the module, merged, in train mode
    return jnp.mean((model(batch['x']) - batch['y']) ** 2)

  maml_step = maml_plugin.nnx_loops.nnx_train_step('maml', loss=loss,
                                                   inner_lr=0.01)

  @nnx.jit
  def train_step(model, optimizer, batch, rng):
    return maml_step(model, optimizer, batch, rng)

  for step in range(num_steps):
    rng = jax.random.fold_in(key, step)
    metrics = train_step(model, optimizer, tasks.train_batch(rng, 25), rng)

``step(model, optimizer, batch, rng) -> metrics`` splits the module with
`maml_plugin.nnx_bridge.NNXModel` (its `nnx.Param` leaves; its other state, such
as batch-norm running averages; its RNG streams, reseeded from `rng` for
every forward pass), runs the registered pure ``train_step(state, batch,
rng)`` on a `maml_plugin.MetaTrainState` of those params and that state,
``optimizer.step`` and ``optimizer.opt_state``, and writes the new values
back into `model` and `optimizer` (`nnx.update`), as ``optimizer.update``
would. The update is the pure step's, so this loop and a loop over
`MetaTrainState` with the same keys reach the same params. The outer
optimizer is ``optimizer.tx``.

Not here: algorithms whose train state holds more than the module does
(Meta-SGD's and MAML++'s learned inner rates, MAML++'s per-step batch-norm
statistics) need the pure step and a `MetaTrainState`; they are refused
with a message saying so.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx

from maml_plugin import nnx_bridge
from maml_plugin import algorithms
from maml_plugin.nnx_bridge import ModuleLoss


def nnx_train_step(name: str, *, loss: ModuleLoss,
                   metric: ModuleLoss | None = None, **hparams
                   ) -> Callable[..., Any]:
  """``step(model, optimizer, batch, rng) -> metrics`` for an NNX loop.

  Args:
    name: a registered train step ('maml', 'fomaml', 'anil', 'reptile', ...).
    loss: ``loss(module, batch) -> scalar``, the task loss on the module
      (in train mode: dropout on, batch norm from the batch's statistics).
    metric: optional ``metric(module, batch) -> scalar`` (e.g. accuracy),
      reported beside the loss by the algorithms that take a ``metric_fn``.
    **hparams: the algorithm's hyper-parameters (``inner_lr``,
      ``num_inner_steps``, ...), as for `maml_plugin.make_train_step`.

  Returns:
    ``step(model, optimizer, batch, rng) -> metrics``, which updates `model`
    and `optimizer` in place; call it under `nnx.jit` (it compiles once).
    `optimizer` must be ``nnx.Optimizer(model, tx, wrt=nnx.Param)``: the
    inner loop adapts every `nnx.Param`, and the outer loop meta-trains them.
  """
  def step(model: nnx.Module, optimizer: nnx.Optimizer, batch, rng):
    if optimizer.wrt is not nnx.Param:
      raise ValueError(
          f'nnx_train_step: optimizer.wrt={optimizer.wrt!r}: must be '
          'nnx.Param (nnx.Optimizer(model, tx, wrt=nnx.Param)); the inner '
          'loop adapts and the outer loop meta-trains every nnx.Param')
    bridge = nnx_bridge.NNXModel(model)
    params = nnx.as_pure(bridge.params)
    kwargs = dict(hparams)
    if metric is not None and algorithms.accepts_metric_fn(name):
      kwargs['metric_fn'] = bridge.task_loss(metric)
    algorithm = algorithms.make_algorithm(
        name, loss_fn=bridge.task_loss(loss), tx=optimizer.tx, **kwargs)
    _check_same_params(name, algorithm, params)
    model_state = bridge.model_state
    if model_state is not None:
      model_state = algorithm.init_model_state(model_state)
      if (jax.tree.structure(model_state)
          != jax.tree.structure(bridge.model_state)):
        raise ValueError(
            f'nnx_train_step({name!r}): this algorithm keeps the model\'s '
            'state in another form than the module (one copy per inner '
            'step); use maml_plugin.make_algorithm with a MetaTrainState')

    state = algorithms.MetaTrainState(
        step=optimizer.step[...], params=params,
        opt_state=nnx.as_pure(optimizer.opt_state), model_state=model_state)
    state, metrics = algorithm.train_step(state, batch, rng)

    bridge.update_module(state.params, state.model_state)
    graph = getattr(optimizer, 'graph', None)
    nnx.update(optimizer.opt_state, nnx.state(state.opt_state, graph=graph))
    optimizer.step[...] = state.step
    return metrics

  return step


def _check_same_params(name: str, algorithm, params) -> None:
  """The algorithm's train-state params must be the module's own."""
  own = algorithm.init_params(params)
  if jax.tree.structure(own) != jax.tree.structure(params):
    raise ValueError(
        f'nnx_train_step({name!r}): this algorithm meta-trains parameters '
        'besides the model (learned inner rates), which an nnx.Optimizer '
        'over the model does not hold; use maml_plugin.make_algorithm with '
        'a MetaTrainState of algorithm.init_params(params)')
