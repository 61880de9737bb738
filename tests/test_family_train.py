"""Every registered algorithm runs through `train_and_evaluate` and evaluation."""

import json
import os

import jax
import numpy as np
import pytest

from configs import maml_sine
from maml_plugin import algorithms
from maml_plugin import config_validation
from maml_plugin import evaluate
from maml_plugin import train
from maml_plugin.config_validation import ConfigError
from tests.layout_checks import package_names

# Every registered algorithm but MAML (tests/test_train.py trains it), read
# from the registry: a new one runs here through configs/maml_sine.py:NAME.
NEW_ALGORITHMS = [n for n in package_names(algorithms.TRAIN_STEPS)
                  if n != 'maml']


def _tiny(name):
  config = maml_sine.get_config(f'{name},quick')
  config.num_train_steps = 40
  config.log_every_steps = 20
  config.eval_every_steps = 40
  config.checkpoint_every_steps = 40
  config.num_eval_tasks = 20
  config.eval_num_inner_steps = 3
  config.num_plot_tasks = 1
  if name == 'mamlpp':
    config.msl_anneal_steps = 20
    config.first_order_steps = 20
  if name == 'imaml':
    config.num_inner_steps = 3
  return config


@pytest.mark.parametrize('name', NEW_ALGORITHMS)
def test_algorithm_trains_checkpoints_and_evaluates_end_to_end(tmp_path, name):
  config = _tiny(name)
  workdir = str(tmp_path)
  state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == config.num_train_steps
  for leaf in jax.tree.leaves(state.params):
    assert np.all(np.isfinite(leaf))
  with open(os.path.join(workdir, 'evaluation.json')) as f:
    report = json.load(f)
  assert list(report['inner_steps']) == ['0', '1', '2', '3']
  # Restoring the checkpoint (learned rates included) reproduces the report.
  assert evaluate.evaluate(config, workdir) == report


def test_learned_rates_are_trained_saved_and_used_by_evaluation(tmp_path):
  config = _tiny('metasgd')
  state = train.train_and_evaluate(config, str(tmp_path))
  rates = jax.tree.leaves(state.params['inner_lr'])
  assert any(not np.allclose(r, config.inner_lr) for r in rates)
  # The evaluator reads the rates from the state it is given.
  problem = train.create_problem(config)
  evaluator = train.create_evaluator(config, problem)
  learned = evaluator(state.params)
  reset = evaluator({'model': state.params['model'],
                     'inner_lr': jax.tree.map(
                         lambda r: np.full_like(r, config.inner_lr),
                         state.params['inner_lr'])})
  np.testing.assert_array_equal(learned[:, 0], reset[:, 0])
  assert not np.allclose(learned[:, 1:], reset[:, 1:])


@pytest.mark.parametrize('name', ['maml'] + NEW_ALGORITHMS)
def test_each_algorithm_config_is_valid(name):
  config_validation.validate(maml_sine.get_config(name))
  config_validation.validate(maml_sine.get_config(f'{name},quick'))


@pytest.mark.parametrize('field,value,message', [
    ('head_filter', '^layers/2/',
     "config.head_filter='^layers/2/': not used by config.train_step='maml'; "
     "remove it or pick one of 'anil'"),
    ('remat_inner_steps', 1,
     'config.remat_inner_steps=1: must be True or False'),
    ('meta_lr_schedule', 'exp',
     "config.meta_lr_schedule='exp': must be one of 'constant', 'linear', "
     "'cosine'"),
    ('meta_optimizer', 'rmsprop',
     "config.meta_optimizer='rmsprop': must be one of 'adam', 'sgd'"),
])
def test_bad_optional_field_names_field_value_and_rule(field, value, message):
  config = maml_sine.get_config('maml,quick').to_dict()
  config[field] = value
  with pytest.raises(ConfigError) as err:
    config_validation.validate(config)
  assert str(err.value).startswith(message)
  assert '\n' not in str(err.value)


