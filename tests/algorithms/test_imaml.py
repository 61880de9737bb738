"""iMAML's meta-gradient against closed forms and unrolled references (float64).

- Quadratic tasks: the proximal minimizer and its Jacobian are known in
  closed form, so the implicit meta-gradient is too.
- An MLP: as inner steps grow, the implicit gradient approaches the exact
  gradient through the unrolled proximal inner loop (computed here with
  `jax.grad` through a `fori_loop`, independently of the package).
- CG's reported residual is the residual of the returned gradient, checked
  against an explicit Hessian, and is below `cg_tol` when CG converged.
"""

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import maml_plugin
from maml_plugin import fields
from maml_plugin import losses
from maml_plugin.algorithms import imaml
from maml_plugin.models import MLP
from maml_plugin.tasks import SinusoidTasks

DIM = 5  # The quadratic's params: {'a': [3], 'b': [2]}.


def _spd(key, low, high):
  q, _ = jnp.linalg.qr(jax.random.normal(key, (DIM, DIM), jnp.float64))
  eig = jax.random.uniform(jax.random.fold_in(key, 1), (DIM,), jnp.float64,
                           low, high)
  return (q * eig) @ q.T


def _quadratic_loss(params, batch):
  """0.5 (phi - c)^T A (phi - c), A = batch['x'], c = batch['y'][:, 0]."""
  phi, _ = ravel_pytree(params)
  r = phi - batch['y'][:, 0]
  return 0.5 * r @ batch['x'] @ r


def _quadratic_tasks(num_tasks):
  parts = {}
  for i, part in enumerate(('support', 'query')):
    keys = jax.random.split(jax.random.key(10 + i), num_tasks)
    parts[part] = {
        'x': jnp.stack([_spd(k, 0.5, 3.0) for k in keys]),
        'y': jax.vmap(lambda k: jax.random.normal(
            jax.random.fold_in(k, 2), (DIM, 1), jnp.float64))(keys)}
  return parts


def _meta_gradient(algorithm, params, batch):
  """The train step's meta-gradient: with ``optax.sgd(1)`` it is
  ``params - new params``; and its metrics."""
  state = maml_plugin.MetaTrainState.create(params, optax.sgd(1.0))
  new, metrics = jax.jit(algorithm.train_step)(state, batch,
                                               jax.random.key(0))
  return jax.tree.map(jnp.subtract, params, new.params), metrics.compute()


# The quadratic tests' problem: 3 tasks, theta, and lambda = 1.5.
QUAD_LAMBDA, QUAD_TASKS = 1.5, 3
QUAD_THETA = {'a': [0.3, -1.0, 2.0], 'b': [0.5, 1.5]}


def _quadratic_imaml(**extra):
  """`imaml` on the quadratic tasks, converged: 80 inner steps (the
  proximal problem is strongly convex) and exact CG."""
  return maml_plugin.make_algorithm(
      'imaml', loss_fn=_quadratic_loss, tx=optax.sgd(1.0), inner_lr=0.3,
      num_inner_steps=80, prox_lambda=QUAD_LAMBDA, num_cg_steps=2 * DIM,
      cg_tol=1e-14, **extra)


def _closed_form_tasks(batch, theta):
  """Per task, in NumPy: ``(A, phi*, B, d)``: the support's curvature A,
  phi* = (A + lam I)^-1 (A c + lam theta), and the query's curvature B and
  centre d."""
  t, _ = ravel_pytree(theta)
  for i in range(QUAD_TASKS):
    a, c = batch['support']['x'][i], batch['support']['y'][i, :, 0]
    phi = np.linalg.solve(a + QUAD_LAMBDA * np.eye(DIM),
                          a @ c + QUAD_LAMBDA * t)
    yield a, phi, batch['query']['x'][i], batch['query']['y'][i, :, 0]


