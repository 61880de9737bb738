"""The MAML family's train steps against independent computations, float64.

Each test pins one property the issue asks for: Reptile's update, Meta-SGD's
rate gradient, ANIL's frozen body, MAML++ reducing to MAML, remat's gradient,
and that evaluation runs each algorithm's own inner loop.
"""

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

pytestmark = pytest.mark.usefixtures('x64')

TOL = dict(rtol=1e-10, atol=1e-12)


def _problem(seed=0, num_tasks=3, shots=5, hidden=(8, 8)):
  graphdef, params = nnx.split(MLP(1, hidden, 1, rngs=nnx.Rngs(seed)),
                               nnx.Param)
  params = jax.tree.map(lambda a: a.astype(jnp.float64), params)

  def loss_fn(p, batch):
    return jnp.mean((nnx.merge(graphdef, p)(batch['x']) - batch['y']) ** 2)

  batch = SinusoidTasks(num_support=shots, num_query=shots).sample(
      jax.random.key(seed + 1), num_tasks)
  batch = jax.tree.map(lambda a: a.astype(jnp.float64), batch)
  return loss_fn, params, batch


def _close(a, b, **tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **(tol or TOL))


def _task(batch, i):
  return jax.tree.map(lambda a: a[i], batch)


# --- Reptile ----------------------------------------------------------------


@pytest.mark.parametrize('inner_optimizer', ['sgd', 'adam'])
def test_reptile_update_is_step_size_times_mean_of_adapted_minus_theta(
    inner_optimizer):
  loss_fn, params, batch = _problem()
  eps, inner_lr, k = 0.7, 0.02, 4
  tx = optax.sgd(eps)
  algorithm = algorithms.make_algorithm(
      'reptile', loss_fn=loss_fn, tx=tx, inner_lr=inner_lr,
      num_inner_steps=k, inner_optimizer=inner_optimizer)
  state = algorithms.MetaTrainState.create(algorithm.init_params(params), tx)
  new_state, _ = algorithm.train_step(state, batch, jax.random.key(0))

  # Each task adapted on its own, by a plain Python loop.
  inner = (optax.sgd(inner_lr) if inner_optimizer == 'sgd'
           else optax.adam(inner_lr, b1=0.0))

  @jax.jit
  def inner_step(p, opt_state, data):
    updates, opt_state = inner.update(jax.grad(loss_fn)(p, data), opt_state, p)
    return optax.apply_updates(p, updates), opt_state

  adapted = []
  for i in range(3):
    task = _task(batch, i)
    data = {n: jnp.concatenate([task['support'][n], task['query'][n]])
            for n in ('x', 'y')}
    p, opt_state = params, inner.init(params)
    for _ in range(k):
      p, opt_state = inner_step(p, opt_state, data)
    adapted.append(p)
  expected = jax.tree.map(
      lambda t, *a: t + eps * sum(x - t for x in a) / len(a), params,
      *adapted)
  _close(new_state.params, expected)
  assert int(new_state.step) == 1


def test_reptile_rejects_an_unknown_inner_optimizer():
  loss_fn, _, _ = _problem()
  with pytest.raises(ValueError, match=(
      "^inner_optimizer='rmsprop': must be one of 'sgd', 'adam'$")):
    algorithms.make_algorithm('reptile', loss_fn=loss_fn, tx=optax.sgd(1.),
                               inner_lr=0.1, inner_optimizer='rmsprop')


# --- Meta-SGD ---------------------------------------------------------------


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
      loss_fn, frozen, batch, max_steps=3, inner_loop=algorithm.inner_loop)
  np.testing.assert_allclose(curves[:, 1:], curves[:, :1].repeat(3, 1), **TOL)
  # Per-entry rates: one step equals an elementwise SGD step.
  rates = jax.tree.map(lambda r, i=iter(range(100)): r * (1 + next(i)),
                       meta['inner_lr'])
  curves = evaluation.adaptation_curves(
      loss_fn, {'model': params, 'inner_lr': rates}, batch, max_steps=1,
      inner_loop=algorithm.inner_loop)
  task = _task(batch, 0)
  stepped = jax.tree.map(lambda p, g, r: p - r * g, params,
                         jax.grad(loss_fn)(params, task['support']), rates)
  np.testing.assert_allclose(curves[0, 1], loss_fn(stepped, task['query']),
                             **TOL)


