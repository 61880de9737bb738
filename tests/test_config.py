"""Bad config values stop before training with one line: field, value, rule."""

import inspect
import os
import subprocess
import sys

import pytest

from configs import maml_omniglot
from configs import maml_sine
from maml_plugin import config_validation
from maml_plugin.config_validation import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BAD_VALUES = [
    ('inner_lr', -0.1, 'config.inner_lr=-0.1: must be a finite number > 0'),
    ('inner_lr', 0.0, 'config.inner_lr=0.0: must be a finite number > 0'),
    ('meta_lr', 0.0, 'config.meta_lr=0.0: must be a finite number > 0'),
    ('meta_lr', float('nan'), 'config.meta_lr=nan: must be a finite number'),
    ('num_inner_steps', 0, 'config.num_inner_steps=0: must be an int > 0'),
    ('num_inner_steps', -2, 'config.num_inner_steps=-2: must be an int > 0'),
    ('num_train_steps', 0, 'config.num_train_steps=0: must be an int > 0'),
    ('num_support', 0, 'config.num_support=0: must be an int > 0'),
    ('num_query', -1, 'config.num_query=-1: must be an int > 0'),
    ('meta_batch_size', 0, 'config.meta_batch_size=0: must be an int > 0'),
    ('meta_batch_size', 2.5, 'config.meta_batch_size=2.5: must be an int > 0'),
    ('num_eval_tasks', 1, 'config.num_eval_tasks=1: must be an int >= 2'),
    ('first_order', 1, 'config.first_order=1: must be True or False'),
    ('hidden_sizes', (40, 0),
     'config.hidden_sizes=(40, 0): must be a non-empty tuple of ints > 0'),
    ('train_step', 'mamll', "config.train_step='mamll': must be one of"),
    # (Registered task names: 'omniglot', 'sinusoid', ... and any a test or
    # a user's module has added, sorted, so only the start is pinned.)
    ('task', 'sine', "config.task='sine': must be one of '"),
    ('model', 'mpl', "config.model='mpl': must be one of 'conv4', 'mlp'"),
]


@pytest.mark.parametrize('field,value,message', BAD_VALUES,
                         ids=[f'{f}={v!r}' for f, v, _ in BAD_VALUES])
def test_bad_value_names_field_value_and_rule(field, value, message):
  # A plain dict: ConfigDict's own type check would stop a wrong type first.
  config = maml_sine.get_config('maml,quick').to_dict()
  config[field] = value
  with pytest.raises(ConfigError) as err:
    config_validation.validate(config)
  text = str(err.value)
  assert text.startswith(message)
  assert '\n' not in text


def test_unknown_train_step_lists_the_registered_ones():
  config = maml_sine.get_config('quick')
  config.train_step = 'nope'
  with pytest.raises(ConfigError) as err:
    config_validation.validate(config)
  listed = str(err.value).split('must be one of ')[1]
  for name in ('anil', 'fomaml', 'maml', 'mamlpp', 'metasgd', 'reptile'):
    assert repr(name) in listed


def test_misaligned_interval_is_refused():
  config = maml_sine.get_config('quick')
  config.eval_every_steps = 15
  with pytest.raises(ConfigError, match=(
      r'config.eval_every_steps=15: must be a multiple of '
      r'config.steps_per_call=10')):
    config_validation.validate(config)


@pytest.mark.parametrize('field', ['checkpoint_every_steps',
                                   'log_every_steps', 'eval_every_steps',
                                   'num_train_steps'])
def test_every_interval_must_be_a_multiple_of_steps_per_call(field, tmp_path):
  """Pins the alignment of each interval with `steps_per_call` (the loop
  runs `steps_per_call` meta-steps per call and fires its actions on call
  boundaries): a field dropped from the check, or the check inverted.
  A `checkpoint_every_steps` of 15 with calls of 10 steps would never
  save on its own cadence (steps 10, 20, ... are never 15, 30, ...), and
  only a long run would show it. The trainer refuses it before it
  creates the workdir; a multiple (30) is accepted."""
  from maml_plugin import train  # pylint: disable=g-import-not-at-top
  config = maml_sine.get_config('quick')
  config.num_train_steps = 300
  config[field] = 15
  with pytest.raises(ConfigError) as err:
    config_validation.validate(config)
  assert str(err.value) == (f'config.{field}=15: must be a multiple of '
                            'config.steps_per_call=10')
  workdir = tmp_path / 'run'
  with pytest.raises(ConfigError, match=f'^config.{field}=15: '):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()
  config[field] = 30
  config_validation.validate(config)