def test_implicit_gradient_on_quadratics_is_the_closed_form(x64):
  """phi* = (A + lam I)^-1 (A c + lam theta), d phi*/d theta =
  lam (A + lam I)^-1, so the meta-gradient is lam (A + lam I)^-1 B (phi* - d)
  (mean over tasks); evaluation's inner loop must reach the same phi*.
  Caught when broken on purpose: the proximal term's sign flipped in
  `proximal_step`, and ``H / lam`` written as ``H * lam`` in CG's matvec."""
  del x64
  batch = _quadratic_tasks(QUAD_TASKS)
  theta = jax.tree.map(jnp.array, QUAD_THETA)
  algorithm = _quadratic_imaml()
  grads, metrics = _meta_gradient(algorithm, theta, batch)

  expected, optima = [], []
  for a, phi, b, d in _closed_form_tasks(batch, theta):
    optima.append(phi)
    expected.append(QUAD_LAMBDA * np.linalg.solve(
        a + QUAD_LAMBDA * np.eye(DIM), b @ (phi - d)))
  np.testing.assert_allclose(ravel_pytree(grads)[0],
                             np.mean(expected, axis=0), rtol=0, atol=1e-8)
  assert metrics['cg_residual'] <= 1e-14

  loop = algorithm.inner_loop
  support = jax.tree.map(lambda x: x[0], batch['support'])
  carry = loop.init(theta)
  for k in range(80):
    carry = loop.step(theta, carry, support, jnp.int32(k))
  np.testing.assert_allclose(ravel_pytree(loop.params(carry))[0], optima[0],
                             rtol=0, atol=1e-10)


def test_cg_lambda_damps_only_the_linear_system(x64):
  """With ``cg_lambda = mu`` the inner solve keeps `prox_lambda` (phi* as
  above) and CG solves (I + A/mu) g = B (phi* - d): g = mu (A + mu I)^-1
  B (phi* - d), computed here in closed form (pins which lambda goes where;
  the test above pins None, the exact system)."""
  del x64
  mu = 24.0
  batch = _quadratic_tasks(QUAD_TASKS)
  theta = jax.tree.map(jnp.array, QUAD_THETA)
  grads, metrics = _meta_gradient(_quadratic_imaml(cg_lambda=mu), theta,
                                  batch)
  expected = [mu * np.linalg.solve(a + mu * np.eye(DIM), b @ (phi - d))
              for a, phi, b, d in _closed_form_tasks(batch, theta)]
  np.testing.assert_allclose(ravel_pytree(grads)[0],
                             np.mean(expected, axis=0), rtol=0, atol=1e-8)
  assert metrics['cg_residual'] <= 1e-13


def test_metric_before_and_after_are_at_theta_and_at_the_proximal_optimum(
    x64):
  """With `metric_fn` (Omniglot's accuracy) the step reports its task mean
  at theta (``query_accuracy_before``) and at phi* (``_after``), phi* in
  closed form as above; and the query losses likewise (pins the metric's
  bookkeeping, which only classification runs exercise)."""
  del x64
  batch = _quadratic_tasks(QUAD_TASKS)
  theta = jax.tree.map(jnp.array, QUAD_THETA)

  def metric_fn(params, task):
    phi, _ = ravel_pytree(params)
    return jnp.sum(jnp.abs(phi - task['y'][:, 0]))

  _, metrics = _meta_gradient(_quadratic_imaml(metric_fn=metric_fn), theta,
                              batch)
  t, _ = ravel_pytree(theta)
  want = {'query_accuracy_before': [], 'query_accuracy_after': [],
          'query_loss_before': [], 'query_loss_after': []}
  for _, phi, b, d in _closed_form_tasks(batch, theta):
    for name, point in (('before', t), ('after', phi)):
      want[f'query_accuracy_{name}'].append(np.sum(np.abs(point - d)))
      want[f'query_loss_{name}'].append(0.5 * (point - d) @ b @ (point - d))
  for name, values in want.items():
    np.testing.assert_allclose(metrics[name], np.mean(values), rtol=1e-9,
                               err_msg=name)
  assert abs(np.mean(want['query_accuracy_before'])
             - np.mean(want['query_accuracy_after'])) > 1e-3


def _mlp_problem():
  model = maml_plugin.NNXModel(MLP(1, (8, 8), 1, rngs=nnx.Rngs(0)))
  loss_fn = model.task_loss(lambda m, b: losses.mse(m(b['x']), b['y']))
  params = jax.tree.map(lambda a: a.astype(jnp.float64), model.params)
  batch = SinusoidTasks(num_support=5, num_query=5).sample(
      jax.random.key(0), 2)
  return loss_fn, params, jax.tree.map(lambda a: a.astype(jnp.float64),
                                       batch)


# The MLP's support Hessians have eigenvalues in [-26, 65] at init: lambda
# = 40 makes the proximal problem strongly convex, and 0.015 * (65 + 40) < 2
# keeps gradient descent on it stable.
MLP_LAMBDA, MLP_LR = 40.0, 0.015


