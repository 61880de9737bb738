"""MAML++'s per-step batch-norm weights (BNWB) on a small Conv-4, float64.

Each test pins one property: with equal copies it is MAML++ with frozen
batch norm, the copies' meta-gradient is exact, the inner loop never
changes them, step k uses copy k (evaluation past training the last one),
they are checkpointed, and a model without batch norm is refused.
"""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from maml_plugin import checkpointing
from maml_plugin import evaluation
from maml_plugin import algorithms
from maml_plugin.algorithms import mamlpp
from maml_plugin.models import Conv4
from maml_plugin.models import MLP
from tests.helpers import TOL
from tests.helpers import close

pytestmark = pytest.mark.usefixtures('x64')

WAYS, SHOTS, QUERY, SIZE, STEPS = 3, 2, 2, 8, 3


def _problem(seed=0, num_tasks=2):
  model = Conv4(WAYS, num_filters=4, image_size=SIZE, rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model, nnx.Param)
  params = jax.tree.map(lambda a: a.astype(jnp.float64), params)

  def loss_fn(p, batch):
    logits = nnx.merge(graphdef, p)(batch['x'])
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, batch['y']).mean()

  keys = jax.random.split(jax.random.key(seed + 1), 2)

  def part(key, shots):
    x = jax.random.normal(key, (num_tasks, WAYS * shots, SIZE, SIZE, 1),
                          jnp.float64)
    y = jnp.tile(jnp.repeat(jnp.arange(WAYS), shots), (num_tasks, 1))
    return {'x': x, 'y': y}

  batch = {'support': part(keys[0], SHOTS), 'query': part(keys[1], QUERY)}
  return loss_fn, params, batch


def _bn(params):
  return mamlpp.PerStepBatchNorm.from_params(params,
                                             mamlpp.PER_STEP_BN_FILTER)


def _loss(loss_fn, meta, batch, *, bn, msl=0, step=0, first_order=False):
  return mamlpp.mamlpp_loss_and_aux(
      loss_fn, meta, batch, step=step, num_inner_steps=STEPS,
      msl_anneal_steps=msl, learn_inner_lr=True, first_order=first_order,
      bn=bn)[0]


def _perturbed(meta, bn, k, scale=0.3, seed=7):
  """`meta` with step `k`'s batch-norm copies moved at random."""
  stacked = bn.stacked(meta['per_step_bn'])
  keys = jax.random.split(jax.random.key(seed), len(stacked))
  moved = [c.at[k].add(scale * jax.random.normal(key, c.shape[1:], c.dtype))
           for c, key in zip(stacked, keys)]
  return dict(meta, per_step_bn=bn.nest(moved))


def _algorithm_with_distinct_copies(seed):
  """The `mamlpp` algorithm with per-step BN, its params with every step's
  copies moved apart, the problem and the `PerStepBatchNorm`."""
  loss_fn, params, batch = _problem()
  algorithm = algorithms.make_algorithm(
      'mamlpp', loss_fn=loss_fn, tx=optax.sgd(1.0), inner_lr=0.05,
      num_inner_steps=STEPS, per_step_bn=True)
  bn = _bn(params)
  meta = algorithm.init_params(params)
  for k in range(STEPS):
    meta = _perturbed(meta, bn, k, seed=seed + k)
  return algorithm, meta, bn, (loss_fn, params, batch)


def test_filter_selects_the_conv4_scale_and_shift():
  _, params, _ = _problem()
  bn = _bn(params)
  assert ['/'.join(n) for n in bn.names] == [
      f'blocks/{i}/{w}/value' for i in range(4) for w in ('scale', 'shift')]


