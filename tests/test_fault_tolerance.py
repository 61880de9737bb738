"""Non-finite guard, corrupt or mismatched checkpoints, determinism."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import maml_sine
from maml_plugin import checkpointing
from maml_plugin import guards
from maml_plugin import train
from maml_plugin import algorithms
from tests import event_files
from tests.nan_steps import register_nan_query_step
from tests.workdir_files import snapshot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POISONED = range(120, 140)  # Meta-steps (0-based) whose query targets are NaN.


register_nan_query_step('maml_poisoned_for_tests', POISONED)


def small_config(**overrides):
  config = maml_sine.get_config('maml,quick')
  config.num_eval_tasks = 10
  config.num_plot_tasks = 0
  config.checkpoint_every_steps = 50
  config.update(overrides)
  return config


def test_nan_meta_loss_stops_with_step_and_quantity_keeping_last_good(
    tmp_path):
  config = small_config(train_step='maml_poisoned_for_tests')
  workdir = str(tmp_path)
  with pytest.raises(guards.NonFiniteError) as err:
    train.train_and_evaluate(config, workdir)
  message = str(err.value)
  assert message.startswith(
      f'meta-step {POISONED.start + 1}: meta-loss (query_loss_after) is nan '
      'and meta-gradient (meta_grad_norm) is nan'), message
  assert 'last good checkpoint (step 100)' in message
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == [
      '100', '50']
  # The kept checkpoint is good: it restores, finite, at step 100.
  fresh = algorithms.MetaTrainState.create(
      train.create_problem(config).init_params, train.create_optimizer(config))
  manager = checkpointing.create_manager(workdir, max_to_keep=3)
  state, _ = checkpointing.restore_latest(manager, fresh,
                                          jax.random.key(config.seed))
  manager.close()
  assert int(state.step) == 100
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


def test_skip_mode_drops_bad_updates_and_counts_them(tmp_path):
  config = small_config(train_step='maml_poisoned_for_tests',
                        on_nonfinite='skip')
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == config.num_train_steps
  # Adam counts only the updates it applied.
  applied = int(jax.tree.leaves(state.opt_state)[0])
  assert applied == config.num_train_steps - len(POISONED)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))
  scalars = event_files.read_scalars(str(tmp_path))
  skipped = {step: int(v[0]) for (tag, step), v in scalars.items()
             if tag == 'train/skipped_updates'}
  assert skipped == {50: 0, 100: 0, 150: len(POISONED), 200: 0}
  assert np.isfinite(scalars[('train/query_loss_after', 150)][0])


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Two runs with seed 0 and one with seed 1, 100 meta-steps each."""
  out = {}
  for name, seed in (('a', 0), ('b', 0), ('other_seed', 1)):
    workdir = str(tmp_path_factory.mktemp(name))
    config = small_config(num_train_steps=100, seed=seed)
    state = train.train_and_evaluate(config, workdir)
    out[name] = (workdir, state)
  return out


def train_scalars(workdir):
  return {k: v for k, v in event_files.read_scalars(workdir).items()
          if k[0].startswith(('train/', 'eval/'))}


def test_same_seed_gives_bit_identical_metrics_and_state(runs):
  (a_dir, a), (b_dir, b) = runs['a'], runs['b']
  a_scalars, b_scalars = train_scalars(a_dir), train_scalars(b_dir)
  assert a_scalars and a_scalars.keys() == b_scalars.keys()
  for key in a_scalars:
    np.testing.assert_array_equal(a_scalars[key], b_scalars[key])
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_different_seed_gives_different_tasks(runs):
  config = small_config()
  problem = train.create_problem(config)
  batches = [problem.tasks.train_batch(
      jax.random.split(jax.random.fold_in(jax.random.key(seed), 0))[0], 5)
             for seed in (0, 1)]
  assert not np.array_equal(batches[0]['support']['x'],
                            batches[1]['support']['x'])
  a, other = train_scalars(runs['a'][0]), train_scalars(runs['other_seed'][0])
  key = ('train/query_loss_before', 50)
  assert a[key][0] != other[key][0]


def copy_run(runs, tmp_path):
  workdir = str(tmp_path / 'copy')
  shutil.copytree(runs['a'][0], workdir)
  return workdir


def test_no_readable_checkpoint_is_named_and_nothing_changes(runs, tmp_path):
  """Every checkpoint truncated: one line naming the newest, no fallback to
  a fresh start, not a byte of the workdir changed (no event file added).
  (One unreadable checkpoint with an older one that reads falls back:
  tests/test_long_runs.py.)"""
  workdir = copy_run(runs, tmp_path)
  for step in (50, 100):
    data = os.path.join(workdir, 'checkpoints', str(step), 'default')
    biggest = max((os.path.join(r, n) for r, _, ns in os.walk(data)
                   for n in ns), key=os.path.getsize)
    with open(biggest, 'r+b') as f:
      f.truncate(7)
  before = snapshot(workdir)
  with pytest.raises(checkpointing.CheckpointError) as err:
    train.train_and_evaluate(small_config(num_train_steps=150), workdir)
  message = str(err.value)
  assert message.startswith(
      f'checkpoint {os.path.join(workdir, "checkpoints", "100")} cannot be '
      'read'), message
  assert message.endswith('no older checkpoint reads either (2 tried); '
                          'nothing in the workdir was changed'), message
  assert '\n' not in message
  assert snapshot(workdir) == before


def test_checkpoint_of_another_model_shape_is_named_one_line(runs, tmp_path):
  """A workdir without config.json (written before it existed): the shapes
  still name the change (with it, config.hidden_sizes is named first)."""
  workdir = copy_run(runs, tmp_path)
  os.remove(os.path.join(workdir, 'config.json'))
  before = snapshot(os.path.join(workdir, 'checkpoints'))
  proc = subprocess.run(
      [sys.executable, '-m', 'maml_plugin.main',
       '--config=configs/maml_sine.py:maml,quick', f'--workdir={workdir}',
       '--config.hidden_sizes=20,20'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  ckpt = os.path.join(workdir, 'checkpoints', '100')
  assert last == (
      f"maml_plugin: checkpoint {ckpt} does not match this config's model: "
      'state.params.layers.0.bias.value has shape (40,) there, (20,) here '
      '(another hidden_sizes or task?); use another --workdir'), proc.stderr
  assert 'Traceback' not in proc.stderr
  assert snapshot(os.path.join(workdir, 'checkpoints')) == before
  with open(os.path.join(workdir, 'evaluation.json')) as f:
    assert json.load(f)['train_step'] == 100