def _unrolled_gradient(loss_fn, params, batch, num_steps):
  """The exact meta-gradient through `num_steps` proximal GD steps
  (differentiated through the loop), mean over tasks."""
  def task_loss(theta, task):
    def step(_, phi):
      g = jax.grad(loss_fn)(phi, task['support'])
      return jax.tree.map(lambda p, gi, t: p - MLP_LR * (
          gi + MLP_LAMBDA * (p - t)), phi, g, theta)
    phi = jax.lax.fori_loop(0, num_steps, step, theta)
    return loss_fn(phi, task['query'])

  def meta_loss(theta):
    return jnp.mean(jax.vmap(lambda task: task_loss(theta, task))(batch))
  return jax.jit(jax.grad(meta_loss))(params)


def test_implicit_gradient_approaches_the_unrolled_one_as_steps_grow(x64):
  """At K inner steps the implicit gradient assumes phi_K is the proximal
  minimizer; the unrolled gradient is exact for phi_K. Both converge to the
  same limit, so their gap must shrink with K and vanish. Caught when
  broken on purpose: the Hessian taken at theta instead of phi*, and CG
  that does not run (``maxiter=0``: the first-order gradient)."""
  del x64
  loss_fn, params, batch = _mlp_problem()
  gaps = []
  for num_steps in (5, 20, 80):
    algorithm = maml_plugin.make_algorithm(
        'imaml', loss_fn=loss_fn, tx=optax.sgd(1.0), inner_lr=MLP_LR,
        num_inner_steps=num_steps, prox_lambda=MLP_LAMBDA, num_cg_steps=200,
        cg_tol=1e-13)
    implicit, _ = _meta_gradient(algorithm, params, batch)
    exact = _unrolled_gradient(loss_fn, params, batch, num_steps)
    diff = ravel_pytree(jax.tree.map(jnp.subtract, implicit, exact))[0]
    gaps.append(float(jnp.linalg.norm(diff)
                      / jnp.linalg.norm(ravel_pytree(exact)[0])))
  assert gaps[0] > gaps[1] > gaps[2], gaps
  assert gaps[0] > 1e-3 and gaps[2] < 1e-6, gaps


@pytest.mark.parametrize('num_cg_steps', [2, 200])
def test_reported_cg_residual_is_the_residual_of_the_gradient(
    x64, num_cg_steps):
  """``cg_residual`` equals ||b - (I + H/lam) g|| / ||b|| computed with an
  explicit Hessian (one task, so the mean is that task's): above the
  tolerance after 2 CG steps, below it after 200. Caught when broken on
  purpose: the residual computed as ``b - g`` instead of ``b - A g``."""
  del x64
  loss_fn, params, batch = _mlp_problem()
  batch = jax.tree.map(lambda x: x[:1], batch)
  tol = 1e-9
  algorithm = maml_plugin.make_algorithm(
      'imaml', loss_fn=loss_fn, tx=optax.sgd(1.0), inner_lr=MLP_LR,
      num_inner_steps=20, prox_lambda=MLP_LAMBDA, num_cg_steps=num_cg_steps,
      cg_tol=tol)
  grads, metrics = _meta_gradient(algorithm, params, batch)

  task = jax.tree.map(lambda x: x[0], batch)
  flat_theta, unravel = ravel_pytree(params)
  phi = flat_theta
  for _ in range(20):  # The inner solve, written out again.
    g = ravel_pytree(jax.grad(loss_fn)(unravel(phi), task['support']))[0]
    phi = phi - MLP_LR * (g + MLP_LAMBDA * (phi - flat_theta))
  h = jax.hessian(lambda f: loss_fn(unravel(f), task['support']))(phi)
  b = ravel_pytree(jax.grad(loss_fn)(unravel(phi), task['query']))[0]
  g = ravel_pytree(grads)[0]
  residual = np.linalg.norm(b - (g + h @ g / MLP_LAMBDA)) / np.linalg.norm(b)
  np.testing.assert_allclose(metrics['cg_residual'], residual, rtol=1e-6,
                             atol=1e-15)
  assert (residual <= tol) == (num_cg_steps == 200), residual


def test_zero_cg_steps_give_the_query_gradient_at_the_inner_solution(x64):
  """``num_cg_steps=0``: CG starts from, and returns, grad L_query(phi*),
  the first-order approximation the docs promise."""
  del x64
  lam = 1.5
  batch = jax.tree.map(lambda x: x[:1], _quadratic_tasks(1))
  theta = {'a': jnp.zeros(3), 'b': jnp.ones(2)}
  algorithm = maml_plugin.make_algorithm(
      'imaml', loss_fn=_quadratic_loss, tx=optax.sgd(1.0), inner_lr=0.3,
      num_inner_steps=80, prox_lambda=lam, num_cg_steps=0)
  grads, _ = _meta_gradient(algorithm, theta, batch)
  a, c = batch['support']['x'][0], batch['support']['y'][0, :, 0]
  b, d = batch['query']['x'][0], batch['query']['y'][0, :, 0]
  phi = np.linalg.solve(a + lam * np.eye(DIM),
                        a @ c + lam * ravel_pytree(theta)[0])
  np.testing.assert_allclose(ravel_pytree(grads)[0], b @ (phi - d),
                             atol=1e-10)


