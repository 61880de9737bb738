"""Omniglot classification through the same `maml` step and trainer."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import maml_omniglot
from configs import maml_sine
from maml_plugin import config_validation
from maml_plugin import core
from maml_plugin import evaluate
from maml_plugin import train
from maml_plugin.config_validation import ConfigError
from tests import event_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('arg', [None, '5w1s', '5w5s', '20w1s', '20w5s',
                                 'quick', 'mamlpp', 'mamlpp,quick',
                                 '20w1s,mamlpp'])
def test_every_variant_is_valid(arg):
  config_validation.validate(maml_omniglot.get_config(arg))


def test_paper_protocol_is_the_default():
  c = maml_omniglot.get_config()
  assert (c.ways, c.num_support, c.meta_batch_size, c.num_inner_steps,
          c.inner_lr, c.meta_lr, c.num_train_steps, c.eval_num_inner_steps,
          c.num_eval_tasks) == (5, 1, 32, 1, 0.4, 1e-3, 60_000, 10, 600)
  c = maml_omniglot.get_config('20w1s')
  assert (c.ways, c.meta_batch_size, c.num_inner_steps, c.inner_lr) == (
      20, 16, 5, 0.1)


def test_mamlpp_variant_is_maml_plus_plus_on_the_same_protocol():
  base, c = maml_omniglot.get_config(), maml_omniglot.get_config('mamlpp')
  assert (c.train_step, c.per_step_bn, c.learn_inner_lr, c.meta_lr_schedule,
          c.num_inner_steps) == ('mamlpp', True, True, 'cosine', 3)
  assert (c.msl_anneal_steps, c.first_order_steps) == (12_000, 18_000)
  assert c.rate_meta_lr == c.inner_lr / 1000
  assert (c.ways, c.num_support, c.meta_batch_size, c.inner_lr) == (
      base.ways, base.num_support, base.meta_batch_size, base.inner_lr)
  assert maml_omniglot.get_config('20w1s,mamlpp').num_inner_steps == 5
  with pytest.raises(ValueError, match="arg='5w1s,20w1s'"):
    maml_omniglot.get_config('5w1s,20w1s')


def test_mamlpp_quick_run_checkpoints_per_step_bn_and_evaluates(
    omniglot_env, tmp_path):
  config = maml_omniglot.get_config('mamlpp,quick')
  state = train.train_and_evaluate(config, str(tmp_path))
  copies = jax.tree.leaves(state.params['per_step_bn'])
  assert len(copies) == 8  # scale and shift of 4 blocks
  assert all(c.shape[0] == config.num_inner_steps for c in copies)
  # Meta-trained apart: the steps' copies no longer agree.
  assert all(not np.allclose(c[0], c[-1]) for c in copies)
  with open(os.path.join(tmp_path, 'evaluation.json')) as f:
    report = json.load(f)
  # Restoring the checkpoint (copies and rates) reproduces the report.
  assert evaluate.evaluate(config, str(tmp_path)) == report
  # MAML++ logs training accuracy like maml does.
  scalars = event_files.read_scalars(str(tmp_path))
  for tag in ('train/query_accuracy_before', 'train/query_accuracy_after'):
    values = [float(v[-1]) for (t, _), v in scalars.items() if t == tag]
    assert values and all(0.0 <= v <= 1.0 for v in values), tag


def test_per_step_bn_on_the_sinusoid_mlp_is_a_config_error(tmp_path):
  config = maml_sine.get_config('mamlpp,quick')
  config.per_step_bn = True
  with pytest.raises(ConfigError) as err:
    train.train_and_evaluate(config, str(tmp_path))
  assert str(err.value).startswith(
      "config.per_step_bn_filter='(^|/)(scale|shift)/value$': must select "
      'some but not all parameters; it selects 0 of 6')
  assert '\n' not in str(err.value)


@pytest.mark.parametrize('arg,field,value,message', [
    ('quick', 'train_split', 'train',
     "config.train_split='train': must be one of 'vinyals_train'"),
    ('quick', 'ways', 1, 'config.ways=1: must be an int >= 2'),
    ('quick', 'conv_downsample', 'avg',
     "config.conv_downsample='avg': must be 'stride' or 'maxpool'"),
    ('mamlpp,quick', 'per_step_bn', 'yes',
     "config.per_step_bn='yes': must be True or False"),
    ('mamlpp,quick', 'per_step_bn_filter', '(',
     "config.per_step_bn_filter='(': must be a non-empty regular expression"),
])
def test_bad_omniglot_field_is_one_line(arg, field, value, message):
  config = maml_omniglot.get_config(arg).to_dict()
  config[field] = value
  with pytest.raises(ConfigError) as err:
    config_validation.validate(config)
  assert str(err.value).startswith(message) and '\n' not in str(err.value)


def test_a_field_of_another_task_is_refused():
  config = maml_omniglot.get_config('quick')
  config.hidden_sizes = (40, 40)
  with pytest.raises(ConfigError, match="config.hidden_sizes: unknown field "
                     "for task 'omniglot'"):
    config_validation.validate(config)


def test_metric_fn_changes_neither_loss_nor_gradient():
  def loss_fn(p, batch):
    return np.float32(0.5) * ((batch['x'] @ p - batch['y']) ** 2).mean()

  def metric_fn(p, batch):
    return (batch['x'] @ p).mean()

  rng = np.random.default_rng(0)
  mb = {s: {'x': rng.random((4, 3, 2), np.float32),
            'y': rng.random((4, 3), np.float32)} for s in ('support', 'query')}
  params = np.ones(2, np.float32)

  def objective(p, metric):
    return core.maml_loss_and_aux(loss_fn, p, mb, inner_lr=0.1,
                                  metric_fn=metric)

  (l1, a1), g1 = jax.value_and_grad(objective, has_aux=True)(params, None)
  (l2, a2), g2 = jax.value_and_grad(objective, has_aux=True)(params,
                                                              metric_fn)
  np.testing.assert_allclose(l1, l2)
  np.testing.assert_allclose(g1, g2)
  assert a1.query_metric_before is None
  assert a2.query_metric_before.shape == ()
  assert float(a2.query_metric_before) != float(a2.query_metric_after)


@pytest.fixture(scope='module')
def trained(omniglot_env, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('omniglot_quick'))
  config = maml_omniglot.get_config('quick')
  state = train.train_and_evaluate(config, workdir)
  return config, workdir, state


def test_quick_run_reports_accuracy_that_adaptation_improves(trained):
  config, workdir, state = trained
  assert int(state.step) == config.num_train_steps
  with open(os.path.join(workdir, 'evaluation.json')) as f:
    report = json.load(f)
  assert report['metric'] == 'accuracy'
  assert report['num_tasks'] == config.num_eval_tasks
  steps = report['inner_steps']
  assert list(steps) == [str(k) for k in range(config.eval_num_inner_steps + 1)]
  assert all(0.0 <= v['mean'] <= 1.0 and v['ci95'] > 0 for v in steps.values())
  # Before adaptation the permuted labels leave the model at chance.
  assert abs(steps['0']['mean'] - 1 / config.ways) < 0.1
  assert steps['1']['mean'] > steps['0']['mean'] + 0.05


def test_train_metrics_include_accuracy(trained):
  _, workdir, _ = trained
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tags = {}
  for name in os.listdir(workdir):
    if name.startswith('events.out.tfevents'):
      for event in tf.compat.v1.train.summary_iterator(
          os.path.join(workdir, name)):
        for value in event.summary.value:
          array = tf.make_ndarray(value.tensor)
          if array.ndim == 0 and array.dtype.kind == 'f':
            tags[value.tag] = float(array)
  for tag in ('train/query_accuracy_before', 'train/query_accuracy_after',
              'eval/accuracy_step1'):
    assert 0.0 <= tags[tag] <= 1.0, sorted(tags)


def test_main_with_a_wrong_data_dir_stops_with_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'maml_plugin.main',
       '--config=configs/maml_omniglot.py:quick',
       f'--workdir={tmp_path / "work"}', f'--config.data_dir={tmp_path}'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f'maml_plugin: omniglot data_dir={str(tmp_path)!r}: '
                         'missing omniglot/images_background.zip'), last
  assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize('overrides,message', [
    (dict(ways=2000),
     "config.ways=2000: must be at most 1692, the classes of "
     "config.eval_split='vinyals_test'"),
    (dict(num_support=15, num_query=10),
     "config.num_support + config.num_query = 25: must be at most 20, the "
     "images per class of config.train_split='vinyals_train'"),
])
def test_sizes_the_split_cannot_supply_are_config_errors(
    omniglot_env, tmp_path, overrides, message):
  config = maml_omniglot.get_config('quick')
  config.update(overrides)
  workdir = tmp_path / 'work'
  with pytest.raises(config_validation.ConfigError) as err:
    train.train_and_evaluate(config, str(workdir))
  assert str(err.value) == message
  assert not workdir.exists()  # Stopped before touching the workdir.


def test_non_transductive_quick_run_trains_and_evaluates(omniglot_env,
                                                         tmp_path):
  config = maml_omniglot.get_config('quick')
  config.transductive = False
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == config.num_train_steps
  with open(os.path.join(tmp_path, 'evaluation.json')) as f:
    report = json.load(f)
  assert report['metric'] == 'accuracy'
  assert 0.0 <= report['inner_steps']['1']['mean'] <= 1.0
