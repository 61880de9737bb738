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


@pytest.mark.parametrize('entry', ['sgd_step', 'adapt'])
def test_inner_steps_are_second_order_unless_asked(entry):
  """Pins the default `first_order=False` of `sgd_step` and `adapt`: the
  gradient through one step called without `first_order` is the analytic
  (I - aH) dL_q, not the first-order dL_q (a default flipped to True fails
  here)."""
  batch = _quadratic_meta_batch(num_tasks=1)
  task = jax.tree.map(lambda a: a[0], batch)
  theta = jnp.array([1.0, 2.0, -0.5, 0.25])
  alpha = 0.05
  step = getattr(core, entry)

  def query_after(theta):
    adapted = step(quadratic_loss, {'theta': theta}, task['support'],
                   inner_lr=alpha)
    return quadratic_loss(adapted, task['query'])

  a, b = task['support']['A'], task['support']['b']
  c, d = task['query']['A'], task['query']['b']
  query_grad = c @ (theta - alpha * (a @ theta - b)) - d
  np.testing.assert_allclose(jax.grad(query_after)(theta),
                             (jnp.eye(4) - alpha * a) @ query_grad,
                             rtol=1e-13)


def test_a_zero_d_array_rate_is_a_scalar_rate():
  """A rate given as a 0-d array (a traced or learned scalar) scales every
  leaf like the same Python float (pins the `ndim == 0` test of the rate's
  shape: a wrong rank sends it to the per-leaf branch, which fails on the
  tree's structure)."""
  loss_fn, params, batch = _mlp_problem()
  support = jax.tree.map(lambda a: a[0], batch['support'])
  as_float = core.sgd_step(loss_fn, params, support, inner_lr=0.3)
  as_array = core.sgd_step(loss_fn, params, support,
                           inner_lr=jnp.asarray(0.3, jnp.float64))
  for a, b in zip(jax.tree.leaves(as_float), jax.tree.leaves(as_array)):
    np.testing.assert_allclose(a, b, rtol=1e-15)


def test_mean_over_tasks_averages_floats_and_keeps_the_first_tasks_integers():
  """Float leaves are averaged over the task axis; integer leaves (counters)
  come from task 0, as documented (pins the index of `jnp.take`)."""
  tree = {'f': jnp.array([[1.0, 2.0], [3.0, 6.0], [5.0, 7.0]]),
          'i': jnp.array([[7], [8], [9]], jnp.int32), 'none': None}
  got = core.mean_over_tasks(tree)
  np.testing.assert_allclose(got['f'], [3.0, 5.0])
  np.testing.assert_array_equal(got['i'], [7])
  assert got['none'] is None
  np.testing.assert_allclose(core.mean_over_tasks(tree, axis=1)['f'],
                             [1.5, 4.5, 6.0])


def test_calling_a_stateful_loss_passes_its_arguments_in_order():
  """`StatefulLoss(fn)(params, state, batch, rng)` calls fn with the same
  arguments in the same order (pins `__call__`)."""
  seen = []

  def fn(params, model_state, batch, rng):
    seen.append((params, model_state, batch, rng))
    return 0.0, model_state

  loss = core.StatefulLoss(fn)
  assert loss('p', 's', 'b', 'r') == (0.0, 's')
  assert seen == [('p', 's', 'b', 'r')]


def _metric(params, batch):
  return jnp.sum((params['theta'] - batch['b']) ** 2)


