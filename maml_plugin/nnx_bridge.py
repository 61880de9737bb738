"""Any Flax NNX module through the pure core: parameters, state and keys.

Usage::

  class Net(nnx.Module):                    # the user's own network
    def __init__(self, rngs):
      self.conv = nnx.Conv(1, 32, (3, 3), rngs=rngs)
      self.bn = nnx.BatchNorm(32, rngs=rngs)
      self.dropout = nnx.Dropout(0.1, rngs=rngs)
      self.head = nnx.Linear(32, 5, rngs=rngs)
    ...

  model = maml_plugin.NNXModel(Net(nnx.Rngs(0)))      # split once
  def cross_entropy(net, batch):                      # net: a merged Net
    return optax.softmax_cross_entropy_with_integer_labels(
        net(batch['x']), batch['y']).mean()
  loss_fn = model.task_loss(cross_entropy)            # train mode
  train_step = maml_plugin.make_train_step('maml', loss_fn=loss_fn, tx=tx,
                                           inner_lr=0.4)
  state = maml_plugin.MetaTrainState.create(model.params, tx,
                                            model_state=model.model_state)
  state, metrics = jax.jit(train_step)(state, meta_batch, rng)
  model.update_module(state.params, state.model_state)  # back into Net

What travels where:

* ``model.params``: the `nnx.Param` variables, the only thing the inner
  loop adapts and the outer loop meta-trains.
* ``model.model_state``: every other `nnx.Variable` (`nnx.BatchStat`
  running averages, counters, ...) except RNG streams; None when there is
  none. A train step passes it through the forward passes explicitly and
  stores what they leave (`core.maml_loss_and_aux` says which passes).
* RNG streams (`nnx.Rngs` held by `nnx.Dropout` and others) are not state:
  each forward pass gets its own key from the train step's `rng`
  (`core.support_key`, `core.query_key`), and every stream of the module is
  reseeded from it, so masks differ across tasks, inner steps and support
  and query, and repeat under the same seed.

Modes: `task_loss` runs the module in train mode (dropout on, batch norm
normalising with the batch's own statistics and updating its running
averages); `eval_loss` in evaluation mode (dropout off; batch norm from the
batch's statistics with ``batch_stats=True``, the transductive default of
the MAML reference code, or from the stored running averages with
``batch_stats=False``). Modes are set with `nnx.view` on the attributes
``deterministic`` and ``use_running_average``, which Flax's own layers read.

A module whose parameters are its only state gets a plain
``loss_fn(params, batch)`` (the fast path), so nothing changes for it.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maml_plugin import core

# A loss of a merged model: ``loss(model, batch) -> scalar``. What a task
# family gives (`tasks.TaskProblem.loss`) and `NNXModel.task_loss` takes.
ModuleLoss = Callable[[nnx.Module, Any], jax.Array]


def _fresh(tree):
  """New Variable containers for `tree`'s arrays, made in the current trace
  (NNX refuses to mutate a Variable created in another one)."""
  return jax.tree.map(lambda a: a, tree)


def _path(path) -> str:
  return '/'.join(core.key_path_names(path))


def _check_variables(module: nnx.Module) -> None:
  """One line naming the first variable the core cannot carry."""
  for path, variable in nnx.iter_graph(module):
    if not isinstance(variable, nnx.Variable):
      continue
    value = variable.get_value() if hasattr(variable, 'get_value') else (
        variable.value)
    name = '/'.join(str(p) for p in path)
    if isinstance(variable, nnx.Intermediate):
      raise ValueError(
          f'{name}: {type(variable).__name__} (a value sown with '
          '`Module.sow`) cannot travel through meta-training, whose state '
          'keeps one structure; pop it (nnx.pop) before meta-training')
    if not isinstance(value, (jax.Array, np.ndarray)):
      raise ValueError(
          f'{name}: {type(variable).__name__} holds a '
          f'{type(value).__name__}, not an array; the core carries '
          'nnx.Variables of arrays only (nnx.Param, nnx.BatchStat, RNG '
          'streams, other array variables)')
    if isinstance(variable, nnx.Param) and not jnp.issubdtype(
        value.dtype, jnp.inexact):
      raise ValueError(
          f'{name}: nnx.Param of dtype {value.dtype}: the inner loop '
          'differentiates every nnx.Param, so it must be a float array; '
          'hold integers in another nnx.Variable type')


class NNXModel:
  """An `nnx.Module` split once into what the pure core needs.

  Attributes:
    graphdef: the module's static structure.
    params: its `nnx.Param` variables (an `nnx.State`).
    model_state: its other variables except RNG streams (an `nnx.State`),
      or None when it has none.
    rng_streams: the names of its RNG streams (e.g. ``('dropout',)``).
  """

  def __init__(self, module: nnx.Module):
    _check_variables(module)
    self.module = module
    graphdef, params, rng_state, rest = nnx.split(module, nnx.Param,
                                                  nnx.RngState, ...)
    self.graphdef = graphdef
    self.params = params
    self._rng_template = rng_state
    self.model_state = rest if jax.tree.leaves(rest) else None
    self._rest_template = rest
    self.rng_streams = tuple(sorted({
        getattr(v, 'tag', None) or 'default'
        for v in jax.tree.leaves(rng_state,
                                 is_leaf=lambda x: isinstance(x, nnx.Variable))
    }))

  @property
  def stateful(self) -> bool:
    """Whether the module has state besides its parameters (or RNGs)."""
    return self.model_state is not None or bool(self.rng_streams)

  def _rngs_from(self, rng):
    """The module's RNG state, every stream reseeded from `rng`."""
    leaves = jax.tree_util.tree_flatten_with_path(self._rng_template)[0]
    index = {_path(p): i for i, (p, _) in enumerate(leaves)}

    def reseed(path, x):
      if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.fold_in(rng, index[_path(path)])
      return jnp.zeros_like(x)  # The stream's counter restarts.
    return jax.tree_util.tree_map_with_path(reseed, self._rng_template)

  def merge(self, params, model_state=None, rng=None, **mode) -> nnx.Module:
    """A new module from `params` and `model_state`, its streams reseeded
    from `rng` (kept as built when None), viewed with the `mode` attributes
    (`nnx.view`). Call it inside the pure function that uses it."""
    rngs = (_fresh(self._rng_template) if rng is None
            else self._rngs_from(rng))
    state = self._rest_template if model_state is None else model_state
    module = nnx.merge(self.graphdef, _fresh(params), rngs, _fresh(state))
    if mode:
      module = nnx.view(module, raise_if_not_found=False, **mode)
    return module

  def _state_of(self, module: nnx.Module):
    if self.model_state is None:
      return None
    _, _, _, rest = nnx.split(module, nnx.Param, nnx.RngState, ...)
    return rest

  def _loss(self, fn: ModuleLoss, *, needs_rng: bool, **mode):
    def stateful(params, model_state, batch, rng):
      if rng is None and needs_rng and self.rng_streams:
        raise ValueError(
            f'rng=None: this model has RNG streams ({", ".join(self.rng_streams)}'
            ') that its train-mode forward pass draws from; pass the train '
            "step's rng")
      module = self.merge(params, model_state, rng, **mode)
      loss = fn(module, batch)
      return loss, self._state_of(module)

    if not self.stateful:
      return lambda params, batch: stateful(params, None, batch, None)[0]
    return core.StatefulLoss(stateful)

  def task_loss(self, fn: ModuleLoss):
    """The training loss: ``fn(module, batch) -> scalar`` in train mode.

    A `core.StatefulLoss` when the module has state or RNG streams, else
    a plain ``loss_fn(params, batch)``.
    """
    return self._loss(fn, needs_rng=True, deterministic=False,
                      use_running_average=False)

  def eval_loss(self, fn: ModuleLoss, *, batch_stats: bool = True):
    """The evaluation loss (or metric): dropout off; batch norm from each
    batch's statistics (`batch_stats`, default) or the stored averages."""
    return self._loss(fn, needs_rng=False, deterministic=True,
                      use_running_average=not batch_stats)

  def update_module(self, params, model_state=None) -> nnx.Module:
    """Writes `params` (and `model_state`) into the module; returns it."""
    nnx.update(self.module, params)
    if model_state is not None:
      nnx.update(self.module, model_state)
    return self.module
