"""nnx_train_step in an NNX-native loop equals the pure registered step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import maml_plugin
from maml_plugin import nnx_loops
from maml_plugin.tasks import SinusoidTasks

NUM_STEPS = 5
META_BATCH = 8


class UserMLP(nnx.Module):
  """A model the user wrote, not one of ours."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(1, 32, rngs=rngs)
    self.out = nnx.Linear(32, 1, rngs=rngs)

  def __call__(self, x):
    return self.out(jax.nn.relu(self.hidden(x)))


def mse(model, batch):
  return jnp.mean((model(batch['x']) - batch['y']) ** 2)


def batches():
  tasks = SinusoidTasks(num_support=5, num_query=5)
  key = jax.random.key(0)
  for step in range(NUM_STEPS):
    batch_rng, step_rng = jax.random.split(jax.random.fold_in(key, step))
    yield tasks.train_batch(batch_rng, META_BATCH), step_rng


@pytest.mark.parametrize('name,hparams', [
    ('maml', dict(inner_lr=0.01, num_inner_steps=1)),
    ('reptile', dict(inner_lr=0.01, num_inner_steps=2)),
])
def test_nnx_loop_matches_the_pure_train_step(name, hparams):
  tx = optax.adam(1e-2)
  traces = []

  def loss(model, batch):
    traces.append(None)  # Runs only while tracing.
    return mse(model, batch)

  # The NNX-native loop, as the Flax NNX examples write it.
  model = UserMLP(rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  maml_step = nnx_loops.nnx_train_step(name, loss=loss, **hparams)

  @nnx.jit
  def train_step(model, optimizer, batch, rng):
    return maml_step(model, optimizer, batch, rng)

  # The same steps through the pure train step on a MetaTrainState.
  graphdef, params = nnx.split(UserMLP(rngs=nnx.Rngs(0)), nnx.Param)
  pure_step = jax.jit(maml_plugin.make_train_step(
      name, loss_fn=lambda p, batch: mse(nnx.merge(graphdef, p), batch),
      tx=tx, **hparams))
  state = maml_plugin.MetaTrainState.create(params, tx)

  for batch, rng in batches():
    metrics = train_step(model, optimizer, batch, rng)
    state, pure_metrics = pure_step(state, batch, rng)
    for k, v in pure_metrics.compute().items():
      np.testing.assert_allclose(metrics.compute()[k], v, rtol=1e-5)
  traced = len(traces)

  assert int(optimizer.step[...]) == int(state.step) == NUM_STEPS
  model_params = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert len(model_params) == len(jax.tree.leaves(state.params)) == 4
  for a, b in zip(model_params, jax.tree.leaves(state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  opt_leaves = jax.tree.leaves(nnx.as_pure(optimizer.opt_state))
  for a, b in zip(opt_leaves, jax.tree.leaves(state.opt_state)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # The params moved, and the step compiled once.
  initial = jax.tree.leaves(nnx.state(UserMLP(rngs=nnx.Rngs(0)), nnx.Param))
  assert any(not np.allclose(a, b) for a, b in zip(model_params, initial))
  train_step(model, optimizer, *next(batches()))
  assert len(traces) == traced


def test_learned_rate_algorithms_are_refused():
  model = UserMLP(rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
  step = nnx_loops.nnx_train_step('metasgd', loss=mse, inner_lr=0.01)
  with pytest.raises(ValueError, match=r"nnx_train_step\('metasgd'\): this "
                     'algorithm meta-trains parameters besides the model'):
    step(model, optimizer, *next(batches()))


class WithStateAndDropout(nnx.Module):
  """Batch-norm running averages and a dropout stream: state besides params."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.linear = nnx.Linear(1, 16, rngs=rngs)
    self.norm = nnx.BatchNorm(16, rngs=rngs)
    self.dropout = nnx.Dropout(0.2, rngs=rngs)
    self.out = nnx.Linear(16, 1, rngs=rngs)

  def __call__(self, x):
    return self.out(self.dropout(jax.nn.relu(self.norm(self.linear(x)))))


def test_model_state_and_dropout_keys_match_the_bridge_and_pure_step():
  tx = optax.adam(1e-2)
  model = WithStateAndDropout(rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  maml_step = nnx_loops.nnx_train_step('maml', loss=mse, inner_lr=0.01)
  train_step = nnx.jit(maml_step)

  # The pure path, as maml_plugin.nnx_bridge documents it.
  bridge = maml_plugin.NNXModel(WithStateAndDropout(rngs=nnx.Rngs(0)))
  pure_step = jax.jit(maml_plugin.make_train_step(
      'maml', loss_fn=bridge.task_loss(mse), tx=tx, inner_lr=0.01))
  state = maml_plugin.MetaTrainState.create(
      bridge.params, tx, model_state=bridge.model_state)

  for batch, rng in batches():
    train_step(model, optimizer, batch, rng)
    state, _ = pure_step(state, batch, rng)

  for kind, expected in ((nnx.Param, state.params),
                         (nnx.BatchStat, state.model_state)):
    got = jax.tree.leaves(nnx.state(model, kind))
    assert len(got) == len(jax.tree.leaves(expected))
    for a, b in zip(got, jax.tree.leaves(expected)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # The running averages moved away from their initial values.
  initial = nnx.state(WithStateAndDropout(rngs=nnx.Rngs(0)), nnx.BatchStat)
  assert not np.allclose(jax.tree.leaves(nnx.state(model, nnx.BatchStat))[0],
                         jax.tree.leaves(initial)[0])


def test_optimizer_over_other_variables_is_refused():
  model = UserMLP(rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Variable)
  step = nnx_loops.nnx_train_step('maml', loss=mse, inner_lr=0.01)
  with pytest.raises(ValueError, match='optimizer.wrt=.*must be nnx.Param'):
    step(model, optimizer, *next(batches()))
