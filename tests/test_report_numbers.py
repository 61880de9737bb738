"""The numbers of the evaluation report against independent computations.

The adaptation curves are recomputed here with NumPy in float64 (SGD on a
linear least-squares model, gradient written out by hand); the report's
mean, ci95 and median with SciPy on the same per-task values.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

import maml_plugin
from maml_plugin import actions
from maml_plugin import core
from maml_plugin import evaluation
from maml_plugin import losses
from maml_plugin.tasks import sinusoid

NUM_TASKS, NUM_INNER_STEPS, INNER_LR = 6, 3, 0.1


def _loss(p, batch):
  return losses.mse(batch['x'] @ p['w'] + p['b'], batch['y'])


def _tasks():
  rng = np.random.default_rng(7)
  slope = rng.uniform(-2, 2, size=(NUM_TASKS, 1, 1))
  part = lambda n: rng.uniform(-1, 1, size=(NUM_TASKS, n, 1))
  x_s, x_q = part(5), part(7)
  return {'support': {'x': x_s, 'y': slope * x_s + 0.3},
          'query': {'x': x_q, 'y': slope * x_q + 0.3}}


PARAMS = {'w': np.array([[0.4]]), 'b': np.array([-0.1])}


def _curves_by_hand(tasks, scale=1.0):
  """Query loss after 0..NUM_INNER_STEPS SGD steps on the support loss, per task,
  for the loss `scale` * MSE: d/dw mean((xw + b - y)^2) =
  2 mean(x (xw + b - y)), d/db = 2 mean(.)."""
  out = np.zeros((NUM_TASKS, NUM_INNER_STEPS + 1))
  lr = INNER_LR * scale
  for t in range(NUM_TASKS):
    w, b = PARAMS['w'][0, 0], PARAMS['b'][0]
    xs, ys = tasks['support']['x'][t, :, 0], tasks['support']['y'][t, :, 0]
    xq, yq = tasks['query']['x'][t, :, 0], tasks['query']['y'][t, :, 0]
    for k in range(NUM_INNER_STEPS + 1):
      out[t, k] = scale * np.mean((xq * w + b - yq) ** 2)
      r = xs * w + b - ys
      w, b = w - lr * 2 * np.mean(xs * r), b - lr * 2 * np.mean(r)
  return out


@pytest.mark.parametrize('task_batch_size', [None, 2])
def test_adaptation_curves_equal_sgd_by_hand(x64, task_batch_size):
  """Pins: evaluating on the support set instead of the query set, one
  inner step too many or too few at each point of the curve, a wrong sign
  or rate in the inner step, and task batches that drop or repeat tasks."""
  del x64
  tasks = _tasks()
  evaluator = evaluation.FewShotEvaluator(
      _loss, tasks, inner_lr=INNER_LR, num_inner_steps=NUM_INNER_STEPS,
      task_batch_size=task_batch_size)
  curves = evaluator(jax.tree.map(jnp.asarray, PARAMS))
  assert curves.shape == (NUM_TASKS, NUM_INNER_STEPS + 1)
  np.testing.assert_allclose(curves, _curves_by_hand(tasks), rtol=1e-10)


def test_the_evaluator_adapts_with_its_own_loss_not_the_training_loss(x64):
  """Pins ``FewShotEvaluator(inner_loop_for=algorithm.eval_inner_loop)``
  (what the trainer passes): the inner loop adapts on the evaluator's loss
  (a model's evaluation loss, e.g. dropout off), not on the algorithm's
  training loss; the arguments of ``inner_loop_for`` swapped fall back to
  the training loss. Here the evaluation loss is twice the training loss,
  so SGD on it takes twice the step."""
  del x64
  tasks = _tasks()
  algorithm = maml_plugin.make_algorithm(
      'maml', loss_fn=_loss, tx=optax.sgd(0.1), inner_lr=INNER_LR,
      num_inner_steps=1)
  evaluator = evaluation.FewShotEvaluator(
      lambda p, batch: 2.0 * _loss(p, batch), tasks,
      num_inner_steps=NUM_INNER_STEPS,
      inner_loop_for=algorithm.eval_inner_loop)
  np.testing.assert_allclose(evaluator(jax.tree.map(jnp.asarray, PARAMS)),
                             _curves_by_hand(tasks, scale=2.0), rtol=1e-10)


def test_adapted_params_at_are_the_sgd_iterates_by_hand(x64):
  """Pins: `adapted_params_at` (the figure's fits) returning another step's
  params, or skipping step 0."""
  del x64
  tasks = _tasks()
  support = jax.tree.map(lambda a: a[0], tasks['support'])
  got = evaluation.adapted_params_at(_loss, jax.tree.map(jnp.asarray,
                                                          PARAMS),
                                     support, inner_lr=INNER_LR,
                                     steps=(0, 2))
  xs, ys = support['x'][:, 0], support['y'][:, 0]
  w, b = PARAMS['w'][0, 0], PARAMS['b'][0]
  expected = [(w, b)]
  for _ in range(2):
    r = xs * w + b - ys
    w, b = w - INNER_LR * 2 * np.mean(xs * r), b - INNER_LR * 2 * np.mean(r)
  expected.append((w, b))
  assert len(got) == 2
  for p, (w, b) in zip(got, expected):
    np.testing.assert_allclose(p['w'][0, 0], w, rtol=1e-10)
    np.testing.assert_allclose(p['b'][0], b, rtol=1e-10)
  # Step 0 only when asked for (``and`` -> ``or`` adds it to every list).
  (only,) = evaluation.adapted_params_at(
      _loss, jax.tree.map(jnp.asarray, PARAMS), support, inner_lr=INNER_LR,
      steps=(2,))
  np.testing.assert_allclose(only['w'][0, 0], expected[1][0], rtol=1e-10)


def test_the_loss_after_k_steps_is_the_inner_loops_loss_at_k(x64):
  """Pins the step index handed to ``InnerLoop.loss_at`` (MAML++ measures
  with step k's batch-norm statistics): after k inner steps the curve uses
  ``loss_at(loss_fn, k)``, not k + 1 or k - 1. The loss at step k is the
  plain query MSE plus 1000 k, so each column shows the k it was given."""
  del x64
  tasks = _tasks()
  loop = core.sgd_inner_loop(_loss, INNER_LR)._replace(
      loss_at=lambda fn, k: lambda p, batch: fn(p, batch) + 1000.0 * k)
  curves = evaluation.adaptation_curves(
      _loss, jax.tree.map(jnp.asarray, PARAMS), tasks,
      num_inner_steps=NUM_INNER_STEPS,
      inner_loop=loop)
  np.testing.assert_allclose(
      curves, _curves_by_hand(tasks) + 1000.0 * np.arange(NUM_INNER_STEPS + 1),
      rtol=1e-10)


CURVES = np.array([[2.0, 1.0, 0.5],
                   [1.0, 1.5, np.nan],
                   [3.0, 0.5, 0.25],
                   [0.5, 0.75, 0.125],
                   [4.0, np.inf, 1.0]])


@pytest.mark.parametrize('metric', ['mse', 'accuracy'])
def test_summary_equals_scipy_on_the_finite_tasks(metric):
  """Pins: ci95 with the population std (ddof=0), without the square root
  of n, with another z than 1.96 (beyond SciPy's 1.95996 by more than
  0.01%), over all tasks instead of the finite ones; the mean or median of
  the wrong column; nonfinite and diverged counts off by one or compared
  with the wrong step (or the wrong direction for accuracy)."""
  summary = evaluation.summarize(CURVES, metric)
  assert sorted(summary) == [0, 1, 2]
  z = stats.norm.ppf(0.975)
  for k in range(CURVES.shape[1]):
    column = CURVES[:, k]
    finite = column[np.isfinite(column)]
    s = summary[k]
    assert s.mean == pytest.approx(np.mean(finite), rel=1e-12)
    assert s.ci95 == pytest.approx(z * stats.sem(finite), rel=1e-4)
    assert s.median == pytest.approx(np.median(finite), rel=1e-12)
    assert s.nonfinite == column.size - finite.size
    both = np.isfinite(column) & np.isfinite(CURVES[:, 0])
    change = column[both] - CURVES[both, 0]
    worse = change < 0 if metric == 'accuracy' else change > 0
    assert s.diverged == int(worse.sum())
  # The cases above, spelled out: step 1 has 4 finite tasks, task 1's loss
  # rose (1.0 -> 1.5) and task 3's (0.5 -> 0.75); for accuracy the other two.
  assert summary[1].nonfinite == 1
  assert summary[1].diverged == 2
  assert summary[2].nonfinite == 1


def test_mean_and_ci95_of_two_values_by_hand():
  """Pins the formula at its smallest case: values 1 and 3 have sample std
  sqrt(2), so ci95 = 1.96 * sqrt(2) / sqrt(2) = 1.96; and `summarize`
  accepting two tasks (a limit of 3 refuses them) but not one."""
  mean, ci95 = evaluation.mean_and_ci95([1.0, 3.0])
  assert mean == 2.0
  assert ci95 == pytest.approx(1.96, rel=1e-12)
  with pytest.raises(ValueError, match='num_tasks=1'):
    evaluation.mean_and_ci95([1.0])
  summary = evaluation.summarize(np.array([[1.0], [3.0]]))
  assert (summary[0].mean, summary[0].ci95) == (2.0, pytest.approx(1.96))
  with pytest.raises(ValueError, match='num_tasks=1'):
    evaluation.summarize(np.array([[1.0]]))


def test_report_carries_the_summary_of_every_step():
  """Pins: the report (evaluation.json) writing another step's summary, or
  a count other than the tasks'."""
  report = actions.evaluation_report('mse', CURVES, train_step=9)
  assert report['num_tasks'] == CURVES.shape[0]
  assert report['train_step'] == 9
  summary = evaluation.summarize(CURVES, 'mse')
  assert list(report['inner_steps']) == ['0', '1', '2']
  for k, s in summary.items():
    assert report['inner_steps'][str(k)] == s._asdict()


def test_the_sinusoid_fits_live_with_the_sinusoid_family():
  """`evaluation` is generic: its former `sinusoid_fits` is a one-line
  error naming the family's function."""
  with pytest.raises(AttributeError) as err:
    evaluation.sinusoid_fits  # pylint: disable=pointless-statement
  assert str(err.value) == ('maml_plugin.evaluation.sinusoid_fits moved to '
                            'maml_plugin.tasks.sinusoid.sinusoid_fits')


def test_figure_fits_are_the_model_after_sgd_by_hand(x64):
  """Pins: the adaptation figure (`sinusoid_fits`) drawing another task's
  fit, another step's params, or the unadapted model for every panel."""
  del x64
  tasks = dict(_tasks(), amplitude=np.linspace(1, 2, NUM_TASKS),
               phase=np.linspace(0, 1, NUM_TASKS))
  panels = sinusoid.sinusoid_fits(
      lambda p, x: x @ p['w'] + p['b'], _loss,
      jax.tree.map(jnp.asarray, PARAMS), tasks, inner_lr=INNER_LR,
      inner_steps=(0, 2), num_tasks=2, grid_size=5)
  for t, panel in enumerate(panels):
    xs, ys = tasks['support']['x'][t, :, 0], tasks['support']['y'][t, :, 0]
    w, b = PARAMS['w'][0, 0], PARAMS['b'][0]
    expected = [panel['x'] * w + b]
    for _ in range(2):
      r = xs * w + b - ys
      w, b = w - INNER_LR * 2 * np.mean(xs * r), b - INNER_LR * 2 * np.mean(r)
    expected.append(panel['x'] * w + b)
    np.testing.assert_allclose(panel['support_x'], xs)
    for got, want in zip(panel['predictions'], expected, strict=True):
      np.testing.assert_allclose(got, want, rtol=1e-10)
