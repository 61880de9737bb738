"""Evaluation summaries count non-finite and diverging tasks, never average
a NaN; the report carries the counts and stays valid JSON."""

import json
import logging
import math
import os
import statistics
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maml_plugin import actions
from maml_plugin import evaluation
from maml_plugin import losses

NUM_INNER_STEPS = 8


@pytest.fixture(scope='module')
def curves():
  """Linear-regression tasks; task 0's support inputs are so large that SGD
  at this rate overshoots: its query loss grows, then overflows to Inf."""
  def loss_fn(p, batch):
    return losses.mse(batch['x'] @ p['w'], batch['y'])

  rng = np.random.default_rng(0)
  slope = rng.uniform(-2, 2, size=(8, 1, 1)).astype(np.float32)
  x_s = rng.uniform(-1, 1, size=(8, 5, 1)).astype(np.float32)
  x_s[0] *= 300
  x_q = rng.uniform(-1, 1, size=(8, 5, 1)).astype(np.float32)
  tasks = {'support': {'x': x_s, 'y': slope * x_s},
           'query': {'x': x_q, 'y': slope * x_q}}
  evaluator = evaluation.FewShotEvaluator(loss_fn, tasks, inner_lr=0.3,
                                          num_inner_steps=NUM_INNER_STEPS)
  return evaluator({'w': jnp.zeros((1, 1))})


def _by_hand(values):
  """Mean, ci95 and median of the finite values, with `statistics`."""
  finite = [float(v) for v in values if math.isfinite(v)]
  return (statistics.fmean(finite),
          1.96 * statistics.stdev(finite) / math.sqrt(len(finite)),
          statistics.median(finite))


def test_the_diverging_task_is_counted_not_averaged(curves, caplog):
  first_bad = int(np.argmax(~np.isfinite(curves[0])))
  assert 1 < first_bad < NUM_INNER_STEPS  # The fixture does what it says.
  assert np.all(np.isfinite(curves[1:]))
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # No numpy RuntimeWarning either.
    with caplog.at_level(logging.WARNING):
      report = actions.evaluation_report('mse', curves, train_step=5)
  for k in range(NUM_INNER_STEPS + 1):
    step = report['inner_steps'][str(k)]
    mean, ci95, median = _by_hand(curves[:, k])
    assert step['mean'] == pytest.approx(mean, rel=1e-9)
    assert step['ci95'] == pytest.approx(ci95, rel=1e-9)
    assert step['median'] == pytest.approx(median, rel=1e-9)
    assert step['nonfinite'] == (1 if k >= first_bad else 0)
    # Task 0's loss grew until it overflowed; the others' fell.
    assert step['diverged'] == (1 if 0 < k < first_bad else 0)

  lines = [r.getMessage() for r in caplog.records
           if 'NaN or Inf' in r.getMessage()]
  assert lines == [
      f'few-shot evaluation: mse is NaN or Inf for 1 of 8 held-out tasks '
      f'after {first_bad} to {NUM_INNER_STEPS} inner steps; mean, ci95 and median '
      'are over the finite tasks']

  table = actions.format_table(report)
  assert table.splitlines()[1].split()[-3:] == ['median', 'nonfinite',
                                                'diverged']
  # The row of the last inner step (lines after the table, if any, say
  # which means a few tasks dominate).
  last = table.splitlines()[2 + NUM_INNER_STEPS].split()  # Rows: steps 0, 1, ...
  assert last[0] == str(NUM_INNER_STEPS) and last[-2:] == ['1', '0']
  scalars = actions.evaluation_scalars('mse', curves)
  assert scalars[f'eval/mse_step{NUM_INNER_STEPS}_nonfinite'] == 1
  assert scalars['eval/mse_step1_diverged'] == 1
  assert scalars[f'eval/mse_step{NUM_INNER_STEPS}_median'] == pytest.approx(
      _by_hand(curves[:, NUM_INNER_STEPS])[2])


def _strict_json(path):
  def refuse(constant):
    raise ValueError(f'bare {constant} in {path}')
  with open(path) as f:
    return json.load(f, parse_constant=refuse)


