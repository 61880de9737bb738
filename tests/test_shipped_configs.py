"""The configs ship with the package, and README's overrides work on them.

- A wheel (`pip wheel .`, installed with `pip install --target`) runs a
  shipped config from outside the repository, by the README's own path.
- Every `--config.<field>=<value>` in README.md and docs/*.md, applied the way
  `maml_plugin.main` applies it (config_flags, locked config), gives a valid
  config on every config it is documented for.
- A bad override or `--config` is one line naming what is wrong.
"""

import json
import os
import re
import shutil
import subprocess
import sys

from absl import flags
from ml_collections import config_flags
import pytest

from configs import maml_sine
from maml_plugin import algorithms
from maml_plugin import config_files
from maml_plugin import config_validation
from tests.config_variants import NEEDS
from tests.config_variants import VARIANTS
from tests.config_variants import available
from tests.config_variants import ours

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, 'configs')

# The configs of `maml_plugin.main`, those README's prose overrides are for
# (jaxline_sine's own fields are at the top level, ours one level down).
FOR_MAIN = ('maml_sine', 'maml_omniglot', 'maml_tfds', 'maml_miniimagenet',
            'maml_image_folder')


def _config_files():
  return sorted(n[:-3] for n in os.listdir(CONFIG_DIR)
                if n.endswith('.py') and not n.startswith('_'))


def test_every_config_in_configs_is_covered():
  assert _config_files() == sorted(VARIANTS)