def test_unknown_field_is_refused():
  config = maml_sine.get_config('quick')
  config.inner_lrr = 0.1
  with pytest.raises(ConfigError, match='config.inner_lrr: unknown field'):
    config_validation.validate(config)


def test_default_and_quick_configs_are_valid():
  config_validation.validate(maml_sine.get_config())
  config_validation.validate(maml_sine.get_config('quick'))


@pytest.mark.parametrize('override,expected', [
    ('--config.inner_lr=-0.1',
     'maml_plugin: bad config: config.inner_lr=-0.1: must be a finite number > 0'),
    ('--config.train_step=mamll',
     "maml_plugin: bad config: config.train_step='mamll': must be one of "
     "'anil', 'fomaml', 'imaml', 'maml', 'mamlpp', 'metasgd', 'reptile'"),
])
def test_main_stops_before_training_with_one_line(tmp_path, override, expected):
  workdir = tmp_path / 'work'
  proc = subprocess.run(
      [sys.executable, '-m', 'maml_plugin.main',
       '--config=configs/maml_sine.py:quick', f'--workdir={workdir}', override],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(expected), proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  assert not (workdir / 'checkpoints').exists()


CONFIGS = ([('maml_sine', a) for a in (None,) + maml_sine.ALGORITHMS]
           + [('maml_omniglot', a)
              for a in (None, '20w5s', 'mamlpp', 'imaml', '20w1s,imaml')])


@pytest.mark.parametrize('module,arg', CONFIGS)
def test_every_config_field_is_read_by_the_package(module, arg):
  """DESIGN.md: every field is read somewhere (no dead knobs): by the
  trainer (``config.name``, or the name as a string, as in
  ``config.get('name')``), or, for a field that the config's task family,
  model or train step declares, as an attribute (``.name``) in the module
  of that entry's factory."""
  sources = ''
  package = os.path.join(REPO, 'maml_plugin')
  for root, _, files in os.walk(package):
    for name in files:
      if name.endswith('.py'):
        with open(os.path.join(root, name)) as f:
          sources += f.read()
  config = {'maml_sine': maml_sine,
            'maml_omniglot': maml_omniglot}[module].get_config(arg)
  declared = {}
  for kind, registry in config_validation.REGISTRIES.items():
    factory = registry.lookup(config[kind])
    source = inspect.getsource(sys.modules[factory.__module__])
    for field in registry.fields(config[kind]).names():
      declared[field] = declared.get(field, '') + source
  for field in config:
    read = f'config.{field}' in sources or f"config['{field}']" in sources
    named = f"'{field}'" in sources  # e.g. config.get('rate_meta_lr')
    used = f'.{field}' in declared.get(field, '')
    assert read or named or used, f'config.{field} is never read'


# Overrides that ml_collections / absl would otherwise answer with a
# traceback or a multi-line usage error.
CLI_BAD_INPUTS = [
    ('--config.inner_lrr=0.1',
     'maml_plugin: bad config: config.inner_lrr=0.1: unknown field; did you '
     'mean config.inner_lr? known fields: '),
    ('--config.inner_lr=abc',
     "maml_plugin: bad config: config.inner_lr='abc': must be a finite "
     'number > 0'),
    ('--config.meta_batch_size=2.5',
     "maml_plugin: bad config: config.meta_batch_size='2.5': must be an "
     'int > 0'),
]


@pytest.mark.parametrize('override,expected', CLI_BAD_INPUTS,
                         ids=[o for o, _ in CLI_BAD_INPUTS])
def test_cli_unknown_field_or_wrong_type_is_one_line(tmp_path, override,
                                                     expected):
  workdir = tmp_path / 'work'
  proc = subprocess.run(
      [sys.executable, '-m', 'maml_plugin.main',
       '--config=configs/maml_sine.py:quick', f'--workdir={workdir}', override],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith(expected), proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  assert not workdir.exists()


def test_meta_batch_must_divide_by_the_device_count():
  config = maml_sine.get_config('quick')
  with pytest.raises(ConfigError, match=(
      r'^config.meta_batch_size=25: must be a multiple of the device count '
      r'4 \(the task axis is sharded over the devices\)$')):
    config_validation.validate(config, num_devices=4)
  config.meta_batch_size = 24
  config_validation.validate(config, num_devices=4)


def test_task_batch_size_must_divide_the_meta_batch_and_the_devices():
  config = maml_sine.get_config('quick')  # meta-batch 25
  config.task_batch_size = 4
  with pytest.raises(ConfigError, match=(
      r'^config.task_batch_size=4: must divide config.meta_batch_size=25$')):
    config_validation.validate(config)
  config.meta_batch_size = 24
  config_validation.validate(config)
  config.task_batch_size = 2
  with pytest.raises(ConfigError, match=(
      r'^config.task_batch_size=2: must be a multiple of the device count '
      r'4 ')):
    config_validation.validate(config, num_devices=4)
  config.task_batch_size = 0
  with pytest.raises(ConfigError, match=(
      r'^config.task_batch_size=0: must be an int > 0 that divides')):
    config_validation.validate(config)


# What the sinusoid default changes from the paper, per algorithm
# (docs/sinusoid.md): {field: (default, paper)}.
SINE_DEFAULT_VS_PAPER = {
    # The default (no algorithm named): MAML's objective averaged over three
    # inner steps, as the 'mamlpp' step with learned inner rates (Adam 4e-6)
    # and its other parts off, at twice the paper's Adam step size, the
    # meta-gradient's norm clipped to 10; its three inner steps compiled
    # unrolled (the same math).
    None: {'train_step': ('mamlpp', 'maml'), 'num_inner_steps': (3, 1),
           'meta_lr': (2e-3, 1e-3), 'max_meta_grad_norm': (10.0, None),
           'learn_inner_lr': (True, None), 'rate_meta_lr': (4e-6, None),
           'first_order_steps': (0, None), 'first_order': (None, False),
           'unroll_inner_steps': (True, None)},
    'maml': {},
    # ANIL meta-trains on the ten inner steps it is evaluated with.
    'anil': {'num_inner_steps': (10, 1)},
    # Meta-SGD: the mean query loss over three inner steps, its rates at
    # Adam 1e-5.
    'metasgd': {'num_inner_steps': (3, 1), 'msl_anneal_steps': (None, 0),
                'rate_meta_lr': (1e-5, None)},
    'fomaml': {}, 'reptile': {}, 'mamlpp': {},
}


@pytest.mark.parametrize('algorithm', list(SINE_DEFAULT_VS_PAPER))
def test_sine_default_differs_from_paper_only_where_documented(algorithm):
  """Pins the documented stable defaults and that `paper` restores the
  paper's numbers: a changed default, a `paper` that forgets a field or a
  default that changes an undocumented one fails here."""
  default = maml_sine.get_config(algorithm).to_dict()
  paper = maml_sine.get_config(
      'paper' if algorithm is None else f'{algorithm},paper').to_dict()
  differs = {k: (default.get(k), paper.get(k))
             for k in set(default) | set(paper)
             if default.get(k) != paper.get(k)}
  assert differs == SINE_DEFAULT_VS_PAPER[algorithm]
  assert maml_sine.get_config('paper').inner_lr == 0.01
  assert maml_sine.get_config().inner_lr == 0.01
  # The default's multi-step loss weights stay uniform (never annealed).
  assert maml_sine.get_config().msl_anneal_steps is None
  assert maml_sine.get_config('maml').to_dict() == maml_sine.get_config(
      'paper').to_dict()
  # `quick` composes with `paper`: only the budget changes.
  quick = maml_sine.get_config(
      'paper,quick' if algorithm is None else f'{algorithm},paper,quick')
  assert quick.inner_lr == paper['inner_lr']
