"""The contract every registered algorithm keeps, checked for each one.

Parameterized over `TRAIN_STEPS.names()`: an algorithm the package
registers without an entry in `CONTRACT_HPARAMS` fails here. For a
parameter-only model and for one with state (BatchNorm, Dropout), its
jitted train step compiles once and gives a finite update, and
`task_batch_size` gives the same update as all tasks at once (float64).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import maml_plugin
from maml_plugin import losses
from maml_plugin.algorithms import TRAIN_STEPS
from maml_plugin.models import MLP
from maml_plugin.tasks import SinusoidTasks

# Hyper-parameters each algorithm is checked with (a few inner steps, so
# that the inner loop matters). Register an algorithm, add it here.
CONTRACT_HPARAMS = {
    'maml': dict(inner_lr=0.01, num_inner_steps=2),
    'fomaml': dict(inner_lr=0.01, num_inner_steps=2),
    'metasgd': dict(inner_lr=0.01, num_inner_steps=2),
    'anil': dict(inner_lr=0.01, num_inner_steps=2),
    'reptile': dict(inner_lr=0.01, num_inner_steps=2, inner_optimizer='sgd'),
    'mamlpp': dict(inner_lr=0.01, num_inner_steps=2, msl_anneal_steps=10,
                   first_order_steps=1),
    'imaml': dict(inner_lr=0.01, num_inner_steps=2, prox_lambda=2.0,
                  num_cg_steps=3),
}
MODELS = ('params_only', 'with_state')
META_BATCH = 4


def _hparams(name: str) -> dict:
  factory = TRAIN_STEPS.lookup(name)
  if not factory.__module__.startswith('maml_plugin.'):
    pytest.skip(f'{name!r} is registered by {factory.__module__}, not by '
                'the package')
  assert name in CONTRACT_HPARAMS, (
      f'train_step {name!r} is registered but has no entry in '
      'tests/test_algorithms.py:CONTRACT_HPARAMS; add its hyper-parameters')
  return CONTRACT_HPARAMS[name]


class NormNet(nnx.Module):
  """A regressor with BatchNorm running averages and Dropout."""

  def __init__(self, rngs):
    self.hidden = nnx.Linear(1, 8, rngs=rngs)
    self.norm = nnx.BatchNorm(8, rngs=rngs)
    self.dropout = nnx.Dropout(0.1, rngs=rngs)
    self.out = nnx.Linear(8, 1, rngs=rngs)

  def __call__(self, x):
    return self.out(self.dropout(nnx.relu(self.norm(self.hidden(x)))))


def _mse(module, batch):
  return losses.mse(module(batch['x']), batch['y'])


def _problem(kind: str, dtype=jnp.float32):
  """``(loss_fn, params, model_state)`` of a small model, in `dtype`."""
  module = (MLP(1, (8, 8), 1, rngs=nnx.Rngs(0)) if kind == 'params_only'
            else NormNet(nnx.Rngs(0)))
  model = maml_plugin.NNXModel(module)

  def cast(tree):
    return None if tree is None else jax.tree.map(lambda a: a.astype(dtype),
                                                  tree)

  return model.task_loss(_mse), cast(model.params), cast(model.model_state)


def _state(name, hparams, kind, dtype=jnp.float32):
  loss_fn, params, model_state = _problem(kind, dtype)
  tx = optax.sgd(1e-3)
  algorithm = maml_plugin.make_algorithm(name, loss_fn=loss_fn, tx=tx,
                                         **hparams)
  state = maml_plugin.MetaTrainState.create(
      algorithm.init_params(params), tx,
      model_state=(None if model_state is None
                   else algorithm.init_model_state(model_state)))
  return algorithm, state


def _batch(seed):
  return SinusoidTasks(num_support=5, num_query=5).sample(
      jax.random.key(seed), META_BATCH)


@pytest.mark.parametrize('kind', MODELS)
@pytest.mark.parametrize('name', TRAIN_STEPS.names())
def test_train_step_compiles_once_and_updates_finitely(name, kind):
  algorithm, state = _state(name, _hparams(name), kind)
  step = jax.jit(algorithm.train_step)
  first, _ = step(state, _batch(0), jax.random.key(0))
  second, metrics = step(first, _batch(1), jax.random.key(1))
  assert step._cache_size() == 1  # pylint: disable=protected-access
  assert int(second.step) == 2
  for before, after in ((state, first), (first, second)):
    leaves = jax.tree.leaves(after.params)
    assert all(np.all(np.isfinite(leaf)) for leaf in leaves)
    assert any(not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(before.params), leaves)), 'no update'
  assert all(np.isfinite(v) for v in metrics.compute().values())
  if kind == 'with_state':  # The running averages moved, and stay finite.
    assert any(not np.allclose(a, b) for a, b in zip(
        jax.tree.leaves(state.model_state),
        jax.tree.leaves(second.model_state)))
    assert all(np.all(np.isfinite(leaf))
               for leaf in jax.tree.leaves(second.model_state))


@pytest.mark.parametrize('kind', MODELS)
@pytest.mark.parametrize('name', TRAIN_STEPS.names())
def test_task_batch_size_gives_the_same_update(x64, name, kind):
  del x64
  hparams = _hparams(name)
  updates = []
  for task_batch_size in (None, 2, 1):
    algorithm, state = _state(name, dict(hparams,
                                         task_batch_size=task_batch_size),
                              kind, jnp.float64)
    new_state, _ = jax.jit(algorithm.train_step)(state, _batch(0),
                                                 jax.random.key(3))
    updates.append(new_state)
  whole, *batched = updates
  for other in batched:
    for a, b in zip(jax.tree.leaves((whole.params, whole.model_state)),
                    jax.tree.leaves((other.params, other.model_state))):
      assert a.dtype == jnp.float64
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