# --- ANIL -------------------------------------------------------------------


def test_anil_inner_loop_changes_no_body_parameter():
  loss_fn, params, batch = _problem()
  algorithm = algorithms.make_algorithm(
      'anil', loss_fn=loss_fn, tx=optax.sgd(1.0), inner_lr=0.1,
      head_filter='^layers/2/')
  task = _task(batch, 0)
  loop = algorithm.inner_loop
  carry = loop.init(params)
  for k in range(3):
    carry = loop.step(params, carry, task['support'], jnp.int32(k))
  adapted = loop.params(carry)
  for (path, before), after in zip(
      jax.tree_util.tree_flatten_with_path(params)[0],
      jax.tree.leaves(adapted)):
    name = algorithms.base.param_path(path)
    if name.startswith('layers/2/'):
      assert not np.array_equal(before, after), name
    else:
      np.testing.assert_array_equal(before, after, err_msg=name)


def test_anil_meta_gradient_is_maml_with_a_zero_body_rate():
  loss_fn, params, batch = _problem()
  tx = optax.sgd(1.0)
  algorithm = algorithms.make_algorithm(
      'anil', loss_fn=loss_fn, tx=tx, inner_lr=0.1, num_inner_steps=2)
  state = algorithms.MetaTrainState.create(params, tx)
  new_state, _ = algorithm.train_step(state, batch, jax.random.key(0))
  grads = jax.tree.map(lambda a, b: a - b, params, new_state.params)

  mask = algorithms.anil.head_mask(params, None)  # Default head: last layer.
  assert sum(mask) == 2  # Its kernel and bias.
  rates = jax.tree.unflatten(jax.tree.structure(params),
                             [0.1 if m else 0.0 for m in mask])
  expected = jax.grad(core.maml_loss, argnums=1)(
      loss_fn, params, batch, inner_lr=rates, num_steps=2)
  _close(grads, expected)
  # The body is meta-trained (through the head's adaptation).
  body = [g for g, m in zip(jax.tree.leaves(grads), mask) if not m]
  assert all(float(jnp.max(jnp.abs(g))) > 0 for g in body)


@pytest.mark.parametrize('head_filter', ['^nothing/', 'layers'])
def test_anil_head_filter_must_select_some_but_not_all(head_filter):
  loss_fn, params, _ = _problem()
  algorithm = algorithms.make_algorithm(
      'anil', loss_fn=loss_fn, tx=optax.sgd(1.0), inner_lr=0.1,
      head_filter=head_filter)
  with pytest.raises(ValueError, match=(
      '^' + re.escape(f"head_filter='{head_filter}'")
      + r': must select some but not all parameters; it selects \d+ of 6; parameter paths: layers/0/bias')):
    algorithm.init_params(params)


# --- MAML++ -----------------------------------------------------------------


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
      loss_fn, meta, batch, max_steps=4, inner_loop=algorithm.inner_loop)
  task = _task(batch, 1)
  p, expected = params, []
  for rate in (0.03, 0.07, 0.07, 0.07):
    p = core.sgd_step(loss_fn, p, task['support'], inner_lr=rate)
    expected.append(loss_fn(p, task['query']))
  np.testing.assert_allclose(curves[1, 1:], expected, **TOL)


# --- Memory-flat second order -------------------------------------------------


@pytest.mark.parametrize('name', ['maml', 'mamlpp'])
def test_remat_gives_the_same_meta_gradient(name):
  loss_fn, params, batch = _problem()
  results = []
  for remat in (False, True):
    tx = optax.sgd(1.0)
    algorithm = algorithms.make_algorithm(
        name, loss_fn=loss_fn, tx=tx, inner_lr=0.05, num_inner_steps=4,
        remat_inner_steps=remat)
    state = algorithms.MetaTrainState.create(algorithm.init_params(params),
                                              tx)
    results.append(jax.jit(algorithm.train_step)(
        state, batch, jax.random.key(0))[0].params)
  _close(results[0], results[1])
  g = [jax.grad(core.maml_loss, argnums=1)(
      loss_fn, params, batch, inner_lr=0.05, num_steps=4, remat=r)
       for r in (False, True)]
  _close(g[0], g[1])