@pytest.mark.parametrize('first_order', [False, True])
def test_equal_copies_are_mamlpp_with_batch_norm_frozen_in_the_inner_loop(
    first_order):
  """With every copy equal to the model's batch norm, per-step BN is the
  shared-BN step whose batch-norm rates are 0: same loss, same gradient of
  the other params, and the copies' gradients sum to the shared one's."""
  loss_fn, params, batch = _problem()
  bn = _bn(params)
  mask = list(bn.mask)
  shared = mamlpp.mamlpp_params(params, inner_lr=0.05, num_inner_steps=STEPS)
  # Per-tensor rates that differ by step, with 0 on batch norm.
  shared['inner_lr'] = jax.tree.unflatten(
      jax.tree.structure(shared['inner_lr']),
      [jnp.zeros(STEPS) if m else jnp.array([0.05, 0.03, 0.08])
       for m in mask])
  per_step = dict(shared, per_step_bn=bn.init(params, STEPS))

  kwargs = dict(msl=10, step=4, first_order=first_order)
  value, grads = jax.value_and_grad(
      lambda m: _loss(loss_fn, m, batch, bn=None, **kwargs))(shared)
  value_bn, grads_bn = jax.value_and_grad(
      lambda m: _loss(loss_fn, m, batch, bn=bn, **kwargs))(per_step)

  np.testing.assert_allclose(value_bn, value, **TOL)
  g_bn, g_rest = algorithms.base.split_leaves(grads['model'], mask)
  gp_bn, gp_rest = algorithms.base.split_leaves(grads_bn['model'], mask)
  close(gp_rest, g_rest)
  for g in gp_bn:  # The model's own batch norm is never used.
    np.testing.assert_array_equal(g, 0.0)
  copies = bn.stacked(grads_bn['per_step_bn'])
  close([jnp.sum(c, axis=0) for c in copies], g_bn)
  assert all(float(jnp.max(jnp.abs(c[1]))) > 0 for c in copies)
  # Rates of the adapted leaves: the same gradient.
  close(algorithms.base.split_leaves(grads_bn['inner_lr'], mask)[1],
         algorithms.base.split_leaves(grads['inner_lr'], mask)[1])


def test_copies_meta_gradient_matches_finite_differences():
  loss_fn, params, batch = _problem()
  bn = _bn(params)
  meta = mamlpp.mamlpp_params(params, inner_lr=0.05, num_inner_steps=STEPS,
                              per_step_bn=bn)
  meta = _perturbed(_perturbed(meta, bn, 0, seed=1), bn, 2, seed=2)

  @jax.jit
  def objective(copies):
    return _loss(loss_fn, dict(meta, per_step_bn=copies), batch, bn=bn,
                 msl=10, step=3)

  flat, unravel = jax.flatten_util.ravel_pytree(meta['per_step_bn'])
  g, _ = jax.flatten_util.ravel_pytree(jax.grad(objective)(
      meta['per_step_bn']))
  v = jax.random.normal(jax.random.key(0), flat.shape, jnp.float64)
  h = 1e-6
  fd = (objective(unravel(flat + h * v))
        - objective(unravel(flat - h * v))) / (2 * h)
  np.testing.assert_allclose(float(g @ v), float(fd), rtol=1e-6)


def test_inner_loop_never_changes_the_copies_and_uses_copy_k_at_step_k():
  algorithm, meta, bn, (_, _, batch) = _algorithm_with_distinct_copies(10)
  support = jax.tree.map(lambda a: a[0], batch['support'])
  loop = algorithm.inner_loop
  carry = loop.init(meta)
  stacked = bn.stacked(meta['per_step_bn'])
  close(algorithms.base.split_leaves(loop.params(carry), list(bn.mask))[0],
         [c[0] for c in stacked])
  for k in range(STEPS + 2):  # Past training: the last copy.
    before = carry
    carry = loop.step(meta, carry, support, jnp.int32(k))
    used, adapted = algorithms.base.split_leaves(loop.params(carry),
                                             list(bn.mask))
    close(used, [c[min(k, STEPS - 1)] for c in stacked])
    old = algorithms.base.split_leaves(loop.params(before), list(bn.mask))[1]
    assert all(not np.array_equal(a, b) for a, b in zip(adapted, old))


def test_changing_copy_k_changes_the_query_loss_from_step_k_on_only():
  loss_fn, params, batch = _problem()
  bn = _bn(params)
  meta = mamlpp.mamlpp_params(params, inner_lr=0.05, num_inner_steps=STEPS,
                              per_step_bn=bn)
  task = jax.tree.map(lambda a: a[0], batch)

  def losses(m):
    return mamlpp.per_step_query_losses(
        loss_fn, m['model'], task, inner_lr=m['inner_lr'], num_steps=STEPS,
        first_order=False, remat=False, bn=bn, bn_copies=m['per_step_bn'])

  base = losses(meta)
  for k in range(STEPS):
    moved = losses(_perturbed(meta, bn, k))
    np.testing.assert_array_equal(moved[:k], base[:k])  # Steps before k.
    assert np.all(np.abs(moved[k:] - base[k:]) > 1e-9), (k, moved, base)