def _parse(name, arg, overrides):
  """The config `maml_plugin.main` builds from these flags."""
  value = os.path.join(CONFIG_DIR, name + '.py') + (f':{arg}' if arg else '')
  argv = ['main', f'--config={value}', *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config',
                                  flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  flag_values(argv)
  return flag_values.config


# The documentation a user reads: README.md and the pages of docs/.
DOC_PAGES = ['README.md'] + sorted(
    os.path.join('docs', name)
    for name in os.listdir(os.path.join(REPO, 'docs')) if name.endswith('.md'))


def _readme_overrides():
  """(overrides, config name or None, config arg, line) for each line of
  the documentation (`DOC_PAGES`) with a `--config.<field>=<value>`.

  A command (`-m maml_plugin.<module>`, `\\` continuations joined)
  applies its overrides together to the config it names. In prose, each
  override applies alone to every config of `maml_plugin.main`.
  """
  text = ''
  for page in DOC_PAGES:
    with open(os.path.join(REPO, page)) as f:
      text += f.read().replace('\\\n', ' ') + '\n'
  out = []
  for line in text.splitlines():
    overrides = re.findall(r'--config\.[\w.]+=[^\s`\\]+', line)
    if not overrides:
      continue
    command = re.search(r'-m maml_plugin\.\w+', line)
    named = re.search(r'--config=configs/(\w+)\.py(?::([\w,]+))?', line)
    if command and named:
      out.append((tuple(overrides), named.group(1), named.group(2),
                  line.strip()))
    else:
      out.extend(((o,), None, None, line.strip()) for o in overrides)
  return out


README_OVERRIDES = _readme_overrides()


def _documented_for(field, name, arg):
  """Whether a prose override of `field` is meant for this config: a field
  that task families or models declare for configs of those, an
  algorithm's hyper-parameter for configs whose train step takes it, any
  other field for every config."""
  config = ours(config_files.load(
      os.path.join(CONFIG_DIR, name + '.py') + (f':{arg}' if arg else '')))
  for kind in ('task', 'model', 'train_step'):
    registry = config_validation.REGISTRIES[kind]
    owners = [entry for entry in registry.names()
              if field in registry.fields(entry).names()]
    if owners:
      return config[kind] in owners
  return True


def test_readme_has_the_overrides_this_test_is_about():
  fields = {re.match(r'--config\.(\w+)', o).group(1)
            for overrides, *_ in README_OVERRIDES for o in overrides}
  assert {'task_batch_size', 'remat_inner_steps', 'train_step',
          'transductive', 'first_order'} <= fields, fields


@pytest.mark.parametrize(
    'overrides,name,arg,line', README_OVERRIDES,
    ids=[' '.join(o) + (f' on {n}' + (f':{a}' if a else '') if n else '')
         for o, n, a, _ in README_OVERRIDES])
def test_readme_override_works_on_every_config_it_is_documented_for(
    overrides, name, arg, line):
  if name is not None:
    if not available(name):
      pytest.skip(f'{name} needs {NEEDS[name]}')
    targets = [(name, arg)]
  else:
    field = re.match(r'--config\.(\w+)', overrides[0]).group(1)
    targets = [(n, a) for n in FOR_MAIN for a in VARIANTS[n]
               if _documented_for(field, n, a)]
  assert targets, f'README line {line!r} applies to no config'
  failures = []
  for target in targets:
    try:
      config = _parse(*target, overrides)
      # As `maml_plugin.main` does: a train_step override leaves out the
      # file's fields of its own algorithm (`follow_train_step`).
      value = os.path.join(CONFIG_DIR, target[0] + '.py') + (
          f':{target[1]}' if target[1] else '')
      config_files.follow_train_step(
          ours(config), ['main', f'--config={value}', *overrides])
      config_validation.validate(ours(config))
    except Exception as e:  # pylint: disable=broad-except
      failures.append(f'{target[0]}:{target[1]}: {type(e).__name__}: '
                      f'{" ".join(str(e).split())[:300]}')
  assert not failures, '\n'.join([line] + failures)


def test_override_values_reach_the_config_and_the_algorithm(monkeypatch):
  """The two overrides README asks for on maml_sine.py become the train
  step's arguments, not just config fields."""
  from maml_plugin import train  # pylint: disable=g-import-not-at-top
  config = _parse('maml_sine', 'quick', ['--config.task_batch_size=5',
                                         '--config.remat_inner_steps=True'])
  config_validation.validate(config)
  seen = {}
  real = algorithms.make_algorithm

  def spy(name, **kwargs):
    seen.update(kwargs)
    return real(name, **kwargs)

  monkeypatch.setattr(algorithms, 'make_algorithm', spy)
  problem = train.create_problem(config)
  train.create_algorithm(config, problem, train.create_optimizer(config))
  assert seen['task_batch_size'] == 5 and seen['remat_inner_steps'] is True
  seen.clear()
  default = _parse('maml_sine', 'quick', [])
  train.create_algorithm(default, problem, train.create_optimizer(default))
  assert seen['task_batch_size'] is None
  assert seen['remat_inner_steps'] is False


def test_config_value_resolution(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # No configs/ here.
  shipped = os.path.join(config_files.shipped_dir(), 'maml_sine.py')
  assert os.path.samefile(shipped, os.path.join(CONFIG_DIR, 'maml_sine.py'))
  for value in ('configs/maml_sine.py', 'maml_sine.py', 'maml_sine'):
    assert config_files.resolve(value + ':quick') == shipped + ':quick'
  assert config_files.resolve('maml_sine') == shipped
  # A path that exists is loaded as given, even with a shipped name.
  os.mkdir('configs')
  with open('configs/maml_sine.py', 'w') as f:
    f.write('def get_config(arg=None):\n  return None\n')
  assert config_files.resolve('configs/maml_sine.py:x') == (
      'configs/maml_sine.py:x')
  with pytest.raises(config_files.ConfigFileError) as err:
    config_files.resolve('configs/maml_sin.py:quick')
  assert str(err.value) == (
      "--config=configs/maml_sin.py:quick: no file 'configs/maml_sin.py' "
      "and no shipped config named 'maml_sin' (shipped: "
      f"{', '.join(sorted(VARIANTS))})")


def _main(args, cwd, env=None):
  return subprocess.run(
      [sys.executable, '-m', 'maml_plugin.main', *args], cwd=cwd, env=env,
      capture_output=True, text=True, timeout=300)


# (arguments, the last stderr line): one sentence, nothing escaped.
BAD_FLAGS = [
    (['--config=configs/maml_sine.py:quick',
      '--config.eval_task_batch_size=2'],
     "maml_plugin: bad config: config.eval_task_batch_size=2: "
     "configs/maml_sine.py:quick has no field 'eval_task_batch_size' "
     '(close names: config.task_batch_size, config.meta_batch_size, '
     'config.num_eval_tasks)'),
    (['--config=configs/maml_sine.py:reptile',
      '--config.remat_inner_steps=True'],
     "maml_plugin: bad config: config.remat_inner_steps=True: "
     "configs/maml_sine.py:reptile has no field 'remat_inner_steps' "
     '(close names: config.num_inner_steps, config.eval_num_inner_steps, '
     'config.eval_every_steps)'),
    # A misspelt config argument: the sentence get_config raised.
    (['--config=configs/maml_sine.py:quik'],
     "maml_plugin: bad config: --config=configs/maml_sine.py:quik: "
     "ValueError: get_config arg='quik': must be None or a comma-separated "
     "list of ('quick', 'paper') and one of ('maml', 'fomaml', 'reptile', "
     "'metasgd', 'anil', 'mamlpp', 'imaml')"),
    (['--config=configs/maml_sin.py'],
     "maml_plugin: bad config: --config=configs/maml_sin.py: no file "
     "'configs/maml_sin.py' and no shipped config named 'maml_sin' "
     f"(shipped: {', '.join(sorted(VARIANTS))})"),
]


@pytest.mark.parametrize('args,expected', BAD_FLAGS,
                         ids=[' '.join(a) for a, _ in BAD_FLAGS])
def test_bad_override_or_config_is_one_clean_line(tmp_path, args, expected):
  workdir = tmp_path / 'work'
  proc = _main([*args, f'--workdir={workdir}'], cwd=REPO)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == expected, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  assert not workdir.exists()


def test_wheel_runs_a_shipped_config_outside_the_repository(tmp_path):
  """`pip wheel .`, install the wheel (not editable) into a fresh target,
  then from a folder with no configs/ run the README's command on the
  shipped sinusoid config, evaluate it by the config's short name, and check
  that every config (and argument) loads and validates."""
  source = tmp_path / 'source'  # A copy: the build writes build/, egg-info.
  source.mkdir()
  for name in ('setup.py', 'setup.cfg', 'pyproject.toml', 'README.md'):
    shutil.copy(os.path.join(REPO, name), source / name)
  for name in ('maml_plugin', 'configs'):
    shutil.copytree(os.path.join(REPO, name), source / name,
                    ignore=shutil.ignore_patterns('__pycache__'))
  wheels, target, outside = (tmp_path / 'wheels', tmp_path / 'site',
                             tmp_path / 'elsewhere')
  outside.mkdir()
  subprocess.run(
      [sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps',
       '--no-build-isolation', '-w', str(wheels), str(source)],
      check=True, capture_output=True, timeout=300)
  (wheel,) = wheels.glob('maml_plugin-*.whl')
  subprocess.run(
      [sys.executable, '-m', 'pip', 'install', '-q', '--no-deps',
       '--target', str(target), str(wheel)],
      check=True, capture_output=True, timeout=300)
  for name in _config_files():
    with open(os.path.join(CONFIG_DIR, name + '.py'), 'rb') as f:
      shipped = target / 'maml_plugin' / 'configs' / (name + '.py')
      assert shipped.read_bytes() == f.read(), name
  env = {**os.environ, 'PYTHONPATH': str(target)}
  check = ';'.join([
      'import maml_plugin, os',
      'from maml_plugin import config_files, config_validation',
      f'assert maml_plugin.__file__.startswith({str(target)!r})',
      f'variants = {VARIANTS!r}',
      'assert config_files.shipped_names() == sorted(variants)',
      f'available = {[n for n in VARIANTS if available(n)]!r}',
      'configs = [config_files.load('
      "f'configs/{n}.py' + (f':{a}' if a else '')) "
      'for n in available for a in variants[n]]',
      'assert all(config_validation.validate('
      'c.experiment_kwargs.config if "experiment_kwargs" in c else c) is None'
      ' for c in configs)',
  ])
  proc = subprocess.run([sys.executable, '-c', check], cwd=outside, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  workdir = tmp_path / 'work'
  proc = _main(['--config=configs/maml_sine.py:quick', f'--workdir={workdir}',
                '--config.num_train_steps=20', '--config.log_every_steps=10',
                '--config.eval_every_steps=20',
                '--config.checkpoint_every_steps=20',
                '--config.num_eval_tasks=10'], cwd=outside, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  loaded = os.path.join(str(target), 'maml_plugin', 'configs',
                        'maml_sine.py')
  assert f'config file: {loaded}:quick' in proc.stdout, proc.stdout[-3000:]
  with open(workdir / 'evaluation.json') as f:
    report = json.load(f)
  assert report['train_step'] == 20 and report['num_tasks'] == 10
  # evaluate, by the short name, rewrites the report from the checkpoint.
  os.remove(workdir / 'evaluation.json')
  proc = subprocess.run(
      [sys.executable, '-m', 'maml_plugin.evaluate', '--config=maml_sine:quick',
       f'--workdir={workdir}', '--config.num_eval_tasks=10'],
      cwd=outside, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(workdir / 'evaluation.json') as f:
    assert json.load(f)['train_step'] == 20


def test_the_sinusoid_defaults_length_is_the_one_docs_configs_md_gives():
  """docs/configs.md names the default's meta-steps ('70,000 meta-steps')."""
  docs = os.path.join(REPO, 'docs', 'configs.md')
  with open(docs) as f:
    steps = re.search(r'([\d,]+) meta-steps', f.read()).group(1)
  assert maml_sine.get_config().num_train_steps == int(steps.replace(',', ''))


@pytest.mark.parametrize('name', FOR_MAIN)
@pytest.mark.parametrize('train_step', algorithms.TRAIN_STEPS.names())
def test_train_step_override_trains_that_algorithm_on_every_config(
    name, train_step):
  """``--config.train_step=NAME`` on a shipped config, the way
  ml_collections users switch: the file's fields of its own algorithm that
  NAME does not use (the flagship's ``learn_inner_lr=True``, which the
  user never set and cannot remove from a command line) are left out, and
  the config validates for NAME; every registered algorithm, read from the
  registry."""
  value = os.path.join(CONFIG_DIR, name + '.py')
  argv = ['main', f'--config={value}', f'--config.train_step={train_step}']
  config = _parse(name, None, argv[2:])
  file_config = config_files.load(value)
  line = config_files.follow_train_step(config, argv)
  config_validation.validate(config)
  assert config.train_step == train_step
  if train_step == file_config.train_step:
    assert line is None
  for field in set(file_config) - set(config):
    assert field in algorithms.hparam_names(file_config.train_step)
    assert field not in algorithms.hparam_names(train_step)
  if line is not None:
    assert '\n' not in line and line.startswith(
        f'--config.train_step={train_step}: {value} is written for '
        f'{file_config.train_step!r}; left out its fields that')


def test_a_field_the_command_line_sets_for_another_algorithm_is_refused():
  """Only the file's own values are left out: a value the user typed that
  the new algorithm would ignore is still the one-line error."""
  argv = ['main', '--config=configs/maml_sine.py', '--config.train_step=maml',
          '--config.learn_inner_lr=False']
  config = _parse('maml_sine', None, argv[2:])
  assert config_files.follow_train_step(config, argv) == (
      "--config.train_step=maml: configs/maml_sine.py is written for "
      "'mamlpp'; left out its fields that 'maml' does not use: "
      'msl_anneal_steps, first_order_steps, unroll_inner_steps, '
      'rate_meta_lr '
      "(--config=configs/maml_sine.py:maml is 'maml' as that file sets it "
      'up)')
  with pytest.raises(config_validation.ConfigError) as err:
    config_validation.validate(config)
  assert str(err.value) == (
      "config.learn_inner_lr=False: not used by config.train_step='maml'; "
      "remove it or pick one of 'mamlpp'")


def test_main_trains_the_train_step_named_on_the_command_line(tmp_path):
  """The command a user types: MAML from the flagship config, its one line
  naming what was left out and the variant, and the workdir's config says
  'maml'."""
  workdir = tmp_path / 'work'
  proc = _main(['--config=configs/maml_sine.py:quick',
                '--config.train_step=maml', '--config.num_train_steps=20',
                '--config.log_every_steps=10', '--config.eval_every_steps=20',
                '--config.checkpoint_every_steps=20',
                '--config.num_eval_tasks=10', f'--workdir={workdir}'],
               cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert ("--config.train_step=maml: configs/maml_sine.py:quick is written "
          "for 'mamlpp'; left out its fields that 'maml' does not use: "
          'msl_anneal_steps, learn_inner_lr, first_order_steps, '
          'unroll_inner_steps, rate_meta_lr '
          "(--config=configs/maml_sine.py:quick,maml is 'maml' as that file "
          'sets it up).') in proc.stdout, proc.stdout[-3000:]
  with open(workdir / 'config.json') as f:
    assert json.load(f)['config']['train_step'] == 'maml'
  assert (workdir / 'evaluation.json').exists()
