"""MAML++'s train step against independent computations, float64."""

import re

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from maml_plugin import core
from maml_plugin import evaluation
from maml_plugin import algorithms
from maml_plugin.algorithms import mamlpp
from maml_plugin.algorithms import reptile
from maml_plugin.models import MLP
from maml_plugin.tasks import SinusoidTasks
from tests.helpers import TOL
from tests.helpers import close as _close
from tests.helpers import problem as _problem
from tests.helpers import task as _task

pytestmark = pytest.mark.usefixtures('x64')


@pytest.mark.parametrize('first_order', [False, True])
def test_mamlpp_with_fixed_rates_and_msl_off_is_maml(first_order):
  loss_fn, params, batch = _problem()
  meta = mamlpp.mamlpp_params(params, inner_lr=0.05, num_inner_steps=3)
  grads = jax.grad(lambda p: mamlpp.mamlpp_loss_and_aux(
      loss_fn, p, batch, step=0, num_inner_steps=3, msl_anneal_steps=0,
      learn_inner_lr=False, first_order=first_order)[0])(meta)
  expected = jax.grad(core.maml_loss, argnums=1)(
      loss_fn, params, batch, inner_lr=0.05, num_steps=3,
      first_order=first_order)
  _close(grads['model'], expected)
  for g in jax.tree.leaves(grads['inner_lr']):
    np.testing.assert_array_equal(g, 0.0)


def test_mamlpp_reports_the_query_metric_before_and_after_as_maml_does():
  loss_fn, params, batch = _problem()

  def metric_fn(p, b):  # Any scalar of the params and a batch.
    return jnp.mean(jnp.abs(loss_fn(p, b) - b['y']))

  meta = mamlpp.mamlpp_params(params, inner_lr=0.05, num_inner_steps=3)
  _, aux = mamlpp.mamlpp_loss_and_aux(
      loss_fn, meta, batch, step=0, num_inner_steps=3, msl_anneal_steps=0,
      learn_inner_lr=False, first_order=False, metric_fn=metric_fn)
  _, expected = core.maml_loss_and_aux(
      loss_fn, params, batch, inner_lr=0.05, num_steps=3,
      metric_fn=metric_fn)
  _close(aux, expected)
  assert aux.query_metric_after is not None
  assert abs(float(aux.query_metric_after - aux.query_metric_before)) > 1e-6


def test_mamlpp_learned_per_step_rates_match_finite_differences():
  loss_fn, params, batch = _problem()
  meta = mamlpp.mamlpp_params(params, inner_lr=0.05, num_inner_steps=2)

  @jax.jit
  def objective(m):
    return mamlpp.mamlpp_loss_and_aux(
        loss_fn, m, batch, step=3, num_inner_steps=2, msl_anneal_steps=10,
        learn_inner_lr=True, first_order=False)[0]

  g = jax.grad(objective)(meta)['inner_lr']
  g_flat, _ = jax.flatten_util.ravel_pytree(g)
  r_flat, unravel = jax.flatten_util.ravel_pytree(meta['inner_lr'])
  v = jax.random.normal(jax.random.key(0), r_flat.shape, jnp.float64)
  h = 1e-6
  fd = (objective({'model': params, 'inner_lr': unravel(r_flat + h * v)})
        - objective({'model': params, 'inner_lr': unravel(r_flat - h * v)})
        ) / (2 * h)
  np.testing.assert_allclose(float(g_flat @ v), float(fd), rtol=1e-6)


@pytest.mark.parametrize('first_order', [False, True])
def test_mamlpp_uniform_msl_is_the_mean_of_maml_losses_over_steps(
    first_order):
  """``msl_anneal_steps=None`` with fixed rates: the meta-loss and its
  gradient are the mean over k = 1..3 of MAML's k-step loss, at any
  meta-step. Pins: uniform weights that still anneal, or weights that do
  not sum to one."""
  loss_fn, params, batch = _problem()
  meta = mamlpp.mamlpp_params(params, inner_lr=0.05, num_inner_steps=3)

  def mamlpp_loss(p, step):
    return mamlpp.mamlpp_loss_and_aux(
        loss_fn, p, batch, step=step, num_inner_steps=3,
        msl_anneal_steps=None, learn_inner_lr=False,
        first_order=first_order)[0]

  def by_hand(p):
    return sum(core.maml_loss(loss_fn, p, batch, inner_lr=0.05, num_steps=k,
                              first_order=first_order)
               for k in (1, 2, 3)) / 3

  for step in (0, 10**6):
    np.testing.assert_allclose(float(mamlpp_loss(meta, step)),
                               float(by_hand(params)), rtol=1e-12)
    _close(jax.grad(mamlpp_loss)(meta, step)['model'],
           jax.grad(by_hand)(params))


