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
from maml_plugin import fields
from maml_plugin.tasks import SinusoidTasks
from tests.layout_checks import package_names

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join('docs', 'algorithms.md')
NAMES = package_names(maml_plugin.TRAIN_STEPS)


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
  # The run loops over SETTINGS, not TRAIN_STEPS.names(): a user's own
  # registrations (or a test's, in the same process) are in the latter.
  assert 'for name in SETTINGS:' in _block_after('<!-- user-loop-run -->')


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


@pytest.mark.parametrize('call', ['make_train_step', 'make_algorithm'])
@pytest.mark.parametrize('name', NAMES)
def test_a_missing_inner_lr_names_the_call_and_the_algorithms_fields(
    name, call):
  """Without ``inner_lr`` every algorithm stopped with ``inner_lr is
  missing`` and nothing said whose fields those are or where they are
  documented."""
  with pytest.raises(fields.FieldError) as err:
    getattr(maml_plugin, call)(name, loss_fn=lambda p, b: 0.0,
                               tx=optax.sgd(0.1))
  message = str(err.value)
  assert '\n' not in message
  assert message.startswith('inner_lr is missing: must be a finite number')
  assert f'{call}({name!r}, ...) requires inner_lr;' in message
  assert message.endswith(maml_plugin.algorithms.describe_hparams(name))
  declared = maml_plugin.TRAIN_STEPS.fields(name)
  assert f'{declared.__module__}.{declared.__qualname__}' in message


def test_the_docs_list_every_algorithms_hyper_parameters_and_defaults():
  with open(os.path.join(REPO, PAGE)) as f:
    text = f.read()
  listed = re.search(r'<!-- hparams-list -->\n(.*?)<!-- /hparams-list -->',
                     text, re.S)
  assert listed, f'{PAGE}: no <!-- hparams-list --> block'
  assert listed.group(1) == maml_plugin.algorithms.hparams_list(NAMES), (
      f'{PAGE}: paste maml_plugin.algorithms.hparams_list() between the '
      'hparams-list markers')


@pytest.mark.parametrize('name', NAMES)
def test_each_hparams_docstring_says_what_each_of_its_fields_means(name):
  """Each field appears in the docstring of the dataclass that declares it
  (`make_train_step`'s docstring sends users there)."""
  declared = maml_plugin.TRAIN_STEPS.fields(name)
  for cls in declared.__mro__:
    own = [f for f in getattr(cls, '__annotations__', {})
           if f in declared.names()]
    for field in own:
      assert re.search(rf'\b{field}\b', cls.__doc__ or ''), (
          f'{cls.__qualname__}: its docstring does not explain {field}')
  for fn in (maml_plugin.make_train_step, maml_plugin.make_algorithm):
    assert 'describe_hparams' in fn.__doc__ and 'inner_lr' in fn.__doc__


@pytest.fixture(scope='module')
def page_run(example):
  """The page's run block as written, after its definitions (the page says
  it continues them): each algorithm's metrics as its `train` returned
  them, recorded on the way."""
  results = {}
  train = example['train']

  def recorded(name, *args, **kwargs):
    state, metrics = train(name, *args, **kwargs)
    results[name] = metrics
    return state, metrics

  namespace = {**example, 'train': recorded}
  exec(compile(_block_after('<!-- user-loop-run -->'), PAGE, 'exec'),  # pylint: disable=exec-used
       namespace)
  assert sorted(results) == NAMES
  return results


@pytest.mark.parametrize('name', NAMES)
def test_the_documented_settings_meta_train_every_algorithm(page_run, name):
  """300 meta-steps of the page's loop at the page's settings end with
  adapting better than not adapting (the query loss of the last 100
  meta-batches). At ``inner_lr=0.01`` and their other defaults, Reptile
  (one step of Adam) ended worse after adapting than before (3.83 ->
  6.84), iMAML (one proximal step, prox_lambda=1) went from 4.6 to 103
  before and 374 after adapting."""
  metrics = page_run[name]
  before = float(metrics['query_loss_before'])
  after = float(metrics['query_loss_after'])
  assert np.isfinite(before) and np.isfinite(after)
  assert after < 0.98 * before, (name, before, after)