def test_evaluation_past_training_steps_reuses_the_last_copies():
  algorithm, meta, bn, problem = _algorithm_with_distinct_copies(20)
  loss_fn, params, batch = problem
  curves = evaluation.adaptation_curves(
      loss_fn, meta, batch, num_inner_steps=STEPS + 2,
      inner_loop=algorithm.inner_loop)
  task = jax.tree.map(lambda a: a[1], batch)
  stacked = bn.stacked(meta['per_step_bn'])
  p = bn.put(params, [c[0] for c in stacked])
  expected = [loss_fn(p, task['query'])]
  for k in range(STEPS + 2):
    p = mamlpp.inner_step(
        loss_fn, p, task['support'], rates=mamlpp.rates_at(
            meta['inner_lr'], k, STEPS),
        bn=bn, bn_leaves=[c[min(k, STEPS - 1)] for c in stacked])
    expected.append(loss_fn(p, task['query']))
  np.testing.assert_allclose(curves[1], expected, **TOL)


def test_train_step_meta_trains_the_copies_and_checkpoints_them(tmp_path):
  loss_fn, params, batch = _problem()
  tx = optax.adam(1e-2)
  algorithm = algorithms.make_algorithm(
      'mamlpp', loss_fn=loss_fn, tx=tx, inner_lr=0.05,
      num_inner_steps=STEPS, per_step_bn=True)
  state = algorithms.MetaTrainState.create(algorithm.init_params(params),
                                            tx)
  new, _ = jax.jit(algorithm.train_step)(state, batch, jax.random.key(0))
  bn = _bn(params)
  for old, c in zip(bn.stacked(state.params['per_step_bn']),
                    bn.stacked(new.params['per_step_bn'])):
    assert all(not np.array_equal(c[k], old[k]) for k in range(STEPS))
  manager = checkpointing.create_manager(str(tmp_path), max_to_keep=1)
  checkpointing.save(manager, new, jax.random.key(5))
  empty = algorithms.MetaTrainState.create(algorithm.init_params(params),
                                            tx)
  restored, _ = checkpointing.restore_latest(manager, empty,
                                             jax.random.key(0))
  manager.close()
  close(restored, new, rtol=0, atol=0)


def test_a_model_without_batch_norm_is_refused_in_one_line():
  graphdef, params = nnx.split(MLP(1, (8,), 1, rngs=nnx.Rngs(0)), nnx.Param)
  del graphdef
  algorithm = algorithms.make_algorithm(
      'mamlpp', loss_fn=lambda p, b: 0.0, tx=optax.sgd(1.0), inner_lr=0.05,
      per_step_bn=True)
  with pytest.raises(ValueError) as err:
    algorithm.init_params(params)
  message = str(err.value)
  assert message.startswith(
      "per_step_bn_filter='(^|/)(scale|shift)/value$': must select "
      'some but not all parameters; it selects 0 of 4; parameter paths: '
      'layers/0/bias/value'), message
  assert '\n' not in message


def test_loss_before_adaptation_uses_step_0s_copies_when_copies_differ():
  """Pins: the "before adaptation" query loss (``query_loss_before``)
  computed with another step's batch-norm copy or with the model's own
  batch norm, which equal copies (the tests above) cannot tell apart.

  Every step's copies are moved apart; the expected value is the plain
  loss of the model with copy 0 put in, averaged over the tasks, and it
  must differ from the same loss with copy 1 or the model's own weights.
  """
  _, meta, bn, (loss_fn, params, batch) = _algorithm_with_distinct_copies(3)
  _, aux = mamlpp.mamlpp_loss_and_aux(
      loss_fn, meta, batch, step=0, num_inner_steps=STEPS,
      msl_anneal_steps=0, learn_inner_lr=True, first_order=False, bn=bn)

  def before_with(model):
    return np.mean([loss_fn(model, jax.tree.map(lambda a, t=t: a[t],
                                                batch['query']))
                    for t in range(batch['query']['y'].shape[0])])

  copies = bn.stacked(meta['per_step_bn'])
  expected = before_with(bn.put(meta['model'], [c[0] for c in copies]))
  np.testing.assert_allclose(aux.query_loss_before, expected, **TOL)
  for other in (bn.put(meta['model'], [c[1] for c in copies]),
                meta['model']):
    assert abs(before_with(other) - expected) > 1e-6
