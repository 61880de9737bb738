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

``step(model, optimizer, batch, rng) -> metrics`` splits the module into
its graph and the variables the optimizer tracks (``optimizer.wrt``), runs
the registered pure ``train_step(state, batch, rng)`` on a
`maml_plugin.MetaTrainState` made of those variables, ``optimizer.step``
and ``optimizer.opt_state``, and writes the new values back into `model`
and `optimizer` (`nnx.update`), as ``optimizer.update`` would. The update
is the pure step's, so this loop and a loop over `MetaTrainState` with the
same keys reach the same params. The outer optimizer is ``optimizer.tx``.

Not here: algorithms whose train state holds meta-parameters beside the
model (Meta-SGD's and MAML++'s learned inner rates) need the pure step and
a `MetaTrainState`; they are refused with a message saying so.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx

from maml_plugin import train_steps

# ``loss(module, batch) -> scalar``: the user's loss on the merged module.
ModuleLoss = Callable[[nnx.Module, Any], jax.Array]


def nnx_train_step(name: str, *, loss: ModuleLoss,
                   metric: ModuleLoss | None = None, **hparams
                   ) -> Callable[..., Any]:
  """``step(model, optimizer, batch, rng) -> metrics`` for an NNX loop.

  Args:
    name: a registered train step ('maml', 'fomaml', 'anil', 'reptile', ...).
    loss: ``loss(module, batch) -> scalar``, the task loss on the module.
    metric: optional ``metric(module, batch) -> scalar`` (e.g. accuracy),
      reported beside the loss by the algorithms that take a ``metric_fn``.
    **hparams: the algorithm's hyper-parameters (``inner_lr``,
      ``num_inner_steps``, ...), as for `maml_plugin.make_train_step`.

  Returns:
    ``step(model, optimizer, batch, rng) -> metrics``, which updates `model`
    and `optimizer` in place; call it under `nnx.jit` (it compiles once).
  """
  def step(model: nnx.Module, optimizer: nnx.Optimizer, batch, rng):
    graph = getattr(optimizer, 'graph', None)
    graphdef, params, rest = nnx.split(model, optimizer.wrt, ...)
    # TODO(issue 9): models with state besides their parameters (BatchNorm,
    # Dropout): build the loss with `maml_plugin.nnx_bridge.NNXModel`, put
    # its `model_state` into the MetaTrainState and write the new one back.
    # Until then `rest` must hold nothing the forward pass changes.
    _check_parameter_only(rest, optimizer.wrt)
    params = nnx.as_pure(params)

    def module_fn(fn):
      return lambda p, batch: fn(nnx.merge(graphdef, p, rest), batch)

    kwargs = dict(hparams)
    if metric is not None and train_steps.accepts_metric_fn(name):
      kwargs['metric_fn'] = module_fn(metric)
    algorithm = train_steps.make_algorithm(
        name, loss_fn=module_fn(loss), tx=optimizer.tx, **kwargs)
    _check_same_params(name, algorithm, params)

    state = train_steps.MetaTrainState(
        step=optimizer.step[...], params=params,
        opt_state=nnx.as_pure(optimizer.opt_state))
    state, metrics = algorithm.train_step(state, batch, rng)

    nnx.update(model, state.params)
    nnx.update(optimizer.opt_state, nnx.state(state.opt_state, graph=graph))
    optimizer.step[...] = state.step
    return metrics

  return step


def _check_parameter_only(rest, wrt) -> None:
  """Refuses variables outside `wrt` (batch statistics, RNG streams): the
  step would drop their updates (see the TODO in `nnx_train_step`)."""
  kinds = sorted({type(v).__name__ for v in jax.tree.leaves(
      rest, is_leaf=lambda x: isinstance(x, nnx.Variable))})
  if kinds:
    raise ValueError(
        f'nnx_train_step: the model holds variables besides the optimizer\'s '
        f'wrt={wrt!r}: {", ".join(kinds)}; this step supports models whose '
        'forward pass changes only those (parameter-only models)')


def _check_same_params(name: str, algorithm, params) -> None:
  """The algorithm's train-state params must be the module's own."""
  own = algorithm.init_params(params)
  if jax.tree.structure(own) != jax.tree.structure(params):
    raise ValueError(
        f'nnx_train_step({name!r}): this algorithm meta-trains parameters '
        'besides the model (learned inner rates), which an nnx.Optimizer '
        'over the model does not hold; use maml_plugin.make_algorithm with '
        'a MetaTrainState of algorithm.init_params(params)')
