"""Our registered train step and periodic actions in loops that are not ours."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from clu import metric_writers
from clu import periodic_actions
from flax import nnx
from flax.training import train_state

import maml_plugin
from configs import maml_sine
from maml_plugin import actions
from maml_plugin import checkpointing
from maml_plugin import train

NUM_STEPS = 20


class RecordingWriter(metric_writers.LoggingWriter):
  """Logs like CLU's logging writer and keeps what was written."""

  def __init__(self):
    super().__init__()
    self.scalars = {}

  def write_scalars(self, step, scalars):
    super().write_scalars(step, scalars)
    for k, v in scalars.items():
      self.scalars[(k, int(step))] = float(v)


@pytest.fixture(scope='module')
def pieces():
  config = maml_sine.get_config('maml,quick')
  config.num_eval_tasks = 10
  problem = train.create_problem(config)
  tx = train.create_optimizer(config)
  train_step = maml_plugin.make_train_step(
      'maml', loss_fn=problem.loss_fn, tx=tx, inner_lr=config.inner_lr)
  evaluator = train.create_evaluator(config, problem)
  return config, problem, tx, train_step, evaluator


def flax_examples_loop(pieces, workdir):
  """A Flax-examples-style loop with our step and actions as its hooks."""
  config, problem, tx, train_step, evaluator = pieces
  # A copy: the jitted step donates the state, and so its buffers.
  params = jax.tree.map(jnp.copy, problem.init_params)
  state = maml_plugin.MetaTrainState.create(params, tx)
  key = jax.random.key(0)
  writer = RecordingWriter()
  manager = checkpointing.create_manager(workdir, max_to_keep=5)
  hooks = [
      periodic_actions.ReportProgress(num_train_steps=NUM_STEPS,
                                      writer=writer, every_steps=10),
      actions.FewShotEvaluation(evaluator=evaluator, writer=writer,
                                state_fn=lambda: state, every_steps=10),
      actions.Checkpoint(manager=manager, state_fn=lambda: state, rng=key,
                         every_steps=10),
  ]
  step_fn = jax.jit(train_step, donate_argnums=0)
  for step in range(NUM_STEPS):
    batch_rng, step_rng = jax.random.split(jax.random.fold_in(key, step))
    batch = problem.tasks.train_batch(batch_rng, config.meta_batch_size)
    state, metrics = step_fn(state, batch, step_rng)
    writer.write_scalars(step + 1, {f'train/{k}': v for k, v in
                                    metrics.compute().items()})
    for hook in hooks:
      hook(step + 1)
  return state, writer, manager


def test_plain_loop_runs_our_step_and_actions(pieces, tmp_path):
  config, problem, tx, _, _ = pieces
  state, writer, manager = flax_examples_loop(pieces, str(tmp_path))
  assert int(state.step) == NUM_STEPS
  assert manager.all_steps() == [10, 20]
  for step in (10, 20):
    assert ('eval/mse_step0', step) in writer.scalars
    assert writer.scalars[('eval/mse_step1_ci95', step)] > 0
  assert ('steps_per_sec', 20) in writer.scalars  # ReportProgress's own.
  fresh = maml_plugin.MetaTrainState.create(problem.init_params, tx)
  restored, _ = checkpointing.restore_latest(manager, fresh,
                                             jax.random.key(1))
  manager.close()
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def create_train_state(problem, tx):
  """The Flax examples' `create_train_state`: a `TrainState` of the model."""
  return train_state.TrainState.create(
      apply_fn=problem.predict_fn, params=problem.init_params, tx=tx)


def train_state_loop(pieces, state, first_step, last_step, manager=None,
                     save_at=None):
  """Steps `first_step + 1 .. last_step` of a Flax-examples-style loop over a
  `TrainState`; saves a checkpoint (and a host copy) after step `save_at`."""
  config, problem, _, train_step, _ = pieces
  key = jax.random.key(0)
  step_fn = jax.jit(train_step)
  saved = None
  for step in range(first_step + 1, last_step + 1):
    batch_rng, step_rng = jax.random.split(jax.random.fold_in(key, step))
    batch = problem.tasks.train_batch(batch_rng, config.meta_batch_size)
    state, _ = step_fn(state, batch, step_rng)
    if step == save_at:
      checkpointing.save(manager, state, key)
      saved = jax.device_get(state)
  return state, saved


def test_flax_train_state_trains_checkpoints_and_restores(pieces, tmp_path):
  config, problem, tx, _, _ = pieces
  manager = checkpointing.create_manager(str(tmp_path), max_to_keep=3)
  state, saved = train_state_loop(pieces, create_train_state(problem, tx), 0,
                                  NUM_STEPS, manager=manager, save_at=10)
  assert isinstance(state, train_state.TrainState)
  assert int(state.step) == NUM_STEPS

  fresh = create_train_state(problem, tx)
  assert isinstance(fresh.step, int)  # What made orbax's restore fail.
  restored, rng = checkpointing.restore_latest(manager, fresh,
                                               jax.random.key(1))
  manager.close()
  assert isinstance(restored, train_state.TrainState)
  assert restored.tx is fresh.tx and restored.apply_fn is fresh.apply_fn
  assert int(restored.step) == 10
  assert jax.tree.structure(restored) == jax.tree.structure(saved)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(saved)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(jax.random.key_data(rng),
                                jax.random.key_data(jax.random.key(0)))
  # Resumed from step 10, the loop ends where the uninterrupted one did.
  resumed, _ = train_state_loop(pieces, restored, 10, NUM_STEPS)
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(state)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6,
                               atol=1e-7)


class TrainStateWithModelState(train_state.TrainState):
  """The Flax way to carry state besides params (like Linen's batch_stats)."""
  model_state: Any = None


class WithBatchNorm(nnx.Module):

  def __init__(self, *, rngs: nnx.Rngs):
    self.linear = nnx.Linear(1, 8, rngs=rngs)
    self.norm = nnx.BatchNorm(8, rngs=rngs)
    self.out = nnx.Linear(8, 1, rngs=rngs)

  def __call__(self, x):
    return self.out(self.norm(self.linear(x)))


def test_train_state_subclass_carries_batch_norm_statistics(pieces):
  config, problem, tx, _, _ = pieces
  bridge = maml_plugin.NNXModel(WithBatchNorm(rngs=nnx.Rngs(0)))
  train_step = jax.jit(maml_plugin.make_train_step(
      'fomaml', tx=tx, inner_lr=0.01, loss_fn=bridge.task_loss(
          lambda net, batch: jnp.mean((net(batch['x']) - batch['y']) ** 2))))
  flax_state = TrainStateWithModelState.create(
      apply_fn=None, params=bridge.params, tx=tx,
      model_state=bridge.model_state)
  meta_state = maml_plugin.MetaTrainState.create(
      bridge.params, tx, model_state=bridge.model_state)
  batch = problem.tasks.train_batch(jax.random.key(0), 4)
  flax_state, _ = train_step(flax_state, batch, jax.random.key(1))
  meta_state, _ = train_step(meta_state, batch, jax.random.key(1))
  assert isinstance(flax_state, TrainStateWithModelState)
  for a, b in zip(jax.tree.leaves((flax_state.params, flax_state.model_state)),
                  jax.tree.leaves((meta_state.params, meta_state.model_state))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  averages = jax.tree.leaves(flax_state.model_state)
  assert any(np.any(np.asarray(a) != np.asarray(b)) for a, b in
             zip(averages, jax.tree.leaves(bridge.model_state)))