def test_a_step_with_no_finite_task_is_written_as_null(tmp_path):
  curves = np.array([[1.0, np.nan, 0.5, np.nan], [2.0, np.inf, 0.25, np.nan],
                     [1.5, np.nan, np.nan, 0.7]])
  report = actions.evaluation_report('mse', curves, train_step=1)
  path = actions.write_evaluation_report(str(tmp_path), report)
  steps = _strict_json(path)['inner_steps']
  assert steps['1'] == {'mean': None, 'ci95': None, 'median': None,
                        'nonfinite': 3, 'diverged': 0}
  # Two finite tasks left: a mean, a ci95 of the two, no bare NaN.
  assert steps['2']['mean'] == pytest.approx(0.375)
  assert steps['2']['ci95'] == pytest.approx(
      1.96 * statistics.stdev([0.5, 0.25]) / math.sqrt(2))
  assert steps['2']['nonfinite'] == 1
  assert steps['3'] == {'mean': 0.7, 'ci95': None, 'median': 0.7,
                        'nonfinite': 2, 'diverged': 0}  # 0.7 < 1.5
  assert 'nan' in actions.format_table(report).splitlines()[3]


def test_for_accuracy_diverged_counts_tasks_whose_accuracy_fell():
  curves = np.array([[0.4, 0.6], [0.8, 0.2], [0.5, 0.5], [0.6, 0.4]])
  assert evaluation.summarize(curves, 'accuracy')[1].diverged == 2
  assert evaluation.summarize(curves, 'mse')[1].diverged == 1
  summary = evaluation.summarize(curves, 'accuracy')[1]
  assert summary.median == pytest.approx(statistics.median(curves[:, 1]))
  assert summary.nonfinite == 0


def test_accuracy_of_a_task_whose_loss_diverged_is_counted_non_finite():
  """Argmax of NaN logits is class 0: without the loss check a diverged
  task would read as a plausible accuracy."""
  ev = evaluation

  def logits(params, batch):
    return batch['x'] * params['w']  # [examples, classes]

  def loss_fn(params, batch):
    lp = jax.nn.log_softmax(logits(params, batch))
    return -jnp.mean(jnp.take_along_axis(lp, batch['y'][:, None], 1))

  def accuracy(params, batch):
    return jnp.mean(jnp.argmax(logits(params, batch), -1) == batch['y'])

  x = np.ones((3, 4, 2), np.float32)
  x[1, 0, 0] = np.nan          # task 1 has a NaN input
  tasks = {'support': {'x': x, 'y': np.zeros((3, 4), np.int32)},
           'query': {'x': x, 'y': np.zeros((3, 4), np.int32)}}
  curves = np.asarray(ev.adaptation_curves(
      loss_fn, {'w': jnp.ones((2,))}, tasks, inner_lr=0.1, num_inner_steps=1,
      metric_fn=accuracy))
  assert np.isnan(curves[1]).all()
  assert np.isfinite(curves[[0, 2]]).all()
  assert ev.summarize(np.asarray(curves), metric='accuracy')[0].nonfinite == 1


def test_a_run_whose_evaluation_diverges_reports_counts_and_medians(
    tmp_path, caplog):
  """The trainer end to end, warnings as errors: at inner_lr=0.05 the
  untrained MLP's 10-step SGD overflows on some held-out tasks. Each
  evaluation (the periodic one and the final one) logs ONE line naming the
  inner-step counts and how many tasks; evaluation.json, the printed table
  and TensorBoard carry the same median and non-finite count; nothing is a
  bare NaN and numpy never warns. Pins: a NaN averaged into the mean, the
  count or median missing from TensorBoard or the table, a numpy
  RuntimeWarning (e.g. subtracting Inf) reaching the user."""
  from configs import maml_sine  # pylint: disable=g-import-not-at-top
  from maml_plugin import train  # pylint: disable=g-import-not-at-top
  from tests import event_files  # pylint: disable=g-import-not-at-top
  config = maml_sine.get_config('maml,quick')
  config.inner_lr = 0.05
  config.num_eval_tasks = 20
  config.num_plot_tasks = 1  # The figure draws a diverged fit too.
  for field in ('num_train_steps', 'steps_per_call', 'log_every_steps',
                'eval_every_steps', 'checkpoint_every_steps'):
    config[field] = 10
  workdir = str(tmp_path)
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    # Libraries' deprecations are not the user's business (setup.cfg).
    warnings.simplefilter('ignore', DeprecationWarning)
    with caplog.at_level(logging.INFO):
      train.train_and_evaluate(config, workdir)
  report = _strict_json(os.path.join(workdir, 'evaluation.json'))
  last = report['inner_steps']['10']
  assert 0 < last['nonfinite'] < config.num_eval_tasks
  assert last['median'] is not None and math.isfinite(last['median'])
  assert last['mean'] is not None and math.isfinite(last['mean'])
  assert report['inner_steps']['0']['nonfinite'] == 0

  lines = [r.getMessage() for r in caplog.records
           if 'NaN or Inf' in r.getMessage()]
  assert len(lines) == 2  # The evaluation at step 10, then the final one.
  assert lines[0] == lines[1]
  assert lines[0].startswith('few-shot evaluation: mse is NaN or Inf for ')
  assert f'of {config.num_eval_tasks} held-out tasks after ' in lines[0]
  assert '\n' not in lines[0]
  assert f'{last["nonfinite"]} of {config.num_eval_tasks}' in lines[0]

  tables = [r.getMessage() for r in caplog.records
            if r.getMessage().startswith('Evaluation:')]
  # 'Evaluation:', the title, the header, then one row per step 0..10.
  row = tables[-1].splitlines()[3 + 10].split()
  assert row[0] == '10' and row[-2] == str(last['nonfinite'])
  assert float(row[3]) == pytest.approx(last['median'], abs=1e-4)

  scalars = event_files.read_scalars(workdir)
  for name in ('median', 'nonfinite', 'diverged'):
    (value,) = scalars[(f'eval/mse_step10_{name}', 10)]
    assert float(value) == pytest.approx(last[name], rel=1e-5)


