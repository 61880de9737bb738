"""A Flax-examples loop of the user's own, pointed at a shipped config with
`maml_plugin.build_components` (docs/own_loop.md).

The page shows the change as a diff, then the whole file after it and a
block that resumes it; the tests run those two blocks as written, in one
namespace, and check that the diff gives the file's loop.
"""

import os
import re

import jax
import numpy as np

import maml_plugin
from maml_plugin import config_files
from maml_plugin import train
from tests import event_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join('docs', 'own_loop.md')


def _page() -> str:
  with open(os.path.join(REPO, PAGE)) as f:
    return f.read()


def _block_after(marker: str) -> str:
  match = re.search(re.escape(marker) + r'\s*```python\n(.*?)```', _page(),
                    re.S)
  assert match, f'no python block after {marker} in {PAGE}'
  return match.group(1)


def _docs_diff():
  return re.search(r'```diff\n(.*?)```', _page(), re.S).group(1).splitlines()


def _function(source: str, name: str) -> str:
  """The text of top-level `def name` in `source`, up to the next
  top-level statement."""
  start = source.index(f'def {name}(')
  end = re.compile(r'^\S', re.M).search(source, source.index('\n', start))
  return source[start:end.start() if end else None].rstrip() + '\n'


def test_docs_diff_gives_the_pages_whole_loop():
  """The loop the diff makes is the one the page's complete block runs
  (pins a diff edited without the file, and the other way round)."""
  after = [line[1:] for line in _docs_diff() if line[:1] in (' ', '+')]
  start = after.index('def train_and_evaluate(config, workdir):')
  assert after[:start] == ['import maml_plugin', '', '']
  assert '\n'.join(after[start:]) + '\n' == _function(
      _block_after('<!-- own-loop-complete -->'), 'train_and_evaluate')
  changed = [line for line in _docs_diff()
             if line[:1] in '+-' and line[1:].strip()]
  assert len(changed) <= 15, changed  # A handful of lines.


def test_the_pages_loop_trains_on_the_sine_config_and_resumes(capsys):
  """The page's two blocks as written: the loss falls (held-out MSE after
  one inner step, against the initial params') and our actions fire:
  evaluation scalars at the eval steps only, checkpoints at the checkpoint
  steps (pins actions that never fire, a state_fn that returns the stale
  initial state, and a sampler or step that does not train); the second
  block resumes at step 200 and trains to 300."""
  config = config_files.load('configs/maml_sine.py:quick')
  before = maml_plugin.build_components(config)
  curves = before.evaluator(before.state.params)  # [tasks, inner steps]
  # The untrained MLP's first inner step raises the loss (4.3 -> 10.7):
  # the trained one must beat both.
  initial = np.mean(curves[:, 1])
  unadapted = np.mean(curves[:, 0])
  namespace = {}
  exec(compile(_block_after('<!-- own-loop-complete -->'), PAGE, 'exec'),  # pylint: disable=exec-used
       namespace)
  state, workdir = namespace['state'], namespace['workdir']
  assert int(state.step) == config.num_train_steps == 200
  scalars = event_files.read_scalars(workdir)
  evaluated = sorted(step for tag, step in scalars if tag == 'eval/mse_step1')
  assert evaluated == [100, 200]
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == [
      '100', '200']
  final = float(scalars[('eval/mse_step1', 200)][-1])
  assert final < 0.8 * initial and final < unadapted, (initial, unadapted,
                                                         final)
  logged = sorted(step for tag, step in scalars if tag == 'query_loss_after')
  assert logged == [50, 100, 150, 200]
  printed = capsys.readouterr().out
  shown = re.search(r'held-out MSE ([\d.]+) before adapting, ([\d.]+) after',
                    printed)
  assert shown and float(shown.group(2)) < float(shown.group(1)), printed

  exec(compile(_block_after('<!-- own-loop-resume -->'), PAGE, 'exec'),  # pylint: disable=exec-used
       namespace)
  assert int(namespace['state'].step) == 300
  printed = capsys.readouterr().out
  assert 'starting at step 200' in printed, printed
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == [
      '100', '200', '300']
  # The resumed run wrote steps 201..300 only: TensorBoard has each once.
  logged = {step: values for (tag, step), values
            in event_files.read_scalars(workdir).items()
            if tag == 'query_loss_after'}
  assert sorted(logged) == [50, 100, 150, 200, 250, 300]
  assert all(len(values) == 1 for values in logged.values()), logged


def test_build_components_is_what_our_trainer_runs():
  """`maml_plugin.build_components` is the trainer's own call, and its
  state is step 0 of the algorithm the config names."""
  assert maml_plugin.build_components is train.build_components
  config = config_files.load('configs/maml_sine.py:quick,metasgd')
  components = maml_plugin.build_components(config)
  assert int(components.state.step) == 0
  assert 'inner_lr' in components.state.params  # Meta-SGD's learned rates.
  batch = components.meta_batch(jax.random.key(0))
  assert batch['support']['x'].shape == (config.meta_batch_size,
                                         config.num_support, 1)


def test_the_evaluators_tasks_are_the_held_out_tasks_the_page_says():
  """docs/own_loop.md: `components.evaluator.tasks` is a meta-batch of
  `config.num_eval_tasks` held-out tasks from `config.eval_seed`, and the
  evaluator's curves are [num_eval_tasks, eval_num_inner_steps + 1]."""
  config = config_files.load('configs/maml_sine.py:quick')
  config.num_eval_tasks = 7
  components = maml_plugin.build_components(config)
  tasks = components.evaluator.tasks
  assert set(tasks) >= {'support', 'query'}
  assert tasks['support']['x'].shape == (7, config.num_support, 1)
  same = train.create_problem(config).tasks.held_out(
      seed=config.eval_seed, num_tasks=7, num_query=config.eval_num_query)
  np.testing.assert_array_equal(tasks['query']['y'], same['query']['y'])
  curves = components.evaluator(components.state.params,
                                components.state.model_state)
  assert curves.shape == (7, config.eval_num_inner_steps + 1)