def test_msl_weights_start_uniform_and_anneal_to_the_final_step():
  np.testing.assert_allclose(mamlpp.msl_weights(0, 4, 100), [0.25] * 4)
  w = mamlpp.msl_weights(100, 4, 100)
  np.testing.assert_allclose(w[:3], [0.03 / 4] * 3)
  np.testing.assert_allclose(w[3], 1 - 3 * 0.03 / 4)
  for t in (0, 37, 100, 10_000):
    np.testing.assert_allclose(float(jnp.sum(mamlpp.msl_weights(t, 4, 100))),
                               1.0)
  np.testing.assert_array_equal(mamlpp.msl_weights(5, 4, 0), [0, 0, 0, 1])
  for t in (0, 10**9):
    np.testing.assert_allclose(mamlpp.msl_weights(t, 4, None), [0.25] * 4)


def test_mamlpp_is_first_order_until_first_order_steps_then_second():
  loss_fn, params, batch = _problem()
  tx = optax.sgd(1.0)
  algorithm = algorithms.make_algorithm(
      'mamlpp', loss_fn=loss_fn, tx=tx, inner_lr=0.05, num_inner_steps=2,
      learn_inner_lr=False, first_order_steps=5)
  state = algorithms.MetaTrainState.create(algorithm.init_params(params), tx)
  step = jax.jit(algorithm.train_step)
  for at, first_order in ((4, True), (5, False)):
    s = state.replace(step=jnp.int32(at))
    new, _ = step(s, batch, jax.random.key(0))
    grads = jax.tree.map(lambda a, b: a - b, params, new.params['model'])
    expected = jax.grad(core.maml_loss, argnums=1)(
        loss_fn, params, batch, inner_lr=0.05, num_steps=2,
        first_order=first_order)
    _close(grads, expected)


def test_mamlpp_evaluation_past_training_steps_reuses_the_last_rate():
  loss_fn, params, batch = _problem()
  algorithm = algorithms.make_algorithm(
      'mamlpp', loss_fn=loss_fn, tx=optax.sgd(1.0), inner_lr=0.05,
      num_inner_steps=2)
  meta = algorithm.init_params(params)
  meta['inner_lr'] = jax.tree.map(
      lambda r: jnp.array([0.03, 0.07], r.dtype), meta['inner_lr'])
  curves = evaluation.adaptation_curves(
      loss_fn, meta, batch, num_inner_steps=4, inner_loop=algorithm.inner_loop)
  task = _task(batch, 1)
  p, expected = params, []
  for rate in (0.03, 0.07, 0.07, 0.07):
    p = core.sgd_step(loss_fn, p, task['support'], inner_lr=rate)
    expected.append(loss_fn(p, task['query']))
  np.testing.assert_allclose(curves[1, 1:], expected, **TOL)


def test_unrolled_inner_steps_give_the_looped_update():
  """`unroll_inner_steps` compiles the inner steps without a loop: the same
  two meta-steps (learned rates, uniform MSL, float64) as the loop, and the
  flag reaches the scan (its jaxpr says unroll=N, N the steps)."""
  loss_fn, params, batch = _problem()
  updates, jaxprs = [], []
  tx = optax.adam(1e-2)
  for unroll in (False, True):
    algorithm = algorithms.make_algorithm(
        'mamlpp', loss_fn=loss_fn, tx=tx, inner_lr=0.05,
        num_inner_steps=3, msl_anneal_steps=None, unroll_inner_steps=unroll)
    state = algorithms.MetaTrainState.create(algorithm.init_params(params),
                                             tx)
    step = jax.jit(algorithm.train_step)
    for i in range(2):
      state, _ = step(state, batch, jax.random.key(i))
    updates.append(state.params)
    jaxprs.append(str(jax.make_jaxpr(algorithm.train_step)(
        state, batch, jax.random.key(0))))
  _close(updates[1], updates[0])
  assert not any(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(updates[0]['model']), jax.tree.leaves(params)))
  assert re.search(r'unroll=3\b', jaxprs[1]) and not re.search(
      r'unroll=3\b', jaxprs[0])
