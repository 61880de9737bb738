"""Meta-gradients of the pure core against analytic values and finite
differences, in float64."""

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import maml_plugin
from maml_plugin import core
from maml_plugin.models import MLP

pytestmark = pytest.mark.usefixtures('x64')


# A quadratic task loss 1/2 t'At - b't: gradient At - b, Hessian A.
def quadratic_loss(params, batch):
  t = params['theta']
  return 0.5 * t @ batch['A'] @ t - batch['b'] @ t


def _spd(rng, n, num_tasks):
  m = jax.random.normal(rng, (num_tasks, n, n), jnp.float64)
  return jnp.einsum('tij,tkj->tik', m, m) / n + jnp.eye(n)


def _quadratic_meta_batch(n=4, num_tasks=3, seed=0):
  ks = jax.random.split(jax.random.key(seed), 4)
  return {
      'support': {'A': _spd(ks[0], n, num_tasks),
                  'b': jax.random.normal(ks[1], (num_tasks, n), jnp.float64)},
      'query': {'A': _spd(ks[2], n, num_tasks),
                'b': jax.random.normal(ks[3], (num_tasks, n), jnp.float64)},
  }


def _analytic_meta_grad(theta, batch, alpha, num_steps):
  """sum_t (I - aA_t)^N' (C_t theta_N - d_t) / T, the exact MAML gradient."""
  grads = []
  for t in range(batch['support']['A'].shape[0]):
    a, b = np.asarray(batch['support']['A'][t]), np.asarray(
        batch['support']['b'][t])
    c, d = np.asarray(batch['query']['A'][t]), np.asarray(
        batch['query']['b'][t])
    th = np.asarray(theta)
    for _ in range(num_steps):
      th = th - alpha * (a @ th - b)
    jac = np.linalg.matrix_power(np.eye(len(th)) - alpha * a, num_steps)
    grads.append(jac.T @ (c @ th - d))
  return np.mean(grads, axis=0)


@pytest.mark.parametrize('num_steps', [1, 3])
def test_meta_gradient_matches_analytic_for_quadratic(num_steps):
  batch = _quadratic_meta_batch()
  params = {'theta': jnp.array([0.3, -1.0, 2.0, 0.5])}
  alpha = 0.1
  grad = jax.grad(core.maml_loss, argnums=1)(
      quadratic_loss, params, batch, inner_lr=alpha, num_steps=num_steps)
  expected = _analytic_meta_grad(params['theta'], batch, alpha, num_steps)
  np.testing.assert_allclose(grad['theta'], expected, rtol=1e-12, atol=1e-12)


def test_one_step_meta_gradient_is_i_minus_alpha_h_times_query_grad():
  """The issue's formula, written out for a single task: (I - aH) dL_q."""
  batch = _quadratic_meta_batch(num_tasks=1)
  theta = jnp.array([1.0, 2.0, -0.5, 0.25])
  alpha = 0.05
  a, b = batch['support']['A'][0], batch['support']['b'][0]
  c, d = batch['query']['A'][0], batch['query']['b'][0]
  adapted = theta - alpha * (a @ theta - b)
  expected = (jnp.eye(4) - alpha * a) @ (c @ adapted - d)
  grad = jax.grad(core.maml_loss, argnums=1)(
      quadratic_loss, {'theta': theta}, batch, inner_lr=alpha)
  np.testing.assert_allclose(grad['theta'], expected, rtol=1e-13)


def _mlp_problem(seed=0, num_tasks=4, shots=5):
  model = MLP(1, (8, 8), 1, rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model, nnx.Param)
  params = jax.tree.map(lambda p: p.astype(jnp.float64), params)

  def loss_fn(p, batch):
    pred = nnx.merge(graphdef, p)(batch['x'])
    return jnp.mean((pred - batch['y']) ** 2)

  ks = jax.random.split(jax.random.key(seed + 1), 4)
  x_s = jax.random.uniform(ks[0], (num_tasks, shots, 1), jnp.float64, -5, 5)
  x_q = jax.random.uniform(ks[1], (num_tasks, shots, 1), jnp.float64, -5, 5)
  amp = jax.random.uniform(ks[2], (num_tasks, 1, 1), jnp.float64, 0.1, 5)
  ph = jax.random.uniform(ks[3], (num_tasks, 1, 1), jnp.float64, 0, np.pi)
  batch = {'support': {'x': x_s, 'y': amp * jnp.sin(x_s - ph)},
           'query': {'x': x_q, 'y': amp * jnp.sin(x_q - ph)}}
  return loss_fn, params, batch