@pytest.mark.parametrize('stateful', [False, True])
def test_metric_before_and_after_are_the_metric_at_theta_and_after_adapting(
    stateful):
  """`query_metric_before` / `query_loss_before` are the task means of
  `metric_fn` / the loss at θ, and the `_after` ones at the adapted params,
  each computed here by hand (pins which value goes where, and the metric's
  own output index for a `StatefulLoss` metric)."""
  batch = _quadratic_meta_batch(num_tasks=3)
  theta = jnp.array([0.3, -1.0, 2.0, 0.5])
  alpha, scale = 0.1, 2.0
  if stateful:
    state = {'scale': jnp.asarray(scale)}
    loss_fn = core.StatefulLoss(
        lambda p, s, b, r: (s['scale'] * quadratic_loss(p, b), s))
    metric_fn = core.StatefulLoss(
        lambda p, s, b, r: (s['scale'] * _metric(p, b), s))
  else:
    state, scale = None, 1.0
    loss_fn, metric_fn = quadratic_loss, _metric
  _, aux = core.maml_loss_and_aux(
      loss_fn, {'theta': theta}, batch, inner_lr=alpha, metric_fn=metric_fn,
      model_state=state)
  before, after, loss_before, loss_after = [], [], [], []
  for t in range(3):
    a, b = batch['support']['A'][t], batch['support']['b'][t]
    query = {'A': batch['query']['A'][t], 'b': batch['query']['b'][t]}
    adapted = theta - alpha * scale * (a @ theta - b)
    before.append(scale * _metric({'theta': theta}, query))
    after.append(scale * _metric({'theta': adapted}, query))
    loss_before.append(scale * quadratic_loss({'theta': theta}, query))
    loss_after.append(scale * quadratic_loss({'theta': adapted}, query))
  np.testing.assert_allclose(aux.query_metric_before, np.mean(before),
                             rtol=1e-13)
  np.testing.assert_allclose(aux.query_metric_after, np.mean(after),
                             rtol=1e-13)
  np.testing.assert_allclose(aux.query_loss_before, np.mean(loss_before),
                             rtol=1e-13)
  np.testing.assert_allclose(aux.query_loss_after, np.mean(loss_after),
                             rtol=1e-13)
  assert abs(np.mean(before) - np.mean(after)) > 1e-3
  assert abs(np.mean(loss_before) - np.mean(loss_after)) > 1e-3


def test_one_step_key_is_split_into_the_per_task_keys():
  """`maml_loss_and_aux(rng=key)` with ONE key equals passing
  `task_keys(key, num_tasks)`, the documented split (pins the split's
  arguments), and the loss depends on the key."""
  batch = _quadratic_meta_batch(num_tasks=3)
  params = {'theta': jnp.array([0.3, -1.0, 2.0, 0.5])}
  loss_fn = core.StatefulLoss(lambda p, s, b, r: (
      quadratic_loss(p, b) + jnp.sum(p['theta']) * jax.random.uniform(r), s))
  key = jax.random.key(3)
  run = functools.partial(core.maml_loss_and_aux, loss_fn, params, batch,
                          inner_lr=0.1, model_state=())
  one_key, _ = run(rng=key)
  per_task, _ = run(rng=core.task_keys(key, 3))
  np.testing.assert_allclose(one_key, per_task, rtol=1e-14)
  other, _ = run(rng=jax.random.key(4))
  assert abs(float(other - one_key)) > 1e-6


@pytest.mark.parametrize('entry', ['adapt', 'maml_loss', 'maml_loss_and_aux'])
def test_inner_steps_are_rematerialized_only_when_asked(entry):
  """`remat=False` by default (remat trades time for memory): the default
  gradient program has no `jax.checkpoint` equation, ``remat=True``'s has
  (pins each entry point's default)."""
  loss_fn, params, batch = _mlp_problem()
  data = (jax.tree.map(lambda a: a[0], batch['support']) if entry == 'adapt'
          else batch)

  def program(**extra):
    fn = functools.partial(getattr(core, entry), loss_fn, inner_lr=0.01,
                           num_steps=2, **extra)
    scalar = lambda p: sum(jnp.sum(x) for x in jax.tree.leaves(fn(p, data)))
    text = str(jax.make_jaxpr(jax.grad(scalar))(params))
    return 'checkpoint[' in text or 'remat' in text

  assert not program()
  assert program(remat=True)