def test_remat_is_in_the_compiled_gradient():
  loss_fn, params, batch = _problem()

  def grad_jaxpr(remat):
    return str(jax.make_jaxpr(jax.grad(
        lambda p: core.maml_loss(loss_fn, p, batch, inner_lr=0.05,
                                 num_steps=2, remat=remat)))(params))

  assert 'checkpoint' in grad_jaxpr(True) or 'remat' in grad_jaxpr(True)
  assert 'checkpoint' not in grad_jaxpr(False)
  assert 'remat' not in grad_jaxpr(False)


def test_fomaml_step_is_the_first_order_maml_gradient():
  loss_fn, params, batch = _problem()
  tx = optax.sgd(1.0)
  algorithm = algorithms.make_algorithm(
      'fomaml', loss_fn=loss_fn, tx=tx, inner_lr=0.05, num_inner_steps=2)
  state = algorithms.MetaTrainState.create(params, tx)
  new, _ = algorithm.train_step(state, batch, jax.random.key(0))
  grads = jax.tree.map(lambda a, b: a - b, params, new.params)
  _close(grads, jax.grad(core.maml_loss, argnums=1)(
      loss_fn, params, batch, inner_lr=0.05, num_steps=2, first_order=True))
  second = jax.grad(core.maml_loss, argnums=1)(
      loss_fn, params, batch, inner_lr=0.05, num_steps=2)
  assert not np.allclose(jax.flatten_util.ravel_pytree(grads)[0],
                         jax.flatten_util.ravel_pytree(second)[0])


# --- Task batches -----------------------------------------------------------


def test_over_task_batches_equals_the_whole_meta_batch():
  loss_fn, params, batch = _problem(num_tasks=6)
  fn = jax.value_and_grad(
      lambda p, b: core.maml_loss_and_aux(
          loss_fn, p, b, inner_lr=0.05, num_steps=2,
          metric_fn=lambda p, b: jnp.mean(jnp.abs(b['y']))),
      has_aux=True)
  whole = fn(params, batch)
  for size in (1, 2, 3):
    _close(core.over_task_batches(fn, size)(params, batch), whole)
  # One task at a time really computes per task: each task batch's mean
  # is that task's value (checked through a non-mean reduction).
  firsts = core.over_task_batches(lambda p, b: b['support']['x'][0], 1)(
      params, batch)
  _close(firsts, jnp.mean(batch['support']['x'], axis=0))
  with pytest.raises(ValueError, match='task_batch_size=4: must divide the '
                     'meta-batch size 6'):
    core.over_task_batches(fn, 4)(params, batch)


@pytest.mark.parametrize('name,hparams', [
    ('maml', dict(num_inner_steps=2)),
    ('fomaml', dict(num_inner_steps=2)),
    ('metasgd', dict()),
    ('anil', dict()),
    ('reptile', dict(num_inner_steps=2, inner_optimizer='adam')),
    ('mamlpp', dict(num_inner_steps=2, msl_anneal_steps=10)),
])
def test_every_train_step_gives_the_same_update_one_task_at_a_time(
    name, hparams):
  loss_fn, params, batch = _problem(num_tasks=4)
  tx = optax.adam(1e-2)
  states = []
  for size in (None, 1, 2):
    algorithm = algorithms.make_algorithm(
        name, loss_fn=loss_fn, tx=tx, inner_lr=0.05, task_batch_size=size,
        **hparams)
    state = algorithms.MetaTrainState.create(
        algorithm.init_params(params), tx)
    step = jax.jit(algorithm.train_step)
    for i in range(2):
      state, metrics = step(state, batch, jax.random.key(i))
    states.append((state.params, metrics.compute()))
  # Adam's update divides by sqrt(v): agreement to 1e-9 relative.
  _close(states[1], states[0], rtol=1e-9, atol=1e-12)
  _close(states[2], states[0], rtol=1e-9, atol=1e-12)