def test_rate_meta_lr_steps_the_learned_rates_at_their_own_size():
  config = maml_sine.get_config('metasgd,quick')
  config.meta_optimizer = 'sgd'
  config.meta_lr = 0.1
  config.rate_meta_lr = 1e-3
  config_validation.validate(config)
  tx = train.create_optimizer(config)
  params = {'model': {'w': np.ones(3, np.float32)}, 'inner_lr': {'w': np.ones(3, np.float32)}}
  grads = {'model': {'w': np.ones(3, np.float32)}, 'inner_lr': {'w': np.ones(3, np.float32)}}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['model']['w'], -0.1)
  np.testing.assert_allclose(updates['inner_lr']['w'], -1e-3)


@pytest.mark.parametrize('name,field,value,message', [
    ('reptile', 'inner_optimizer', 'rmsprop',
     "config.inner_optimizer='rmsprop': must be one of 'sgd', 'adam'"),
    ('anil', 'head_filter', '(',
     "config.head_filter='(': must be None (the last layer) or a non-empty "
     'regular expression'),
    ('mamlpp', 'msl_anneal_steps', -1,
     'config.msl_anneal_steps=-1: must be an int >= 0'),
    ('maml', 'first_order', 'yes',
     "config.first_order='yes': must be True or False"),
    ('maml', 'rate_meta_lr', 1e-4,
     "config.rate_meta_lr=0.0001: not used by config.train_step='maml'; "
     "remove it or pick one of 'mamlpp', 'metasgd'"),
    ('fomaml', 'first_order', True,
     "config.first_order=True: not used by config.train_step='fomaml'"),
])
def test_bad_algorithm_field_is_refused(name, field, value, message):
  config = maml_sine.get_config(f'{name},quick').to_dict()
  config[field] = value
  with pytest.raises(ConfigError) as err:
    config_validation.validate(config)
  assert str(err.value).startswith(message)


def test_head_filter_matching_nothing_stops_before_training(tmp_path):
  config = _tiny('anil')
  config.head_filter = '^head/'
  with pytest.raises(ConfigError, match=(
      r"config.head_filter='\^head/': must select some but not all")):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints' / '40')


@pytest.mark.parametrize('schedule,halfway', [
    ('constant', 0.4), ('linear', 0.2), ('cosine', 0.2)])
def test_meta_lr_schedule_anneals_to_zero_at_the_last_step(schedule, halfway):
  config = maml_sine.get_config('maml,quick')
  config.meta_lr = 0.4
  config.meta_lr_schedule = schedule
  lr = train.meta_lr_schedule(config)
  n = config.num_train_steps
  np.testing.assert_allclose(lr(0), 0.4)
  np.testing.assert_allclose(lr(n // 2), halfway, rtol=1e-6)
  np.testing.assert_allclose(lr(n), 0.0 if schedule != 'constant' else 0.4,
                             atol=1e-7)


@pytest.mark.parametrize('name', NEW_ALGORITHMS)
def test_any_train_step_is_selectable_on_the_maml_config(name):
  """`--config.train_step=NAME` on configs/maml_sine.py: fields left at
  their defaults (first_order=False) do not stand in the way."""
  config = maml_sine.get_config('maml,quick')
  config.train_step = name
  config_validation.validate(config)


def test_anil_quick_config_adapting_lowers_the_held_out_mse(tmp_path):
  """`:anil,quick` is what a newcomer runs first; at inner_lr 0.01 its
  held-out MSE after one inner step was worse than before (3.85 vs 3.33)
  and ten steps diverged (4,050)."""
  config = maml_sine.get_config('anil,quick')
  train.train_and_evaluate(config, str(tmp_path))
  with open(os.path.join(str(tmp_path), 'evaluation.json')) as f:
    mse = {int(k): v['mean'] for k, v in json.load(f)['inner_steps'].items()}
  assert mse[1] < mse[0] and mse[config.eval_num_inner_steps] < mse[1], mse
