"""Every registered algorithm, by name, in a user's own loop: the example of
docs/algorithms.md ("Every algorithm by name, in a loop of your own"), its
own NNX model and loop, no trainer."""

import os
import re

import jax
import numpy as np
import optax
import pytest

import maml_plugin
from maml_plugin.tasks import SinusoidTasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join('docs', 'algorithms.md')
NAMES = maml_plugin.TRAIN_STEPS.names()


def _block_after(marker: str) -> str:
  with open(os.path.join(REPO, PAGE)) as f:
    text = f.read()
  match = re.search(re.escape(marker) + r'\s*```\w*\n(.*?)```', text, re.S)
  assert match, f'no code block after {marker} in {PAGE}'
  return match.group(1)


@pytest.fixture(scope='module')
def example():
  """The page's definitions (model, loss, SETTINGS, train) as it runs them."""
  namespace = {}
  exec(compile(_block_after('<!-- user-loop-example -->'), PAGE, 'exec'),  # pylint: disable=exec-used
       namespace)
  return namespace


def _train_step(example, name):
  tx = optax.adam(1e-3)
  return tx, jax.jit(maml_plugin.make_train_step(
      name, loss_fn=example['loss_fn'], tx=tx, **example['SETTINGS'][name]))


def test_the_page_has_settings_for_every_registered_algorithm(example):
  assert sorted(example['SETTINGS']) == NAMES, (
      f'{PAGE}: SETTINGS must name every registered train step')
  assert 'maml_plugin.TRAIN_STEPS.names()' in _block_after(
      '<!-- user-loop-run -->')


@pytest.mark.parametrize('name', NAMES)
def test_a_state_of_the_model_params_trains_every_algorithm(example, name):
  """``MetaTrainState.create(params, tx)``, the state MAML takes, works for
  every algorithm: with it, Meta-SGD and MAML++ (learned rates beside the
  model) stopped at their first step with ``KeyError: 'model'``.

  A few jitted steps give finite metrics, the state ends in the layout the
  trainer checkpoints (`init_params`), and the query loss after adapting
  on a fixed meta-batch falls.
  """
  tx, train_step = _train_step(example, name)
  params = example['params']
  start = maml_plugin.MetaTrainState.create(params, tx)
  state, metrics = example['train'](name, num_steps=20)
  assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
  assert int(state.step) == 20
  algorithm = maml_plugin.make_algorithm(
      name, loss_fn=example['loss_fn'], tx=tx, **example['SETTINGS'][name])
  assert (jax.tree.structure(state.params)
          == jax.tree.structure(algorithm.init_params(params)))
  fixed = SinusoidTasks(num_support=10, num_query=10).sample(
      jax.random.key(7), 25)
  key = jax.random.key(8)
  _, before = train_step(start, fixed, key)
  _, after = train_step(state, fixed, key)
  assert float(after.compute()['query_loss_after']) < float(
      before.compute()['query_loss_after'])
