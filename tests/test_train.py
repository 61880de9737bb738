"""`train_and_evaluate` end to end on the quick config, resume, evaluate."""

import json
import os

import jax
import numpy as np
import pytest

from configs import maml_sine
from maml_plugin import evaluate
from maml_plugin import train

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('quick'))
  config = maml_sine.get_config('quick')
  state = train.train_and_evaluate(config, workdir)
  return config, workdir, state


def test_run_writes_report_picture_logs_and_checkpoints(trained):
  config, workdir, state = trained
  assert int(state.step) == config.num_train_steps
  with open(os.path.join(workdir, 'evaluation.json')) as f:
    report = json.load(f)
  assert report['metric'] == 'mse'
  assert report['num_tasks'] == config.num_eval_tasks
  assert report['train_step'] == config.num_train_steps
  assert list(report['inner_steps']) == [str(k) for k in range(11)]
  for v in report['inner_steps'].values():
    assert set(v) == {'mean', 'ci95', 'median', 'nonfinite', 'diverged'}
    assert v['ci95'] > 0 and v['nonfinite'] == 0
  # Adaptation helps even after a short meta-training.
  assert report['inner_steps']['1']['mean'] < report['inner_steps']['0']['mean']
  with open(os.path.join(workdir, 'adaptation.png'), 'rb') as f:
    assert f.read(8) == PNG_MAGIC
  assert any(n.startswith('events.out.tfevents') for n in os.listdir(workdir))
  steps = os.listdir(os.path.join(workdir, 'checkpoints'))
  assert str(config.num_train_steps) in steps


def test_evaluate_restores_the_checkpoint_and_changes_nothing(trained):
  config, workdir, state = trained
  ckpt_dir = os.path.join(workdir, 'checkpoints')

  def snapshot():
    out = {}
    for root, _, files in os.walk(ckpt_dir):
      for name in files:
        path = os.path.join(root, name)
        with open(path, 'rb') as f:
          out[path] = f.read()
    return out

  before = snapshot()
  report = evaluate.evaluate(config, workdir)
  assert snapshot() == before
  with open(os.path.join(workdir, 'evaluation.json')) as f:
    assert json.load(f) == json.loads(json.dumps(report))
  assert report['train_step'] == int(state.step)


def test_resumed_run_equals_uninterrupted_run(tmp_path, trained):
  config, _, uninterrupted = trained
  half = maml_sine.get_config('quick')
  half.num_train_steps = config.num_train_steps // 2
  workdir = str(tmp_path / 'resumed')
  first = train.train_and_evaluate(half, workdir)
  assert int(first.step) == half.num_train_steps
  resumed = train.train_and_evaluate(config, workdir)
  assert int(resumed.step) == config.num_train_steps
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(uninterrupted)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
