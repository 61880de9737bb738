"""Meta-SGD's train step against independent computations, float64."""

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


def test_metasgd_rate_gradient_matches_finite_differences():
  loss_fn, params, batch = _problem()
  algorithm = algorithms.make_algorithm(
      'metasgd', loss_fn=loss_fn, tx=optax.sgd(1.0), inner_lr=0.05,
      num_inner_steps=2)
  meta = algorithm.init_params(params)
  # Distinct rates per entry, so a bug mixing entries up would show.
  flat, unravel = jax.flatten_util.ravel_pytree(meta['inner_lr'])
  rates = unravel(0.05 + 0.02 * jax.random.uniform(
      jax.random.key(3), flat.shape, jnp.float64))

  @jax.jit
  def objective(r):
    return core.maml_loss(loss_fn, params, batch, inner_lr=r, num_steps=2)

  # The train step's gradient (sgd(1): update = -grad) w.r.t. the rates.
  state = algorithms.MetaTrainState.create(
      {'model': params, 'inner_lr': rates}, optax.sgd(1.0))
  new_state, _ = algorithm.train_step(state, batch, jax.random.key(0))
  grad = jax.tree.map(lambda a, b: a - b, state.params['inner_lr'],
                      new_state.params['inner_lr'])
  g_flat, _ = jax.flatten_util.ravel_pytree(grad)
  assert float(jnp.max(jnp.abs(g_flat))) > 1e-6  # The rates do learn.

  r_flat, unravel_r = jax.flatten_util.ravel_pytree(rates)
  for seed in range(3):
    v = jax.random.normal(jax.random.key(10 + seed), r_flat.shape,
                          jnp.float64)
    h = 1e-6
    fd = (objective(unravel_r(r_flat + h * v))
          - objective(unravel_r(r_flat - h * v))) / (2 * h)
    np.testing.assert_allclose(float(g_flat @ v), float(fd), rtol=1e-6)


@pytest.mark.parametrize('msl_anneal_steps, step, weights', [
    (None, 0, (1 / 3, 1 / 3, 1 / 3)),  # uniform
    (10, 4, (0.2, 0.2, 0.6)),  # 40% annealed: non-final (1 - 0.4) / 3
    (10, 50, (0.01, 0.01, 0.98)),  # annealed: the floor, 0.03 / 3
])
def test_metasgd_multi_step_loss_gradient_matches_a_plain_loop(
    msl_anneal_steps, step, weights):
  """Meta-SGD's multi-step loss: the weighted query losses after steps
  1..3 at ONE per-entry rate tree shared by every step; the train step's
  gradient (model and rates) against jax.grad of a plain Python loop."""
  loss_fn, params, batch = _problem()
  algorithm = algorithms.make_algorithm(
      'metasgd', loss_fn=loss_fn, tx=optax.sgd(1.0), inner_lr=0.05,
      num_inner_steps=3, msl_anneal_steps=msl_anneal_steps)
  meta = algorithm.init_params(params)
  flat, unravel = jax.flatten_util.ravel_pytree(meta['inner_lr'])
  rates = unravel(0.05 + 0.02 * jax.random.uniform(
      jax.random.key(3), flat.shape, jnp.float64))
  meta = {'model': params, 'inner_lr': rates}

  def reference(m):
    total = 0.0
    for i in range(3):
      task = _task(batch, i)
      p = m['model']
      for k in range(3):
        g = jax.grad(loss_fn)(p, task['support'])
        p = jax.tree.map(lambda w, d, r: w - r * d, p, g, m['inner_lr'])
        total = total + weights[k] * loss_fn(p, task['query'])
    return total / 3

  state = algorithms.MetaTrainState.create(meta, optax.sgd(1.0))
  state = state.replace(step=jnp.asarray(step, state.step.dtype))
  new_state, _ = algorithm.train_step(state, batch, jax.random.key(0))
  grad = jax.tree.map(lambda a, b: a - b, state.params, new_state.params)
  _close(grad, jax.grad(reference)(meta), rtol=1e-9, atol=1e-12)
  # The rates learn.
  assert float(jnp.max(jnp.abs(jax.flatten_util.ravel_pytree(
      grad['inner_lr'])[0]))) > 1e-6


def test_metasgd_evaluation_adapts_with_the_learned_rates():
  loss_fn, params, batch = _problem()
  algorithm = algorithms.make_algorithm(
      'metasgd', loss_fn=loss_fn, tx=optax.sgd(1.0), inner_lr=0.05)
  meta = algorithm.init_params(params)
  # Rates of zero: adaptation must change nothing.
  frozen = {'model': meta['model'],
            'inner_lr': jax.tree.map(jnp.zeros_like, meta['inner_lr'])}
  curves = evaluation.adaptation_curves(
      loss_fn, frozen, batch, num_inner_steps=3,
      inner_loop=algorithm.inner_loop)
  np.testing.assert_allclose(curves[:, 1:], curves[:, :1].repeat(3, 1), **TOL)
  # Per-entry rates: one step equals an elementwise SGD step.
  rates = jax.tree.map(lambda r, i=iter(range(100)): r * (1 + next(i)),
                       meta['inner_lr'])
  curves = evaluation.adaptation_curves(
      loss_fn, {'model': params, 'inner_lr': rates}, batch, num_inner_steps=1,
      inner_loop=algorithm.inner_loop)
  task = _task(batch, 0)
  stepped = jax.tree.map(lambda p, g, r: p - r * g, params,
                         jax.grad(loss_fn)(params, task['support']), rates)
  np.testing.assert_allclose(curves[0, 1], loss_fn(stepped, task['query']),
                             **TOL)
