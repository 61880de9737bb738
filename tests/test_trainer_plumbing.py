"""The trainer's plumbing, pinned against values computed outside it.

The end-to-end tests compare the trainer with itself (resumed against
uninterrupted, four devices against one), which a loop that trains on one
meta-batch forever passes. These tests check what each meta-step is given
(its tasks and its key), what a checkpoint gives back (the PRNG key too),
what the non-finite guard does inside the fused loop, and which tasks share
a task batch, each against an independent computation.
"""

import dataclasses
import json
import logging as std_logging
import os
import signal
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import maml_sine
from maml_plugin import checkpointing
from maml_plugin import console
from maml_plugin import core
from maml_plugin import guards
from maml_plugin import train
from maml_plugin import algorithms
from maml_plugin.metrics import TrainMetrics
from maml_plugin.tasks import SinusoidTasks
from tests import event_files
from tests.nan_steps import register_nan_query_step

META_BATCH = 3
NUM_STEPS = 6


def _recording_state():
  """A train state whose params record, per meta-step, a checksum of the
  step's support inputs and a draw from the step's key."""
  params = {'tasks_seen': jnp.zeros(NUM_STEPS),
            'key_seen': jnp.zeros(NUM_STEPS)}
  return algorithms.MetaTrainState(step=jnp.zeros((), jnp.int32),
                                    params=params, opt_state=())


def _recording_step(state, batch, rng):
  i = state.step
  params = {
      'tasks_seen': state.params['tasks_seen'].at[i].set(
          jnp.sum(batch['support']['x'])),
      'key_seen': state.params['key_seen'].at[i].set(
          jax.random.uniform(rng)),
  }
  metrics = TrainMetrics.single_from_model_output(
      query_loss_before=jnp.float32(1.0), query_loss_after=jnp.float32(0.5),
      meta_grad_norm=jnp.float32(2.0))
  return state.replace(step=state.step + 1, params=params), metrics