@pytest.mark.parametrize('num_steps', [1, 3])
def test_meta_gradient_matches_finite_differences_for_mlp(num_steps):
  loss_fn, params, batch = _mlp_problem()
  f = jax.jit(functools.partial(core.maml_loss, loss_fn, meta_batch=batch,
                                inner_lr=0.01, num_steps=num_steps))
  grad = jax.grad(f)(params)
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  g_flat, _ = jax.flatten_util.ravel_pytree(grad)
  eps = 1e-6
  fd = np.array([
      (f(unravel(flat.at[i].add(eps))) - f(unravel(flat.at[i].add(-eps))))
      / (2 * eps) for i in range(flat.shape[0])])
  np.testing.assert_allclose(g_flat, fd, rtol=1e-6, atol=1e-8)


def test_first_order_equals_stop_gradient_and_differs_from_second_order():
  loss_fn, params, batch = _mlp_problem()
  kwargs = dict(inner_lr=0.01, num_steps=3)
  fo = jax.grad(core.maml_loss, argnums=1)(
      loss_fn, params, batch, first_order=True, **kwargs)
  so = jax.grad(core.maml_loss, argnums=1)(loss_fn, params, batch, **kwargs)

  # FOMAML by hand: the query gradient at the adapted params, per task.
  def fomaml_task(task):
    adapted = jax.lax.stop_gradient(core.adapt(
        loss_fn, params, task['support'], **kwargs))
    return jax.grad(loss_fn)(adapted, task['query'])

  by_hand = jax.tree.map(lambda g: g.mean(0), jax.vmap(fomaml_task)(batch))
  for a, b in zip(jax.tree.leaves(fo), jax.tree.leaves(by_hand)):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
  diff = max(float(jnp.max(jnp.abs(a - b)))
             for a, b in zip(jax.tree.leaves(fo), jax.tree.leaves(so)))
  assert diff > 1e-4, 'second-order terms vanished'


def test_inner_step_updates_every_leaf_as_theta_minus_alpha_g():
  loss_fn, params, batch = _mlp_problem()
  support = jax.tree.map(lambda a: a[0], batch['support'])
  g = jax.grad(loss_fn)(params, support)
  adapted = maml_plugin.adapt(loss_fn, params, support, inner_lr=0.3)
  leaves = jax.tree.leaves(params)
  assert len(leaves) == 6
  for p, gi, a in zip(leaves, jax.tree.leaves(g), jax.tree.leaves(adapted)):
    np.testing.assert_allclose(a, p - 0.3 * gi, rtol=1e-14, atol=1e-15)
    assert float(jnp.max(jnp.abs(gi))) > 0


def test_three_steps_equal_three_single_steps():
  loss_fn, params, batch = _mlp_problem()
  support = jax.tree.map(lambda a: a[1], batch['support'])
  p = params
  for _ in range(3):
    p = core.sgd_step(loss_fn, p, support, inner_lr=0.01)
  scanned = core.adapt(loss_fn, params, support, inner_lr=0.01, num_steps=3)
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(scanned)):
    np.testing.assert_allclose(a, b, rtol=1e-13)


def test_maml_loss_is_the_mean_of_per_task_query_losses():
  loss_fn, params, batch = _mlp_problem()
  per_task = []
  for t in range(4):
    task = jax.tree.map(lambda a: a[t], batch)  # pylint: disable=cell-var-from-loop
    adapted = core.adapt(loss_fn, params, task['support'], inner_lr=0.01,
                         num_steps=2)
    per_task.append(loss_fn(adapted, task['query']))
  got = maml_plugin.maml_loss(loss_fn, params, batch, inner_lr=0.01,
                              num_steps=2)
  np.testing.assert_allclose(got, np.mean(per_task), rtol=1e-13)


def test_zero_steps_is_the_unadapted_query_loss():
  loss_fn, params, batch = _mlp_problem()
  loss, aux = core.maml_loss_and_aux(loss_fn, params, batch, inner_lr=0.01,
                                     num_steps=0)
  np.testing.assert_allclose(loss, aux.query_loss_before, rtol=1e-14)


def test_negative_steps_are_refused():
  loss_fn, params, batch = _mlp_problem()
  support = jax.tree.map(lambda a: a[0], batch['support'])
  with pytest.raises(ValueError, match='num_steps=-1'):
    core.adapt(loss_fn, params, support, inner_lr=0.01, num_steps=-1)
