"""The contract every registered algorithm keeps, checked for each one.

Parameterized over the algorithms the package registers
(`TRAIN_STEPS.names()`, so a new one is checked without editing this
file): for a parameter-only model and for one with state (BatchNorm,
Dropout), its jitted train step compiles once and gives a finite update,
and `task_batch_size` gives the same update as all tasks at once
(float64). For every shipped sine config (one per algorithm), the
trainer's fused loop built from the config compiles once, updates
finitely and gives each meta-step new tasks.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import maml_plugin
from configs import maml_sine
from maml_plugin import losses
from maml_plugin import train
from maml_plugin.algorithms import TRAIN_STEPS
from maml_plugin.models import MLP
from maml_plugin.tasks import SinusoidTasks
from tests.layout_checks import package_names

# Hyper-parameters each algorithm is checked with: its declared defaults,
# then a few inner steps (so that the inner loop matters) and these
# overrides. An algorithm registered later is picked up from the registry.
CONTRACT_OVERRIDES = {
    'reptile': dict(inner_optimizer='sgd'),
    'mamlpp': dict(msl_anneal_steps=10, first_order_steps=1),
    'imaml': dict(prox_lambda=2.0, num_cg_steps=3),
}
MODELS = ('params_only', 'with_state')
META_BATCH = 4
# The package's own algorithms (tests register others; they are not ours).
ALGORITHMS = package_names(TRAIN_STEPS)


def _hparams(name: str) -> dict:
  declared = TRAIN_STEPS.fields(name)
  hparams = dict(declared.defaults())
  hparams.update(inner_lr=0.01, num_inner_steps=2)
  hparams.update(CONTRACT_OVERRIDES.get(name, {}))
  hparams = {k: v for k, v in hparams.items() if k in declared.names()}
  missing = [f for f in declared.names() if f not in hparams]
  assert not missing, (f'train_step {name!r}: no value for {missing}; add '
                       'them to tests/test_algorithms.py:CONTRACT_OVERRIDES')
  return hparams


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


def _assert_finite_updates(states, metrics):
  """Each state's params are finite and differ from the previous one's."""
  for before, after in zip(states, states[1:]):
    leaves = jax.tree.leaves(after.params)
    assert all(np.all(np.isfinite(leaf)) for leaf in leaves)
    assert any(not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(before.params), leaves)), 'no update'
  assert all(np.isfinite(v) for v in metrics.compute().values())


# The parameter-only model: test_shipped_config_trains_on_new_tasks_each_step.
@pytest.mark.parametrize('kind', ['with_state'])
@pytest.mark.parametrize('name', ALGORITHMS)
def test_train_step_compiles_once_and_updates_finitely(name, kind):
  algorithm, state = _state(name, _hparams(name), kind)
  step = jax.jit(algorithm.train_step)
  first, _ = step(state, _batch(0), jax.random.key(0))
  second, metrics = step(first, _batch(1), jax.random.key(1))
  assert step._cache_size() == 1  # pylint: disable=protected-access
  assert int(second.step) == 2
  _assert_finite_updates((state, first, second), metrics)
  if kind == 'with_state':  # The running averages moved, and stay finite.
    assert any(not np.allclose(a, b) for a, b in zip(
        jax.tree.leaves(state.model_state),
        jax.tree.leaves(second.model_state)))
    assert all(np.all(np.isfinite(leaf))
               for leaf in jax.tree.leaves(second.model_state))


@pytest.mark.parametrize('kind', MODELS)
@pytest.mark.parametrize('name', ALGORITHMS)
def test_task_batch_size_gives_the_same_update(x64, name, kind):
  del x64
  """Two meta-steps over task batches of 2 and of 1 give the whole
  meta-batch's parameters, model state and metrics (the optimizer's update
  divides by sqrt(v): agreement to 1e-9 relative)."""
  hparams = _hparams(name)
  updates = []
  for task_batch_size in (None, 2, 1):
    algorithm, state = _state(name, dict(hparams,
                                         task_batch_size=task_batch_size),
                              kind, jnp.float64)
    step = jax.jit(algorithm.train_step)
    for i in range(2):
      state, metrics = step(state, _batch(i), jax.random.key(3 + i))
    updates.append((state.params, state.model_state, metrics.compute()))
  whole, *batched = updates
  for other in batched:
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(other),
                    strict=True):
      assert a.dtype == jnp.float64
      np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def _sine_configs():
  """The shipped sine config of every package algorithm (a registered one
  without a variant runs on the quick MAML config with its name)."""
  out = []
  for name in ALGORITHMS:
    arg = f'quick,{name}' if name in maml_sine.ALGORITHMS else 'quick'
    config = maml_sine.get_config(arg)
    config.train_step = name
    out.append(pytest.param(config, id=name))
  return out


@pytest.mark.parametrize('config', _sine_configs())
def test_shipped_config_trains_on_new_tasks_each_step(config):
  """Pins, per algorithm and config: a train step that recompiles on the
  second call (a Python value in the traced state), a non-finite or absent
  update, and meta-steps that see the same tasks (the fused loop's batch
  key not folded with the step)."""
  config.hidden_sizes = (8,) * len(config.hidden_sizes)  # ANIL's head
  config.meta_batch_size = 2
  problem = train.create_problem(config)
  tx = train.create_optimizer(config)
  algorithm = train.create_algorithm(config, problem, tx)
  state = train.create_train_state(problem, algorithm, tx)
  seen = []

  class RecordingTasks:
    """The config's tasks; each sampled meta-batch's checksum recorded."""

    def train_batch(self, rng, num_tasks):
      batch = problem.tasks.train_batch(rng, num_tasks)
      jax.debug.callback(lambda c: seen.append(float(c)),
                         jnp.sum(batch['support']['x']), ordered=True)
      return batch

  chunk = jax.jit(train.make_train_chunk(
      algorithm.train_step, RecordingTasks(), meta_batch_size=2,
      steps_per_call=2))
  rng = jax.random.key(config.seed)
  first, _, _ = chunk(state, rng)
  second, metrics, _ = chunk(first, rng)
  jax.effects_barrier()
  assert chunk._cache_size() == 1  # pylint: disable=protected-access
  assert int(second.step) == 4
  assert len(seen) == 4 and len(set(seen)) == 4, seen
  _assert_finite_updates((state, first, second), metrics)