@pytest.mark.parametrize('family', ['sinusoid', 'episodic'])
def test_evaluation_refuses_targets_of_another_shape(family):
  """Held-out targets with the trailing axis dropped (or added, for
  labels) have as many values as the predictions but broadcast to
  another loss and metric: the evaluator of a shipped task family's loss
  and metric must refuse them in one line naming both shapes when it is
  traced, never report a number. Pins the task families' loss and metric
  going through the shape-checked `losses` (a bare ``argmax == y`` for
  accuracy compared [5] with [5, 1] as [5, 5])."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from maml_plugin import nnx_bridge  # pylint: disable=g-import-not-at-top
  from maml_plugin.models import MLP  # pylint: disable=g-import-not-at-top
  from maml_plugin.tasks import episodic  # pylint: disable=g-import-not-at-top
  from maml_plugin.tasks import sinusoid  # pylint: disable=g-import-not-at-top
  x = np.zeros((3, 5, 1), np.float32)
  if family == 'sinusoid':
    model = nnx_bridge.NNXModel(MLP(1, (4,), 1, rngs=nnx.Rngs(0)))
    loss, metric = sinusoid.mse_loss, sinusoid.mse_loss
    y = np.zeros((3, 5), np.float32)               # predictions [5, 1]
    expected = ('mse: targets of shape (5,) against predictions of shape '
                '(5, 1) would broadcast')
  else:
    model = nnx_bridge.NNXModel(MLP(1, (4,), 2, rngs=nnx.Rngs(0)))
    loss, metric = episodic.cross_entropy, episodic.accuracy
    y = np.zeros((3, 5, 1), np.int32)              # logits [5, 2]
    expected = ('labels of shape (5, 1) against logits of shape (5, 2): '
                'expected labels of shape (5,)')
  tasks = {'support': {'x': x, 'y': y}, 'query': {'x': x, 'y': y}}
  for loss_fn, metric_fn in ((loss, metric), (metric, metric)):
    evaluator = evaluation.FewShotEvaluator(
        model.eval_loss(loss_fn), tasks, inner_lr=0.1, num_inner_steps=1,
        metric='mse' if family == 'sinusoid' else 'accuracy',
        metric_fn=model.eval_loss(metric_fn))
    with pytest.raises(ValueError) as err:
      evaluator(model.params)
    assert expected in str(err.value) and '\n' not in str(err.value)


def test_max_steps_is_the_deprecated_name_of_num_inner_steps():
  """One name for the inner-step count (`num_inner_steps`, as in configs);
  the former `max_steps` still works, with a DeprecationWarning, and gives
  the same curves."""
  loss_fn = lambda p, batch: jnp.mean((batch['x'] @ p['w'] - batch['y'])**2)
  x = jnp.ones((3, 4, 2))
  tasks = {'support': {'x': x, 'y': jnp.zeros((3, 4))},
           'query': {'x': x, 'y': jnp.ones((3, 4))}}
  params = {'w': jnp.ones((2,))}
  new = evaluation.adaptation_curves(loss_fn, params, tasks, inner_lr=0.1,
                                     num_inner_steps=2)
  with pytest.warns(DeprecationWarning, match='max_steps is now '
                    'num_inner_steps'):
    old = evaluation.FewShotEvaluator(loss_fn, tasks, inner_lr=0.1,
                                      max_steps=2)
  assert old.num_inner_steps == 2
  np.testing.assert_array_equal(np.asarray(old(params)), np.asarray(new))