def test_inner_rate_that_diverges_on_the_proximal_term_is_one_line():
  with pytest.raises(fields.FieldError) as err:
    imaml.IMAMLHParams(inner_lr=0.5, prox_lambda=4.0)
  assert str(err.value) == (
      'inner_lr=0.5: must be < 2 / prox_lambda = 0.5 (gradient descent on '
      'the proximal term diverges otherwise)')


# ----------------------------------------------------------------------------
# Backtracking (`inner_backtracks`): the inner solve cannot diverge.


def test_backtracking_step_takes_the_first_rate_that_passes_armijo(x64):
  """One step on F(x) = a x^2 / 2 + lam (x - t)^2 / 2 from x0, in NumPy:
  rates lr * 2^-j, the first with F(x0 - r d) <= F(x0) - 1e-4 r d^2 is
  taken. With a = 30, lam = 2 (curvature 32) and lr = 2 / 32 the full step
  lands on the mirror point, where F is unchanged: it fails Armijo's
  sufficient decrease and the half step is taken (computed here, not
  assumed). Caught when broken on purpose: the candidates' order reversed
  (the smallest rate first), the Armijo sign flipped (an unchanged F
  accepted), and the anchor dropped from F."""
  del x64
  a, lam, lr, t, x0 = 30.0, 2.0, 2 / 32, 0.5, 1.7

  def loss_fn(params, batch):
    return 0.5 * batch['a'] * jnp.sum(params['x'] ** 2)

  def f(x):
    return 0.5 * a * x ** 2 + 0.5 * lam * (x - t) ** 2

  d = a * x0 + lam * (x0 - t)
  want = x0
  for j in range(5):
    r = lr * 0.5 ** j
    if f(x0 - r * d) <= f(x0) - 1e-4 * r * d * d:
      want = x0 - r * d
      break
  np.testing.assert_allclose(want, x0 - lr / 2 * d)  # The half step.
  got = imaml.proximal_step(
      loss_fn, {'x': jnp.array([x0])}, {'x': jnp.array([t])},
      {'a': jnp.float64(a)}, inner_lr=lr, prox_lambda=lam, backtracks=4)
  np.testing.assert_allclose(got['x'][0], want, rtol=0, atol=1e-12)
  plain = imaml.proximal_step(
      loss_fn, {'x': jnp.array([x0])}, {'x': jnp.array([t])},
      {'a': jnp.float64(a)}, inner_lr=lr, prox_lambda=lam)
  np.testing.assert_allclose(plain['x'][0], x0 - lr * d, rtol=0, atol=1e-12)


def test_backtracking_reaches_the_closed_form_where_plain_steps_diverge(x64):
  """The quadratic tasks (curvature up to 3 + 1.5) at inner_lr 0.6: plain
  gradient descent diverges (0.6 * 4.5 > 2); with backtracking the inner
  solve still reaches phi* and the meta-gradient is the closed form."""
  del x64
  batch = _quadratic_tasks(QUAD_TASKS)
  theta = jax.tree.map(jnp.array, QUAD_THETA)
  kwargs = dict(loss_fn=_quadratic_loss, tx=optax.sgd(1.0), inner_lr=0.6,
                num_inner_steps=200, prox_lambda=QUAD_LAMBDA,
                num_cg_steps=2 * DIM, cg_tol=1e-14)
  plain = maml_plugin.make_algorithm('imaml', **kwargs)
  _, metrics = _meta_gradient(plain, theta, batch)
  assert not np.isfinite(metrics['query_loss_after']) or (
      metrics['query_loss_after'] > 1e6)

  algorithm = maml_plugin.make_algorithm('imaml', inner_backtracks=4,
                                         **kwargs)
  grads, _ = _meta_gradient(algorithm, theta, batch)
  expected = [QUAD_LAMBDA * np.linalg.solve(a + QUAD_LAMBDA * np.eye(DIM),
                                            b @ (phi - d))
              for a, phi, b, d in _closed_form_tasks(batch, theta)]
  np.testing.assert_allclose(ravel_pytree(grads)[0],
                             np.mean(expected, axis=0), rtol=0, atol=1e-8)