@pytest.fixture(scope='module')
def recorded():
  """Two chunks of 3 meta-steps each, with the same base key (as the
  trainer calls them)."""
  tasks = SinusoidTasks(num_support=4, num_query=4)
  chunk = jax.jit(train.make_train_chunk(
      _recording_step, tasks, meta_batch_size=META_BATCH,
      steps_per_call=NUM_STEPS // 2))
  rng = jax.random.key(42)
  state = _recording_state()
  for _ in range(2):
    state, metrics, report = chunk(state, rng)
  return tasks, rng, state, metrics, report


def test_each_meta_step_draws_new_tasks_from_its_own_key(recorded):
  """Pins: a loop that trains on one meta-batch forever (the batch key not
  folded with the step, or folded with the chunk's first step only, or the
  same key for every chunk), and a step key equal for every step.

  The expected values follow `make_train_chunk`'s documented contract:
  step s samples with ``split(fold_in(rng, s))[0]`` and steps with
  ``split(fold_in(rng, s))[1]``, computed here one step at a time.
  """
  tasks, rng, state, _, _ = recorded
  assert int(state.step) == NUM_STEPS
  expected_tasks, expected_keys = [], []
  for s in range(NUM_STEPS):
    batch_rng, step_rng = jax.random.split(jax.random.fold_in(rng, s))
    batch = tasks.train_batch(batch_rng, META_BATCH)
    expected_tasks.append(float(jnp.sum(batch['support']['x'])))
    expected_keys.append(float(jax.random.uniform(step_rng)))
  seen_tasks = np.asarray(state.params['tasks_seen'])
  seen_keys = np.asarray(state.params['key_seen'])
  assert len(set(seen_tasks.tolist())) == NUM_STEPS, seen_tasks
  assert len(set(seen_keys.tolist())) == NUM_STEPS, seen_keys
  np.testing.assert_allclose(seen_tasks, expected_tasks, rtol=1e-6)
  np.testing.assert_allclose(seen_keys, expected_keys, rtol=1e-6)


def test_chunk_metrics_average_the_steps_of_the_chunk(recorded):
  """Pins: a chunk that reports one step's metrics, or merges a step twice
  (the counts say how many steps were averaged)."""
  _, _, _, metrics, report = recorded
  assert int(metrics.query_loss_after.count) == NUM_STEPS // 2
  np.testing.assert_allclose(metrics.compute()['query_loss_after'], 0.5)
  np.testing.assert_allclose(metrics.compute()['meta_grad_norm'], 2.0)
  assert int(report.first_bad_step) == -1
  assert int(report.bad_loss_steps) == int(report.bad_grad_steps) == 0


def test_restore_gives_back_the_saved_state_and_prng_key(tmp_path):
  """Pins: a checkpoint that drops or replaces the PRNG key (a resumed run
  would draw other tasks than the uninterrupted one), or restores another
  step's state; and that an empty workdir returns the inputs."""
  tx = optax.adam(0.1)
  saved_state = algorithms.MetaTrainState.create(
      {'w': jnp.arange(3.0)}, tx).replace(step=jnp.int32(7))
  saved_rng = jax.random.fold_in(jax.random.key(5), 11)
  fresh_state = algorithms.MetaTrainState.create({'w': jnp.zeros(3)}, tx)
  fresh_rng = jax.random.key(0)
  manager = checkpointing.create_manager(str(tmp_path), max_to_keep=2)
  state, rng = checkpointing.restore_latest(manager, fresh_state, fresh_rng)
  assert state is fresh_state and rng is fresh_rng
  older = saved_state.replace(step=jnp.int32(3),
                              params={'w': -jnp.ones(3)})
  checkpointing.save(manager, older, fresh_rng)  # Not the latest step.
  checkpointing.save(manager, saved_state, saved_rng)
  state, rng = checkpointing.restore_latest(manager, fresh_state, fresh_rng)
  np.testing.assert_array_equal(jax.random.key_data(rng),
                                jax.random.key_data(saved_rng))
  assert int(state.step) == 7
  np.testing.assert_array_equal(state.params['w'], [0.0, 1.0, 2.0])
  for a, b in zip(jax.tree.leaves(state.opt_state),
                  jax.tree.leaves(saved_state.opt_state)):
    np.testing.assert_array_equal(a, b)
  manager.close()


def test_max_checkpoints_to_keep_keeps_that_many_latest(tmp_path):
  """Pins: the retention count passed to orbax off by one (its boundary:
  ``max_checkpoints_to_keep=0`` is refused by the config, see
  tests/test_field_boundaries.py)."""
  tx = optax.sgd(0.1)
  state = algorithms.MetaTrainState.create({'w': jnp.zeros(2)}, tx)
  manager = checkpointing.create_manager(str(tmp_path), max_to_keep=2)
  for step in (10, 20, 30):
    checkpointing.save(manager, state.replace(step=jnp.int32(step)),
                       jax.random.key(step))
  assert sorted(manager.all_steps()) == [20, 30]
  manager.close()


def _restore_refusal(tmp_path, saved_params, params) -> str:
  """The `CheckpointError` restoring a state of `params` from a checkpoint
  of one of `saved_params` (step 0) raises."""
  tx = optax.sgd(0.1)
  manager = checkpointing.create_manager(str(tmp_path), max_to_keep=2)
  checkpointing.save(manager,
                     algorithms.MetaTrainState.create(saved_params, tx),
                     jax.random.key(0))
  other = algorithms.MetaTrainState.create(params, tx)
  with pytest.raises(checkpointing.CheckpointError) as err:
    checkpointing.restore_latest(manager, other, jax.random.key(1))
  manager.close()
  return str(err.value)


def _two_chunks_config(**overrides):
  """MAML on 2 tasks, 2 meta-steps per call, saved every call."""
  config = maml_sine.get_config('maml,quick')
  config.update(dict(num_train_steps=4, steps_per_call=2, log_every_steps=2,
                     eval_every_steps=4, checkpoint_every_steps=2,
                     max_checkpoints_to_keep=3, meta_batch_size=2,
                     num_eval_tasks=2, eval_num_inner_steps=1,
                     num_plot_tasks=0))
  config.update(overrides)
  return config


def test_a_seed_changed_on_resume_draws_the_new_seeds_tasks_from_there(
    tmp_path):
  """What docs/long_runs.md promises for ``--allow_config_change`` with a
  new `seed`: the resumed run keeps the checkpoint's params and optimizer
  state and draws the new seed's tasks and keys from the resume step on
  (step s from ``fold_in(key(new seed), s)``); the new base key is what
  later checkpoints hold, so a further resume stays on it; config.json
  records the new seed and the change at its step.

  Pins: the saved key silently winning over the new seed (the run would
  go on with the old seed's tasks), the new seed's key applied from step 0
  instead of the resume step, and a change not recorded. The expected
  states come from the train chunk run by hand from the step-2
  checkpoint."""
  workdir = str(tmp_path)
  train.train_and_evaluate(_two_chunks_config(num_train_steps=2), workdir)
  config = _two_chunks_config(seed=1)
  resumed = train.train_and_evaluate(config, workdir,
                                     allow_config_change=True)
  assert int(resumed.step) == 4

  components = train.build_components(config)
  chunk = jax.jit(train.make_train_chunk(
      components.train_step, components.problem.tasks,
      meta_batch_size=config.meta_batch_size, steps_per_call=2))
  manager = checkpointing.create_manager(workdir, max_to_keep=3)
  at_2, saved_rng = checkpointing.restore_at_or_before(
      manager, 2, components.state, jax.random.key(1))
  _, last_rng = checkpointing.restore_latest(manager, components.state,
                                             jax.random.key(7))
  manager.close()
  np.testing.assert_array_equal(jax.random.key_data(saved_rng),
                                jax.random.key_data(jax.random.key(0)))
  np.testing.assert_array_equal(jax.random.key_data(last_rng),
                                jax.random.key_data(jax.random.key(1)))

  def params_after(rng):
    return jax.tree.leaves(chunk(at_2, rng)[0].params)

  for got, want in zip(jax.tree.leaves(resumed.params),
                       params_after(jax.random.key(1))):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)
  old_seed = params_after(jax.random.key(0))
  assert not all(np.allclose(a, b) for a, b in
                 zip(jax.tree.leaves(resumed.params), old_seed))
  with open(os.path.join(workdir, 'config.json')) as f:
    document = json.load(f)
  assert document['config']['seed'] == 1
  assert document['changes'] == [
      {'step': 2, 'field': 'seed', 'old': 0, 'new': 1}]


def test_checkpoint_of_another_shape_names_the_leaf_and_both_shapes(
    tmp_path):
  """Pins the shape check before a restore (`_check_shapes`): a stored
  leaf compared only when it is missing (``in`` -> ``not in``), or not at
  all, lets orbax fail instead, and the user reads "cannot be read" for a
  checkpoint that is fine but belongs to another model."""
  message = _restore_refusal(tmp_path, {'b': jnp.zeros(2), 'w': jnp.zeros(3)},
                             {'b': jnp.zeros(2), 'w': jnp.zeros(5)})
  path = tmp_path / 'checkpoints' / '0'
  assert message == (
      f"checkpoint {path} does not match this config's model: "
      'state.params.w has shape (3,) there, (5,) here (another hidden_sizes '
      'or task?); use another --workdir')


def test_checkpoint_of_another_state_layout_names_the_missing_leaf(
    tmp_path, caplog):
  """A model's params against Meta-SGD's ``{'model', 'inner_lr'}``: pins
  orbax's "tree structures do not match" logged as unreadable, every older
  checkpoint tried, then "cannot be read (corrupt, truncated ...?)"."""
  params = {'w': jnp.zeros(3)}
  caplog.set_level(std_logging.WARNING)
  message = _restore_refusal(tmp_path, params,
                             {'model': params, 'inner_lr': params})
  path = tmp_path / 'checkpoints' / '0'
  assert message == (
      f"checkpoint {path} does not match this config's train state: it "
      'holds no state.params.inner_lr.w (another train_step, or a version '
      'of maml_plugin with another state layout?); use another --workdir')
  assert 'cannot be read' not in caplog.text


def _residual_norm_loss(p, batch):
  # Finite (0) where the residual is exactly zero, its gradient there 0/0.
  return jnp.linalg.norm(batch['x'] @ p['w'] - batch['y'])


class _FixedTasks:
  """The same small regression meta-batch at every step."""

  def train_batch(self, rng, num_tasks):
    del rng
    r = np.random.default_rng(0)
    part = lambda: {'x': r.normal(size=(num_tasks, 4, 1)).astype(np.float32),
                    'y': r.normal(size=(num_tasks, 4, 1)).astype(np.float32)}
    return {'support': part(), 'query': part()}


BAD_STEPS = (1, 3)  # 0-based meta-steps whose query makes the gradient NaN.


def _maml_with_bad_steps():
  algorithm = algorithms.make_algorithm('maml', loss_fn=_residual_norm_loss,
                                         tx=optax.sgd(0.1), inner_lr=0.1)

  def step(state, batch, rng):
    bad = jnp.isin(state.step, jnp.asarray(BAD_STEPS))
    query = jax.tree.map(lambda a: jnp.where(bad, 0.0, a), batch['query'])
    return algorithm.train_step(state, dict(batch, query=query), rng)

  return algorithm, step


@pytest.mark.parametrize('skip', [True, False])
def test_guard_in_the_fused_loop_catches_a_nan_gradient_under_a_finite_loss(
    skip):
  """Pins: the trainer's guard checking the loss only (a finite loss with a
  NaN gradient goes through), skipping a good step or applying a bad one,
  misnumbering the first bad meta-step, and letting a skipped step's NaNs
  into the chunk's means.

  Expected values: the plain MAML step applied by hand to the good steps
  only (0 and 2), and the report's numbers as `guards` documents them
  (meta-steps are numbered from 1: the first bad one, 0-based 1, is
  meta-step 2).
  """
  tx = optax.sgd(0.1)
  algorithm, bad_step = _maml_with_bad_steps()
  tasks = _FixedTasks()
  state0 = algorithms.MetaTrainState.create({'w': jnp.ones((1, 1))}, tx)
  chunk = jax.jit(train.make_train_chunk(
      bad_step, tasks, meta_batch_size=2, steps_per_call=4,
      skip_nonfinite=skip))
  state, metrics, report = chunk(state0, jax.random.key(0))
  assert int(report.first_bad_step) == BAD_STEPS[0] + 1
  assert np.isfinite(report.first_loss) and np.isnan(report.first_grad_norm)
  assert guards.describe(jax.device_get(report)) == (
      'meta-step 2: meta-gradient (meta_grad_norm) is nan')
  assert int(state.step) == 4
  if not skip:  # Applied, the NaN update makes every later step NaN; the
    # trainer stops on this report and saves nothing.
    assert int(report.bad_grad_steps) == 3
    assert int(report.bad_loss_steps) == 2
    assert np.all(np.isnan(state.params['w']))
    return
  assert int(report.bad_grad_steps) == len(BAD_STEPS)
  assert int(report.bad_loss_steps) == 0
  expected, losses_after = state0, []
  plain_step = jax.jit(algorithm.train_step)
  for s in range(4):
    batch_rng, step_rng = jax.random.split(
        jax.random.fold_in(jax.random.key(0), s))
    if s in BAD_STEPS:
      expected = expected.replace(step=expected.step + 1)
      continue
    expected, m = plain_step(expected, tasks.train_batch(batch_rng, 2),
                             step_rng)
    losses_after.append(float(m.compute()['query_loss_after']))
  np.testing.assert_allclose(state.params['w'], expected.params['w'],
                             rtol=1e-6)
  assert int(metrics.query_loss_after.count) == 4 - len(BAD_STEPS)
  np.testing.assert_allclose(metrics.compute()['query_loss_after'],
                             np.mean(losses_after), rtol=1e-6)


def test_task_batch_j_holds_tasks_j_j_plus_n_and_so_on():
  """Pins: task batches of contiguous tasks (0..b-1, b..2b-1, ...) instead
  of the documented strided layout; with the task axis sharded in
  contiguous blocks over devices, contiguous batches would put a whole
  batch on one device.

  8 tasks in batches of 4: batch 0 must hold tasks 0, 2, 4, 6 and batch 1
  tasks 1, 3, 5, 7, so on 4 devices (blocks {0,1}, {2,3}, {4,5}, {6,7})
  each batch has one task on every device. `fn` returns which tasks it saw
  together (a co-membership matrix); the wrapped function's mean over the
  two batches is half the sum of the batches' matrices.
  """
  num_tasks, task_batch_size = 8, 4

  def together(params, meta_batch):
    del params
    ids = meta_batch['id']
    return jnp.zeros((num_tasks, num_tasks)).at[
        ids[:, None], ids[None, :]].set(1.0)

  seen = core.over_task_batches(together, task_batch_size)(
      None, {'id': jnp.arange(num_tasks)})
  expected = np.zeros((num_tasks, num_tasks))
  for members in ([0, 2, 4, 6], [1, 3, 5, 7]):
    expected[np.ix_(members, members)] = 1.0
  np.testing.assert_array_equal(np.asarray(seen) * 2, expected)
  blocks = np.arange(num_tasks) // 2  # Device of each task on 4 devices.
  for members in ([0, 2, 4, 6], [1, 3, 5, 7]):
    assert sorted(blocks[members]) == [0, 1, 2, 3]



register_nan_query_step('maml_nan_on_steps_1_2_for_tests', range(1, 3))


def _four_steps_config(**overrides):
  """Four meta-steps, one per chunk, each logged; NaN targets on the second
  and third; evaluated (on two tasks) and saved at step 4 only."""
  config = maml_sine.get_config('maml,quick')
  config.update(dict(train_step='maml_nan_on_steps_1_2_for_tests',
                     num_train_steps=4, steps_per_call=1, log_every_steps=1,
                     eval_every_steps=4, checkpoint_every_steps=4,
                     meta_batch_size=2, num_eval_tasks=2,
                     eval_num_inner_steps=1, num_plot_tasks=0))
  config.update(overrides)
  return config


def test_skipped_updates_are_counted_per_log_interval(tmp_path, caplog):
  """Pins the trainer's skipped-update counter: reset to anything but 0
  after each log (1 makes every later interval count one skip too many),
  never reset (the count accumulates over the run), or subtracted. Also
  pins the progress line at the evaluation step showing that evaluation's
  means (the progress line given another action than the evaluation shows
  none)."""
  config = _four_steps_config(on_nonfinite='skip')
  with caplog.at_level(std_logging.INFO):
    state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 4
  scalars = event_files.read_scalars(str(tmp_path))
  skipped = {step: int(v[0]) for (tag, step), v in scalars.items()
             if tag == 'train/skipped_updates'}
  assert skipped == {1: 0, 2: 1, 3: 1, 4: 0}
  text = (tmp_path / 'evaluation.json').read_text()
  assert text, os.listdir(tmp_path)
  means = [json.loads(text)['inner_steps'][k]['mean'] for k in ('0', '1')]
  lines = [r.getMessage() for r in caplog.records
           if r.getMessage().startswith('step 4/4 (100%)')]
  assert len(lines) == 1, lines
  assert lines[0].endswith(
      f'; held-out mse after 0/1 inner steps: {means[0]:.3f} / '
      f'{means[1]:.3f}'), lines[0]


def test_stop_before_any_checkpoint_says_none_was_written(tmp_path):
  """Pins the stop message when the first bad step comes before any
  checkpoint (``is not None`` -> ``is None`` names a checkpoint "step
  None")."""
  config = _four_steps_config(on_nonfinite='stop')
  with pytest.raises(guards.NonFiniteError) as err:
    train.train_and_evaluate(config, str(tmp_path))
  assert str(err.value).startswith('meta-step 2: meta-loss'), str(err.value)
  assert str(err.value).endswith(
      '; stopped, no checkpoint had been written yet'), str(err.value)


def test_a_stop_request_saves_the_step_before_stopping(tmp_path,
                                                       monkeypatch):
  """Pins the save on a stop request (SIGTERM) between checkpoints: the
  loop saves the step it reached, then raises `train.Interrupted` naming it
  (``stopping or ...`` -> ``and`` stops without saving). The request is
  made to arrive after the second chunk."""
  calls = []

  def received_after_two_chunks(self):
    calls.append(1)
    return len(calls) >= 2

  monkeypatch.setattr(train._StopSignals, 'any_received',
                      received_after_two_chunks)
  config = _four_steps_config(on_nonfinite='skip')
  with pytest.raises(train.Interrupted) as err:
    train.train_and_evaluate(config, str(tmp_path))
  assert str(err.value) == ('SIGTERM received: saved step 2; run the same '
                            'command to resume')
  assert os.listdir(tmp_path / 'checkpoints') == ['2']


def test_train_state_holds_the_models_state_mapped_by_the_algorithm():
  """Pins `create_train_state`: a model's state besides its params (batch
  statistics) goes through the algorithm's ``init_model_state`` into the
  state (``is None`` -> ``is not None`` drops it, and maps a parameter-only
  model's None instead)."""
  algorithm = algorithms.make_algorithm(
      'maml', loss_fn=lambda p, batch: jnp.sum(p['w']), tx=optax.sgd(0.1),
      inner_lr=0.1, num_inner_steps=1)
  seen = []

  def init_model_state(model_state):
    seen.append(model_state)
    return {'mean': model_state['mean'] + 1.0}

  algorithm = dataclasses.replace(algorithm,
                                  init_model_state=init_model_state)
  params = {'w': jnp.ones(2)}
  with_state = types.SimpleNamespace(init_params=params,
                                     model_state={'mean': jnp.zeros(3)})
  state = train.create_train_state(with_state, algorithm, optax.sgd(0.1))
  np.testing.assert_array_equal(state.model_state['mean'], [1.0, 1.0, 1.0])
  np.testing.assert_array_equal(state.params['w'], [1.0, 1.0])
  assert int(state.step) == 0
  without = types.SimpleNamespace(init_params=params, model_state=None)
  assert train.create_train_state(without, algorithm,
                                  optax.sgd(0.1)).model_state is None
  assert len(seen) == 1


def test_report_without_an_evaluator_builds_the_configs_one(tmp_path):
  """Pins `evaluate_and_report` called without an evaluator (a user's own
  loop): it builds the config's (``or`` -> ``and`` leaves None, and the
  arguments of `create_algorithm` swapped inside `create_evaluator` fail);
  the step-0 mean is the query loss of the unadapted params, averaged over
  the held-out tasks by hand."""
  config = maml_sine.get_config('maml,quick')
  config.update(dict(num_eval_tasks=3, eval_num_inner_steps=1,
                     num_plot_tasks=0))
  problem = train.create_problem(config)
  report = train.evaluate_and_report(config, problem, problem.init_params,
                                     7, str(tmp_path))
  assert (report['train_step'], report['num_tasks']) == (7, 3)
  assert sorted(report['inner_steps']) == ['0', '1']
  held_out = problem.tasks.held_out(seed=config.eval_seed, num_tasks=3,
                                    num_query=config.eval_num_query)
  losses = [float(problem.loss_fn(problem.init_params,
                                  jax.tree.map(lambda a, i=i: a[i],
                                               held_out['query'])))
            for i in range(3)]
  assert report['inner_steps']['0']['mean'] == pytest.approx(
      np.mean(losses), rel=1e-5)
  assert (tmp_path / 'evaluation.json').exists()


def _record(pathname, level, message):
  return std_logging.LogRecord('absl', level, pathname, 1, message, None,
                               None)


def test_library_log_filter_drops_orbax_info_and_thread_tracebacks():
  """Pins the log filter: our records always pass (a filter that returns
  False for them silences the run), orbax's INFO lines and its threads'
  "raised an exception" tracebacks are dropped, its warnings kept."""
  keep = console._DropLibraryInfo().filter
  assert keep(_record('/x/maml_plugin/train.py', std_logging.INFO, 'ours'))
  assert not keep(_record('/x/orbax/checkpoint/a.py', std_logging.INFO,
                          'wrote a file'))
  assert keep(_record('/x/orbax/checkpoint/a.py', std_logging.WARNING,
                      'a warning'))
  assert not keep(_record('/x/orbax/checkpoint/a.py', std_logging.ERROR,
                          'thread raised an exception'))


def test_stop_signals_first_asks_to_save_then_interrupt():
  """Pins the signal handler and its messages: the first SIGTERM only asks
  the loop to save at the chunk's end, a second one (or one after training)
  raises at once, each naming what happened to the step."""
  signals = train._StopSignals()
  signals.step = 40
  signals._handle(signal.SIGTERM, None)
  assert signals.received == signal.SIGTERM and signals.any_received()
  with pytest.raises(train.Interrupted) as err:
    signals._handle(signal.SIGINT, None)
  assert str(err.value) == ('SIGINT received again: stopped without saving '
                            'step 40; the newest complete checkpoint is '
                            'kept; run the same command to resume')
  after = train._StopSignals()
  after.immediate, after.step = True, 50
  with pytest.raises(train.Interrupted) as err:
    after._handle(signal.SIGTERM, None)
  assert str(err.value) == ('SIGTERM received during the final evaluation: '
                            'the checkpoint of step 50 is complete; run the '
                            'same command to finish')
  assert not train._StopSignals().any_received()
  assert str(train.Interrupted(signal.SIGTERM, 30, 'training')) == (
      'SIGTERM received: saved step 30; run the same command to resume')

