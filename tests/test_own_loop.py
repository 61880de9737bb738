"""A Flax-examples loop of the user's own, pointed at a shipped config with
`maml_plugin.build_components` (docs/own_loop.md).

`train_and_evaluate` below is the result of the diff in docs/own_loop.md,
written as a user would; a test checks that the two stay the same text.
"""

import inspect
import os
import re

from clu import metric_writers
from clu import periodic_actions
import jax
import numpy as np

import maml_plugin
from maml_plugin import config_files
from maml_plugin import train
from tests import event_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_and_evaluate(config, workdir):
  writer = metric_writers.create_default_writer(workdir)
  rng = jax.random.key(config.seed)
  components = maml_plugin.build_components(config)
  state = components.state
  p_train_step = jax.jit(components.train_step)
  hooks = [periodic_actions.ReportProgress(
      num_train_steps=config.num_train_steps, writer=writer)]
  hooks += components.periodic_actions(writer, workdir,
                                       state_fn=lambda: state, rng=rng)
  for step in range(1, config.num_train_steps + 1):
    batch_rng, step_rng = jax.random.split(jax.random.fold_in(rng, step))
    batch = components.meta_batch(batch_rng)
    state, metrics = p_train_step(state, batch, step_rng)
    if step % config.log_every_steps == 0:
      writer.write_scalars(step, metrics.compute())
    for hook in hooks:
      hook(step)
  return state


def _docs_diff():
  with open(os.path.join(REPO, 'docs', 'own_loop.md')) as f:
    text = f.read()
  return re.search(r'```diff\n(.*?)```', text, re.S).group(1).splitlines()


def test_docs_diff_gives_this_loop():
  """The loop the docs show is the one this module runs (pins a docs
  change that the test does not follow, and the other way round)."""
  after = [line[1:] for line in _docs_diff() if line[:1] in (' ', '+')]
  start = after.index('def train_and_evaluate(config, workdir):')
  assert after[:start] == ['import maml_plugin', '', '']
  assert '\n'.join(after[start:]) + '\n' == inspect.getsource(
      train_and_evaluate)
  changed = [line for line in _docs_diff()
             if line[:1] in '+-' and line[1:].strip()]
  assert len(changed) <= 15, changed  # A handful of lines.


def test_a_flax_examples_loop_trains_on_the_sine_config(tmp_path):
  """The loss falls (held-out MSE after one inner step, against the
  initial params') and our actions fire: evaluation scalars at the eval
  steps only, checkpoints at the checkpoint steps (pins actions that never
  fire, a state_fn that returns the stale initial state, and a sampler or
  step that does not train)."""
  config = config_files.load('configs/maml_sine.py:quick')
  workdir = str(tmp_path)
  before = maml_plugin.build_components(config)
  curves = before.evaluator(before.state.params)  # [tasks, inner steps]
  # The untrained MLP's first inner step raises the loss (4.3 -> 10.7):
  # the trained one must beat both.
  initial = np.mean(curves[:, 1])
  unadapted = np.mean(curves[:, 0])
  state = train_and_evaluate(config, workdir)
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