def test_sine_config_inner_solve_never_raises_the_proximal_objective():
  """The measured failure: at initialization the sine MLP's support losses
  are sharper than inner_lr 0.01 allows (top eigenvalue ~250, past 2/0.01 -
  lambda), so plain proximal steps blow up on some of 25 tasks, while the
  config's backtracking keeps the objective non-increasing on every one.
  Through `maml_plugin.build_components`, as a user's loop gets it."""
  from configs import maml_sine  # pylint: disable=g-import-not-at-top
  config = maml_sine.get_config('imaml')
  components = maml_plugin.build_components(config)
  params = components.state.params
  loss_fn = components.problem.loss_fn
  batch = components.meta_batch(jax.random.key(3))

  def objectives(backtracks):
    def per_task(task):
      def body(p, _):
        q = imaml.proximal_step(loss_fn, p, params, task['support'],
                                inner_lr=config.inner_lr,
                                prox_lambda=config.prox_lambda,
                                backtracks=backtracks)
        dist = sum(jnp.sum((x - y) ** 2) for x, y in zip(
            jax.tree.leaves(q), jax.tree.leaves(params)))
        return q, loss_fn(q, task['support']) + 0.5 * config.prox_lambda * dist
      _, values = jax.lax.scan(body, params, None,
                               length=config.num_inner_steps)
      return jnp.concatenate([loss_fn(params, task['support'])[None], values])
    return np.asarray(jax.jit(jax.vmap(per_task))(batch))

  plain = objectives(0)
  assert np.sum(~(plain[:, -1] <= plain[:, 0])) >= 1
  guarded = objectives(config.inner_backtracks)
  assert np.all(np.isfinite(guarded))
  assert np.all(np.diff(guarded, axis=1) <= 1e-5 * np.abs(guarded[:, :-1]))


# ----------------------------------------------------------------------------
# The authors' released inner loop (`inner_solver='release'`).


def test_release_inner_solver_is_plain_steps_then_one_proximal_pull(x64):
  """``inner_solver='release'`` (github.com/aravindr93/imaml_dev): N plain
  gradient steps on the support quadratic from theta, in NumPy, then
  phi = theta + (1 - lr lam)(phi - theta); with ``num_cg_steps=0`` the
  meta-gradient is the query gradient there, B (phi - d). Evaluation's
  steps are plain gradient steps (no proximal term). Caught when broken on
  purpose: the pull-back written towards 0 instead of theta, and the
  evaluation loop kept on the proximal objective."""
  del x64
  lam, lr, steps = 1.5, 0.3, 4
  batch = jax.tree.map(lambda x: x[:1], _quadratic_tasks(1))
  theta = jax.tree.map(jnp.array, QUAD_THETA)
  algorithm = maml_plugin.make_algorithm(
      'imaml', loss_fn=_quadratic_loss, tx=optax.sgd(1.0), inner_lr=lr,
      num_inner_steps=steps, prox_lambda=lam, num_cg_steps=0,
      inner_solver='release')
  grads, _ = _meta_gradient(algorithm, theta, batch)
  a, c = (np.asarray(batch['support']['x'][0]),
          np.asarray(batch['support']['y'][0, :, 0]))
  b, d = np.asarray(batch['query']['x'][0]), np.asarray(
      batch['query']['y'][0, :, 0])
  t = np.asarray(ravel_pytree(theta)[0])
  phi, plain = t.copy(), []
  for _ in range(steps):
    phi = phi - lr * a @ (phi - c)
    plain.append(phi)
  pulled = t + (1 - lr * lam) * (phi - t)
  np.testing.assert_allclose(ravel_pytree(grads)[0], b @ (pulled - d),
                             rtol=0, atol=1e-10)

  loop = algorithm.inner_loop
  support = jax.tree.map(lambda x: x[0], batch['support'])
  carry = loop.init(theta)
  for k in range(steps):
    carry = loop.step(theta, carry, support, jnp.int32(k))
    np.testing.assert_allclose(ravel_pytree(loop.params(carry))[0], plain[k],
                               rtol=0, atol=1e-10)


def test_unknown_inner_solver_is_one_line():
  with pytest.raises(fields.FieldError) as err:
    imaml.IMAMLHParams(inner_lr=0.1, inner_solver='sqp')
  assert 'inner_solver' in str(err.value) and "'release'" in str(err.value)
  assert '\n' not in str(err.value)
