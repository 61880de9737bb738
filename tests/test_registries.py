"""Open registries: a user's own task family, model and algorithm, by name.

`examples/my_project/`, the example project users copy, lives outside the
package: it registers a task family (`line_tasks`), a model with BatchNorm and Dropout
(`norm_mlp`) and an algorithm with a field of its own (`scaled_maml`);
its config names them and lists the modules in ``config.imports``.
"""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from maml_plugin import config_validation
from maml_plugin import core
from maml_plugin import fields
from maml_plugin import train
from maml_plugin.config_validation import ConfigError
from maml_plugin.registry import Registry
from examples.my_project import config as user_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_main_and_evaluate_run_the_example_project(tmp_path):
  """`python -m maml_plugin.main` and `maml_plugin.evaluate` on
  examples/my_project/config.py:quick, as its docstring says, with an
  override of the project's own field."""
  workdir = str(tmp_path / 'work')
  for command, extra in (('main', ['--config.inner_lr_scale=0.25']),
                         ('evaluate', [])):
    proc = subprocess.run(
        [sys.executable, '-m', f'maml_plugin.{command}',
         '--config=examples/my_project/config.py:quick',
         f'--workdir={workdir}',
         *extra],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, 'evaluation.json')) as f:
    report = json.load(f)
  assert report['metric'] == 'mse' and report['num_tasks'] == 20
  assert report['train_step'] == 20
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['20']
  # The family draws no picture, so the report has none.
  assert not os.path.exists(os.path.join(workdir, 'adaptation.png'))


@pytest.mark.parametrize('override,expected', [
    ('--config.inner_lr_scalee=1',
     'maml_plugin: bad config: config.inner_lr_scalee=1: unknown field; did '
     'you mean config.inner_lr_scale? '),
    ('--config.inner_lr_scale=abc',
     "maml_plugin: bad config: config.inner_lr_scale='abc': must be "),
])
def test_main_names_a_bad_override_of_a_users_field(tmp_path, override,
                                                    expected):
  proc = subprocess.run(
      [sys.executable, '-m', 'maml_plugin.main',
       '--config=examples/my_project/config.py:quick',
       f'--workdir={tmp_path / "work"}', override],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith(expected), (
      proc.stderr[-2000:])
  assert 'Traceback' not in proc.stderr


def test_a_users_model_with_state_trains_and_keeps_its_state(tmp_path):
  config = user_config.get_config('quick')
  problem = train.create_problem(config)
  assert core.is_stateful(problem.loss_fn)  # BatchNorm and Dropout.
  assert core.is_stateful(problem.eval_loss_fn)
  initial = problem.model_state
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == config.num_train_steps
  moved = [not np.allclose(a, b) for a, b in zip(
      jax.tree.leaves(initial), jax.tree.leaves(state.model_state))]
  assert any(moved)  # The running averages the train steps kept.


def test_a_users_algorithm_gets_its_own_field_from_the_config():
  config = user_config.get_config('quick')
  config_validation.validate(config)
  problem = train.create_problem(config)
  tx = train.create_optimizer(config)
  batch = problem.tasks.train_batch(jax.random.key(0), 4)
  updates = []
  for scale in (0.5, 1.0):
    config.inner_lr_scale = scale
    algorithm = train.create_algorithm(config, problem, tx)
    state = train.create_train_state(problem, algorithm, tx)
    _, metrics = algorithm.train_step(state, batch, jax.random.key(1))
    updates.append(float(metrics.compute()['query_loss_after']))
  assert updates[0] != updates[1]


@pytest.mark.parametrize('field,value,message', [
    ('inner_lr_scale', -1.0,
     'config.inner_lr_scale=-1.0: must be a finite number > 0'),
    ('width', 0, 'config.width=0: must be an int > 0'),
    ('max_slope', 'steep', "config.max_slope='steep': must be a finite"),
    ('task', 'lines', "config.task='lines': must be one of 'image_folder', "
     "'line_tasks', 'omniglot', 'sinusoid', 'tfds_episodic'"),
    ('model', 'mlpp', "config.model='mlpp': must be one of 'conv4', 'mlp', "
     "'norm_mlp'"),
    ('train_step', 'scaled', "config.train_step='scaled': must be one of "
     "'anil', 'fomaml', 'imaml', 'maml'"),  # ... and 'scaled_maml', checked below
    ('hidden_sizes', (4,), "config.hidden_sizes: unknown field for task "
     "'line_tasks', model 'norm_mlp' and train_step 'scaled_maml'"),
    ('imports', ('examples.my_project.nope',),
     "config.imports: cannot import 'examples.my_project.nope' "
     '(ModuleNotFoundError: '),
])
def test_a_bad_field_of_a_users_entry_is_one_line(field, value, message):
  config = user_config.get_config('quick').to_dict()
  config[field] = value
  with pytest.raises(ConfigError) as err:
    config_validation.validate(config)
  assert str(err.value).startswith(message), str(err.value)
  assert '\n' not in str(err.value)
  if field == 'train_step':  # Other test modules may register more.
    assert "'scaled_maml'" in str(err.value)


def test_a_users_algorithm_field_on_another_algorithm_is_refused():
  config = user_config.get_config('quick')
  config.train_step = 'maml'
  with pytest.raises(ConfigError, match=(
      r"^config.inner_lr_scale=0.5: not used by config.train_step='maml'; "
      r"remove it or pick one of 'scaled_maml'$")):
    config_validation.validate(config)
  config.inner_lr_scale = 1.0  # Its default: harmless, accepted.
  config_validation.validate(config)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Fields(fields.Fields):
  rate: float = fields.positive()
  steps: int = fields.integer(1)

  def check(self):
    if self.rate * self.steps > 10:
      raise fields.FieldError(f'rate={self.rate!r}: must be at most '
                              f'10 / steps')


def test_fields_check_each_value_and_name_the_unknown_and_missing():
  assert _Fields.build({'rate': 0.5}) == _Fields(rate=0.5, steps=1)
  assert _Fields.defaults() == {'steps': 1}
  for values, message in [
      ({'rate': 0.0}, 'rate=0.0: must be a finite number > 0'),
      ({'rate': 1.0, 'steps': True}, 'steps=True: must be an int > 0'),
      ({}, 'rate is missing: must be a finite number > 0'),
      ({'rate': 1.0, 'stpes': 2}, "stpes=2: not a field of mine; its "
       'fields: rate, steps'),
      ({'rate': 5.0, 'steps': 3}, 'rate=5.0: must be at most 10 / steps'),
  ]:
    with pytest.raises(fields.FieldError) as err:
      _Fields.build(values, owner='mine')
    assert str(err.value) == message


def test_a_registry_refuses_fields_that_are_not_fields():
  registry = Registry('thing')
  with pytest.raises(ValueError, match='must be a dataclass that subclasses'):
    registry.register('a', fields=dict)
  registry.register('b')(lambda: None)
  assert registry.fields('b') is fields.Fields
