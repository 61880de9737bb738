"""MetaExperiment through jaxline's own train and evaluate, on 1 and 2 devices."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maml_plugin import guards
from maml_plugin import jaxline_compat
from maml_plugin import jaxline_experiment
from maml_plugin import train
from maml_plugin import algorithms
from maml_plugin.algorithms import maml
from maml_plugin.metrics import TrainMetrics
from tests import jaxline_worker

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_SCALARS = {'train/query_loss_before', 'train/query_loss_after',
                 'train/meta_grad_norm'}


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  a, b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol,
                               atol=atol)


@pytest.fixture(scope='module')
def one_device_run():
  assert jax.local_device_count() == 1
  config = jaxline_worker.small_config()
  jl = jaxline_worker.jaxline_config(config)
  experiment, writer, history = jaxline_worker.run_train(jl)
  handed = list(jaxline_worker.RecordingExperiment.handed)
  states, evaluator = jaxline_worker.replay(config, handed)
  return dict(config=config, jl=jl, experiment=experiment, writer=writer,
              history=history, handed=handed, states=states,
              evaluator=evaluator)


def test_step_trains_on_the_key_jaxline_hands_each_device(one_device_run):
  run = one_device_run
  assert len(run['handed']) == jaxline_worker.NUM_STEPS
  for step, (global_steps, keys) in enumerate(run['handed']):
    assert keys.shape == (1, 2) and keys.dtype == np.uint32
    assert global_steps.tolist() == [step]
  assert int(run['experiment'].state.step) == jaxline_worker.NUM_STEPS
  assert_trees_close(run['experiment'].state, run['states'][-1])


def test_jaxline_writes_each_scalar_once_per_step(one_device_run):
  counts = one_device_run['writer'].counts
  for step in range(1, jaxline_worker.NUM_STEPS + 1):
    written = {name for name, s in counts if s == step}
    assert written == TRAIN_SCALARS | {'steps_per_sec'}, step
  assert set(counts.values()) == {1}


def test_mid_run_snapshot_restores_and_evaluates(one_device_run):
  run = one_device_run
  at = jaxline_worker.SNAPSHOT_STEP
  snapshot = jaxline_worker.snapshot_at(run['history'], at)
  # Training went on after the snapshot; its arrays must still be there.
  restored, writer = jaxline_worker.run_evaluate(run['jl'], snapshot)
  assert int(restored.state.step) == at
  assert_trees_close(restored.state, run['states'][at])
  expected = jaxline_worker.evaluation_scalars(run['evaluator'],
                                               run['states'][at].params)
  written = {name: v for (name, step), v in writer.values.items()
             if step == at}
  assert set(written) == set(expected)
  for name, value in expected.items():
    assert written[name] == pytest.approx(value, rel=1e-4), name
  assert set(writer.counts.values()) == {1}


def test_training_resumed_from_a_mid_run_snapshot_equals_uninterrupted(
    one_device_run):
  run = one_device_run
  at = jaxline_worker.SNAPSHOT_STEP
  snapshot = jaxline_worker.snapshot_at(run['history'], at)
  experiment, writer, _ = jaxline_worker.run_train(run['jl'], [snapshot])
  resumed_steps = [int(s[0]) for s, _ in
                   jaxline_worker.RecordingExperiment.handed]
  assert resumed_steps == list(range(at, jaxline_worker.NUM_STEPS))
  assert {s for _, s in writer.counts} == set(
      range(at + 1, jaxline_worker.NUM_STEPS + 1))
  np.testing.assert_array_equal(
      np.asarray([k for _, k in jaxline_worker.RecordingExperiment.handed]),
      np.asarray([k for _, k in run['handed'][at:]]))
  assert_trees_close(experiment.state, run['experiment'].state, rtol=0,
                     atol=0)


_KEY_RECORDING_STEP = 'maml_reporting_its_key_for_jaxline_tests'


@algorithms.TRAIN_STEPS.register(_KEY_RECORDING_STEP,
                                  fields=maml.MAMLHParams)
def _make_key_recording_step(hparams, *, loss_fn, tx):
  """MAML whose reported query_loss_after is a draw from the step's key
  and query_loss_before the sum of its support inputs (MAML on the MLP
  ignores the key: a wrong key would change no parameter)."""
  algorithm = algorithms.make_algorithm(
      'maml', loss_fn=loss_fn, tx=tx, **dataclasses.asdict(hparams))

  def train_step(state, batch, rng):
    state, _ = algorithm.train_step(state, batch, rng)
    return state, TrainMetrics.single_from_model_output(
        query_loss_before=jnp.sum(batch['support']['x']),
        query_loss_after=jax.random.uniform(rng),
        meta_grad_norm=jnp.float32(1.0))

  return dataclasses.replace(algorithm, train_step=train_step)


def test_train_step_gets_the_step_key_of_jaxlines_key_for_each_step():
  """Pins the key `step` passes the train step: device 0's key from
  jaxline, split into (task key, step key), the step key to the train
  step, as the module doc says. A constant key, the init key, the task
  key or the first step's key every step all pass the replay test above
  (MAML on an MLP draws nothing from it); here each step's draw is
  compared with one from the key jaxline handed that step."""
  config = jaxline_worker.small_config()
  config.train_step = _KEY_RECORDING_STEP
  _, writer, _ = jaxline_worker.run_train(jaxline_worker.jaxline_config(
      config))
  handed = list(jaxline_worker.RecordingExperiment.handed)
  assert len(handed) == jaxline_worker.NUM_STEPS
  problem = train.create_problem(config)
  draws, sums = [], []
  for step, (_, keys) in enumerate(handed):
    task_key, step_key = jax.random.split(jax.random.wrap_key_data(keys[0]))
    batch = problem.tasks.train_batch(task_key, config.meta_batch_size)
    assert writer.values[('train/query_loss_after', step + 1)] == (
        pytest.approx(float(jax.random.uniform(step_key)), rel=1e-6))
    assert writer.values[('train/query_loss_before', step + 1)] == (
        pytest.approx(float(jnp.sum(batch['support']['x'])), rel=1e-5))
    draws.append(writer.values[('train/query_loss_after', step + 1)])
    sums.append(writer.values[('train/query_loss_before', step + 1)])
  assert len(set(draws)) == len(set(sums)) == jaxline_worker.NUM_STEPS


def test_keys_of_the_wrong_shape_are_refused(one_device_run):
  experiment = one_device_run['experiment']
  with pytest.raises(ValueError, match=r'one key per local device, \[1, 2\]'):
    experiment.step(global_step=None, rng=np.zeros((3, 2), np.uint32),
                    writer=None)


def test_training_steps_must_equal_num_train_steps(one_device_run):
  jl = one_device_run['jl'].copy_and_resolve_references()
  jl.training_steps = 100
  with pytest.raises(ValueError, match='config.training_steps=100: must '
                     'equal config.experiment_kwargs.config.num_train_steps'):
    one_device_run['experiment'].should_run_step(0, jl)


def test_on_nonfinite_stop_ends_jaxlines_loop_at_the_bad_step():
  """Pins the experiment ignoring config.on_nonfinite: inner_lr=1e30 went
  on stepping, every scalar NaN, exit status 0."""
  config = jaxline_worker.small_config()
  config.inner_lr = 1e30
  with pytest.raises(guards.NonFiniteError, match=(
      r'^meta-step 1: meta-loss \(query_loss_after\) is nan and '
      r'meta-gradient \(meta_grad_norm\) is nan; stopped before applying '
      "it: the experiment's state is the last good one$")):
    jaxline_worker.run_train(jaxline_worker.jaxline_config(config))
  assert len(jaxline_worker.RecordingExperiment.handed) == 1


def test_on_nonfinite_skip_keeps_the_state_and_counts_the_steps():
  config = jaxline_worker.small_config()
  config.update(inner_lr=1e30, on_nonfinite='skip')
  experiment, writer, _ = jaxline_worker.run_train(
      jaxline_worker.jaxline_config(config))
  state = experiment.state
  assert int(state.step) == jaxline_worker.NUM_STEPS
  initial = jaxline_experiment.MetaExperiment('train', config=config).state
  assert_trees_close(state.params, initial.params, rtol=0, atol=0)
  assert writer.values[('train/skipped_updates',
                        jaxline_worker.NUM_STEPS)] == 1.0
  assert not any(name.startswith('train/query_loss')
                 for name, _ in writer.counts)


def test_compat_defines_the_removed_names_with_their_old_semantics():
  # Applied by importing maml_plugin.jaxline_experiment (the worker did);
  # the JAX we require has neither name.
  assert sorted(jaxline_compat.added()) == ['device_put_sharded', 'tree_map']
  assert jax.tree_map(lambda x: x + 1, {'a': 1}) == {'a': 2}
  devices = jax.local_devices()
  stacked = jax.device_put_sharded(
      [{'w': np.full((3,), i, np.float32)} for i in range(len(devices))],
      devices)
  assert stacked['w'].shape == (len(devices), 3)
  for i, shard in enumerate(stacked['w'].addressable_shards):
    assert shard.device == devices[i]
    np.testing.assert_array_equal(np.asarray(shard.data), [[i] * 3])
  with pytest.raises(ValueError, match='one per device'):
    jaxline_compat.device_put_sharded([1] * (len(devices) + 1), devices)


@pytest.fixture(scope='module')
def two_devices():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             JAX_PLATFORMS='cpu')
  proc = subprocess.run(
      [sys.executable, os.path.join('tests', 'jaxline_worker.py')],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_two_devices_each_draw_their_share_from_their_own_key(two_devices):
  assert two_devices['device_count'] == 2
  assert two_devices['key_shapes'] == [[2, 2]] * jaxline_worker.NUM_STEPS
  assert all(two_devices['keys_distinct'])
  assert two_devices['global_steps'] == [
      [s, s] for s in range(jaxline_worker.NUM_STEPS)]
  assert_trees_close(two_devices['final_params'],
                     two_devices['replay_params'])
  assert two_devices['equal_keys_error'].startswith(
      'rng: the per-device keys are equal')


def test_two_devices_write_once_and_evaluate_a_mid_run_snapshot(two_devices):
  assert two_devices['max_writes'] == 1
  assert set(two_devices['written']) == TRAIN_SCALARS | {'steps_per_sec'}
  assert two_devices['restored_replicated']
  assert_trees_close(two_devices['restored_params'],
                     two_devices['replay_params_at_snapshot'])
  assert set(two_devices['eval_written']) == set(two_devices['replay_eval'])
  for name, value in two_devices['replay_eval'].items():
    assert two_devices['eval_written'][name] == pytest.approx(value,
                                                             rel=1e-4)


def test_jaxline_platform_runs_the_config_file(tmp_path):
  """The documented command: platform.main over configs/jaxline_sine.py."""
  from tests import event_files  # pylint: disable=g-import-not-at-top
  proc = subprocess.run(
      [sys.executable, '-m', 'maml_plugin.jaxline_experiment',
       '--config=configs/jaxline_sine.py:quick',
       f'--config.checkpoint_dir={tmp_path}', '--config.training_steps=2'],
      cwd=REPO, env=dict(os.environ, JAX_PLATFORMS='cpu'),
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  scalars = event_files.read_scalars(str(tmp_path / 'train'))
  # training_steps=2 set num_train_steps too; jaxline writes the last step.
  assert {tag for tag, step in scalars if step == 2} == (
      TRAIN_SCALARS | {'steps_per_sec'})
  assert all(len(values) == 1 for values in scalars.values())


def test_jaxline_platform_stops_on_a_nan_with_one_last_line(tmp_path):
  """Pins the second traceback (absl's, after jaxline's own log of the
  error) as the command's last words."""
  proc = subprocess.run(
      [sys.executable, '-m', 'maml_plugin.jaxline_experiment',
       '--config=configs/jaxline_sine.py:quick',
       f'--config.checkpoint_dir={tmp_path}', '--config.training_steps=2',
       '--config.experiment_kwargs.config.inner_lr=1e30'],
      cwd=REPO, env=dict(os.environ, JAX_PLATFORMS='cpu'),
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines()[-1] == (
      'maml_plugin: meta-step 1: meta-loss (query_loss_after) is nan and '
      'meta-gradient (meta_grad_norm) is nan; stopped before applying it: '
      "the experiment's state is the last good one"), proc.stderr[-3000:]
