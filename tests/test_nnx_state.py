"""A user's NNX model with BatchNorm and Dropout through the core, in float64.

Every reference here is computed independently of the package: a
hand-written forward pass (linear, batch norm with the batch's statistics,
tanh, linear), hand-written inner SGD steps, central finite differences,
and NumPy moving averages.
"""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import maml_plugin
from maml_plugin import core
from maml_plugin import evaluation
from maml_plugin import nnx_bridge

MOMENTUM = 0.9
EPS = 1e-5
INNER_LR = 0.3


class BNNet(nnx.Module):
  """A user's network: linear, BatchNorm (running averages), tanh, linear."""

  def __init__(self, rngs):
    f64 = jnp.float64
    self.l1 = nnx.Linear(2, 3, param_dtype=f64, dtype=f64, rngs=rngs)
    self.bn = nnx.BatchNorm(3, momentum=MOMENTUM, epsilon=EPS, dtype=f64,
                            param_dtype=f64, rngs=rngs)
    self.l2 = nnx.Linear(3, 1, param_dtype=f64, dtype=f64, rngs=rngs)

  def __call__(self, x):
    return self.l2(jnp.tanh(self.bn(self.l1(x))))


def mse(net, batch):
  return jnp.mean(jnp.square(net(batch['x']) - batch['y']))


def hand_hidden(p, x):
  return x @ p['l1']['kernel'] + p['l1']['bias']


def hand_forward(p, x):
  """Train-mode forward, by hand: batch norm with the batch's statistics."""
  h = hand_hidden(p, x)
  mean = jnp.mean(h, axis=0)
  var = jnp.mean(jnp.square(h - mean), axis=0)
  h = (h - mean) / jnp.sqrt(var + EPS) * p['bn']['scale'] + p['bn']['bias']
  return jnp.tanh(h) @ p['l2']['kernel'] + p['l2']['bias']


def hand_loss(p, batch):
  return jnp.mean(jnp.square(hand_forward(p, batch['x']) - batch['y']))


def hand_adapt(p, support, steps):
  for _ in range(steps):
    g = jax.grad(hand_loss)(p, support)
    p = jax.tree.map(lambda a, b: a - INNER_LR * b, p, g)
  return p


def hand_meta_loss(p, meta_batch, steps):
  losses = []
  for i in range(meta_batch['support']['x'].shape[0]):
    task = jax.tree.map(lambda a, i=i: a[i], meta_batch)
    losses.append(hand_loss(hand_adapt(p, task['support'], steps),
                            task['query']))
  return jnp.mean(jnp.stack(losses))


def pure(tree):
  """Plain nested dicts of arrays (the `.value` of every Variable)."""
  return nnx.to_pure_dict(tree)


def meta_batch(seed, tasks=2, shots=5):
  rng = np.random.default_rng(seed)
  def part():
    return {'x': rng.normal(size=(tasks, shots, 2)),
            'y': rng.normal(size=(tasks, shots, 1))}
  return {'support': part(), 'query': part()}


@pytest.fixture
def bn_model(x64):
  del x64
  return nnx_bridge.NNXModel(BNNet(nnx.Rngs(0)))


def test_batchnorm_model_is_stateful_with_its_statistics(bn_model):
  assert bn_model.stateful
  assert core.is_stateful(bn_model.task_loss(mse))
  assert set(pure(bn_model.model_state)['bn']) == {'mean', 'var'}
  assert 'mean' not in pure(bn_model.params)['bn']


@pytest.mark.parametrize('steps', [1, 3])
def test_batchnorm_meta_gradient_matches_hand_and_finite_differences(
    bn_model, steps):
  batch = jax.tree.map(jnp.asarray, meta_batch(steps))
  loss_fn = bn_model.task_loss(mse)

  def ours(params):
    return core.maml_loss(loss_fn, params, batch, inner_lr=INNER_LR,
                          num_steps=steps, model_state=bn_model.model_state)

  params = bn_model.params
  value, grads = jax.value_and_grad(ours)(params)
  p = pure(params)
  np.testing.assert_allclose(value, hand_meta_loss(p, batch, steps),
                             rtol=1e-12)
  hand_grads = jax.grad(hand_meta_loss)(p, batch, steps)
  for a, b in zip(jax.tree.leaves(pure(grads)), jax.tree.leaves(hand_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)

  # Central differences on every coordinate of the flattened params.
  flat, unravel = jax.flatten_util.ravel_pytree(p)
  ours_jit = jax.jit(lambda v: ours(unravel_into(params, unravel(v))))
  def f(v):
    return float(ours_jit(v))
  h = 1e-6
  fd = np.array([(f(flat + h * e) - f(flat - h * e)) / (2 * h)
                 for e in np.eye(flat.size)])
  ours_flat, _ = jax.flatten_util.ravel_pytree(pure(grads))
  np.testing.assert_allclose(ours_flat, fd, rtol=1e-6, atol=1e-8)


def unravel_into(template_state, pure_dict):
  """An nnx.State shaped like `template_state` holding `pure_dict`'s values."""
  state = jax.tree.map(lambda a: a, template_state)
  nnx.replace_by_pure_dict(state, pure_dict)
  return state


def test_running_averages_are_the_hand_computed_moving_average(bn_model):
  """One meta-step, 2 tasks, 2 inner steps: each task's running averages see
  its support forward at each inner step, then its query forward after
  adaptation; the train state keeps the mean over tasks."""
  steps = 2
  batch = jax.tree.map(jnp.asarray, meta_batch(7))
  tx = optax.sgd(0.0)  # Params unchanged: only the statistics move.
  step = maml_plugin.make_train_step('maml', loss_fn=bn_model.task_loss(mse),
                                     tx=tx, inner_lr=INNER_LR,
                                     num_inner_steps=steps)
  state = maml_plugin.MetaTrainState.create(
      bn_model.params, tx, model_state=bn_model.model_state)
  new_state, _ = jax.jit(step)(state, batch, jax.random.key(0))

  p = pure(bn_model.params)
  expected_mean, expected_var = [], []
  for i in range(2):
    task = jax.tree.map(lambda a, i=i: np.asarray(a[i]), batch)
    mean, var = np.zeros(3), np.ones(3)
    passes = []
    q = p
    for _ in range(steps):
      passes.append(np.asarray(hand_hidden(q, task['support']['x'])))
      q = hand_adapt(q, task['support'], 1)
    passes.append(np.asarray(hand_hidden(q, task['query']['x'])))
    for h in passes:
      mean = MOMENTUM * mean + (1 - MOMENTUM) * h.mean(0)
      var = MOMENTUM * var + (1 - MOMENTUM) * h.var(0)
    expected_mean.append(mean)
    expected_var.append(var)
  got = pure(new_state.model_state)['bn']
  # flax keeps batch statistics in float32, whatever the params' dtype.
  np.testing.assert_allclose(got['mean'], np.mean(expected_mean, 0),
                             rtol=1e-6)
  np.testing.assert_allclose(got['var'], np.mean(expected_var, 0),
                             rtol=1e-6)
  # The module receives them back.
  module = bn_model.update_module(new_state.params, new_state.model_state)
  np.testing.assert_allclose(module.bn.mean.value, got['mean'])


def test_evaluation_reads_the_chosen_statistics_and_changes_nothing(bn_model):
  batch = jax.tree.map(jnp.asarray, meta_batch(3, tasks=4))
  p = pure(bn_model.params)
  stored = jax.tree.map(lambda a: a, bn_model.model_state)
  stored['bn']['mean'].value = jnp.asarray([0.5, -1.0, 2.0])
  stored['bn']['var'].value = jnp.asarray([2.0, 0.5, 3.0])
  algorithm = maml_plugin.make_algorithm(
      'maml', loss_fn=bn_model.task_loss(mse), tx=optax.sgd(0.1),
      inner_lr=INNER_LR)

  def curves(batch_stats):
    evaluator = evaluation.FewShotEvaluator(
        bn_model.eval_loss(mse, batch_stats=batch_stats), batch,
        num_inner_steps=1, inner_loop_for=algorithm.eval_inner_loop)
    return evaluator(bn_model.params, stored)

  before = curves(True)[:, 0]
  want = [hand_loss(p, jax.tree.map(lambda a, i=i: a[i], batch['query']))
          for i in range(4)]
  np.testing.assert_allclose(before, want, rtol=1e-10)

  def running_forward(x):
    h = hand_hidden(p, x)
    h = ((h - np.array([0.5, -1.0, 2.0])) / np.sqrt(np.array([2.0, 0.5, 3.0])
                                                    + EPS)
         * p['bn']['scale'] + p['bn']['bias'])
    return np.tanh(h) @ p['l2']['kernel'] + p['l2']['bias']
  want = [np.mean((running_forward(batch['query']['x'][i])
                   - batch['query']['y'][i]) ** 2) for i in range(4)]
  np.testing.assert_allclose(curves(False)[:, 0], want, rtol=1e-10)
  np.testing.assert_array_equal(stored['bn']['mean'].value,
                                [0.5, -1.0, 2.0])


class MaskLog(nnx.Variable):
  """Every dropout mask the module drew, one row per forward pass."""


class PassCount(nnx.Variable):
  pass


class DropoutRecorder(nnx.Module):
  """x * w * dropout_mask, recording each pass's mask in its state."""

  def __init__(self, rngs, width=64, passes=8):
    self.w = nnx.Param(jnp.ones((width,)))
    self.dropout = nnx.Dropout(0.5, rngs=rngs)
    self.masks = MaskLog(jnp.zeros((passes, width)))
    self.count = PassCount(jnp.zeros((), jnp.int32))

  def __call__(self, x):
    mask = self.dropout(jnp.ones_like(self.w.value))
    self.masks.value = self.masks.value.at[self.count.value].set(mask)
    self.count.value = self.count.value + 1
    return x * self.w.value * mask


def recorder_loss(net, batch):
  return jnp.mean(jnp.square(net(batch['x']) - batch['y']))


def recorder_batch(tasks):
  ones = jnp.ones((tasks, 3, 64))
  return {'support': {'x': ones, 'y': ones}, 'query': {'x': ones, 'y': ones}}


def masks_of_one_task(model, key, steps=3, layers=False):
  """The masks of one task's support passes and query pass (``[layer,
  pass, width]`` with `layers`, for a module recording one per layer)."""
  loss = model.task_loss(recorder_loss)
  task = jax.tree.map(lambda a: a[0], recorder_batch(1))
  _, state = core.adapt(loss, model.params, task['support'], inner_lr=0.1,
                        num_steps=steps, model_state=model.model_state,
                        rng=key)
  _, state = loss(model.params, state, task['query'], core.query_key(key))
  masks = np.asarray(pure(state)['masks'])
  return masks[:, :steps + 1] if layers else masks[:steps + 1]


def test_dropout_masks_differ_per_inner_step_and_support_or_query():
  model = nnx_bridge.NNXModel(DropoutRecorder(nnx.Rngs(0)))
  masks = masks_of_one_task(model, jax.random.key(1))
  assert set(np.unique(masks)) <= {0.0, 2.0}
  for i in range(len(masks)):          # 3 support passes, then the query.
    for j in range(i):
      assert not np.array_equal(masks[i], masks[j]), (i, j)
  np.testing.assert_array_equal(masks,
                                masks_of_one_task(model, jax.random.key(1)))
  assert not np.array_equal(masks,
                            masks_of_one_task(model, jax.random.key(2)))


@pytest.mark.parametrize('name', ['maml', 'fomaml', 'metasgd', 'reptile',
                                  'mamlpp'])
def test_dropout_masks_differ_per_task_and_repeat_under_a_seed(name):
  """Two identical tasks: equal masks would average to exactly 0 or 2."""
  model = nnx_bridge.NNXModel(DropoutRecorder(nnx.Rngs(0)))
  tx = optax.sgd(0.0)

  def run(key, task_batch_size=None):
    kwargs = dict(loss_fn=model.task_loss(recorder_loss), tx=tx,
                  inner_lr=0.1, num_inner_steps=2,
                  task_batch_size=task_batch_size)
    algorithm = maml_plugin.make_algorithm(name, **kwargs)
    state = maml_plugin.MetaTrainState.create(
        algorithm.init_params(model.params), tx,
        model_state=algorithm.init_model_state(model.model_state))
    new, _ = jax.jit(algorithm.train_step)(state, recorder_batch(2), key)
    return np.asarray(pure(new.model_state)['masks'])

  first = run(jax.random.key(0))
  used = first[first.sum(axis=-1) > 0]
  assert used.size and np.any(used == 1.0)   # The tasks' masks differ.
  np.testing.assert_array_equal(first, run(jax.random.key(0)))
  assert not np.array_equal(first, run(jax.random.key(5)))
  np.testing.assert_array_equal(first, run(jax.random.key(0),
                                           task_batch_size=1))


class TwoDropouts(nnx.Module):
  """Two Dropout layers on one input, each recording its masks: both
  fork the one 'dropout' stream of the user's `nnx.Rngs`."""

  def __init__(self, rngs, width=64, passes=8):
    self.w = nnx.Param(jnp.ones((width,)))
    self.first = nnx.Dropout(0.5, rngs=rngs)
    self.second = nnx.Dropout(0.5, rngs=rngs)
    self.masks = MaskLog(jnp.zeros((2, passes, width)))
    self.count = PassCount(jnp.zeros((), jnp.int32))

  def __call__(self, x):
    ones = jnp.ones_like(self.w.value)
    a, b = self.first(ones), self.second(ones)
    i = self.count.value
    self.masks.value = self.masks.value.at[0, i].set(a).at[1, i].set(b)
    self.count.value = i + 1
    return x * self.w.value * a * b


def test_two_dropout_layers_draw_different_masks_in_every_pass():
  """Pins the key each RNG stream of one module gets (`NNXModel` folds the
  pass's key with the stream's position): one key for every stream would
  give both layers the same mask in each pass. Also different across
  inner steps, support and query, and the keys of two tasks; the same
  under the same key."""
  model = nnx_bridge.NNXModel(TwoDropouts(nnx.Rngs(0)))
  steps = 3

  def masks(key):  # [layer, pass, width]: 3 support passes, the query.
    return masks_of_one_task(model, key, steps=steps, layers=True)

  first = masks(jax.random.key(1))
  assert set(np.unique(first)) <= {0.0, 2.0}
  rows = np.concatenate([first, masks(jax.random.key(2))]).reshape(
      -1, first.shape[-1])
  assert len(rows) == 2 * 2 * (steps + 1)
  for i in range(len(rows)):
    for j in range(i):
      assert not np.array_equal(rows[i], rows[j]), (i, j)
  np.testing.assert_array_equal(first, masks(jax.random.key(1)))


def test_mamlpp_per_step_statistics_keep_one_independent_set_per_step(
    bn_model):
  """BNRS: copy k sees only step k's support forward and the query forward
  after step k; the copies start equal and end different."""
  steps = 3
  batch = jax.tree.map(jnp.asarray, meta_batch(11))
  tx = optax.sgd(0.0)
  algorithm = maml_plugin.make_algorithm(
      'mamlpp', loss_fn=bn_model.task_loss(mse), tx=tx, inner_lr=INNER_LR,
      num_inner_steps=steps, per_step_bn_stats=True)
  model_state = algorithm.init_model_state(bn_model.model_state)
  assert pure(model_state)['bn']['mean'].shape == (steps, 3)
  state = maml_plugin.MetaTrainState.create(
      algorithm.init_params(bn_model.params), tx, model_state=model_state)
  new_state, _ = jax.jit(algorithm.train_step)(state, batch,
                                               jax.random.key(0))

  p = pure(bn_model.params)
  expected = np.zeros((2, steps, 3))
  for i in range(2):
    task = jax.tree.map(lambda a, i=i: np.asarray(a[i]), batch)
    q = p
    for k in range(steps):
      support = np.asarray(hand_hidden(q, task['support']['x'])).mean(0)
      q = hand_adapt(q, task['support'], 1)
      query = np.asarray(hand_hidden(q, task['query']['x'])).mean(0)
      expected[i, k] = MOMENTUM * (1 - MOMENTUM) * support + (
          1 - MOMENTUM) * query
  got = np.asarray(pure(new_state.model_state)['bn']['mean'])
  np.testing.assert_allclose(got, expected.mean(0), rtol=1e-5, atol=1e-7)
  assert not np.allclose(got[0], got[1])


def test_mamlpp_per_step_statistics_in_evaluation(bn_model):
  """Evaluation with stored statistics reads copy k at inner step k."""
  steps = 2
  batch = jax.tree.map(jnp.asarray, meta_batch(5, tasks=3))
  algorithm = maml_plugin.make_algorithm(
      'mamlpp', loss_fn=bn_model.task_loss(mse), tx=optax.sgd(0.1),
      inner_lr=INNER_LR, num_inner_steps=steps, per_step_bn_stats=True)
  means = np.array([[0.5, -1.0, 2.0], [-0.3, 0.2, 0.1]])
  variances = np.array([[2.0, 0.5, 3.0], [1.5, 0.7, 0.9]])
  stored = algorithm.init_model_state(bn_model.model_state)
  stored['bn']['mean'].value = jnp.asarray(means)
  stored['bn']['var'].value = jnp.asarray(variances)
  params = algorithm.init_params(bn_model.params)
  evaluator = evaluation.FewShotEvaluator(
      bn_model.eval_loss(mse, batch_stats=False), batch, num_inner_steps=2,
      inner_loop_for=algorithm.eval_inner_loop)
  curves = evaluator(params, stored)

  p = pure(bn_model.params)
  def loss_with(copy):
    def loss(q, b):
      h = hand_hidden(q, b['x'])
      h = ((h - means[copy]) / jnp.sqrt(variances[copy] + EPS)
           * q['bn']['scale'] + q['bn']['bias'])
      out = jnp.tanh(h) @ q['l2']['kernel'] + q['l2']['bias']
      return jnp.mean(jnp.square(out - b['y']))
    return loss
  for i in range(3):
    task = jax.tree.map(lambda a, i=i: a[i], batch)
    q, want = p, [loss_with(0)(p, task['query'])]
    for k in range(steps):
      g = jax.grad(loss_with(k))(q, task['support'])
      q = jax.tree.map(lambda a, b: a - INNER_LR * b, q, g)
      want.append(loss_with(k)(q, task['query']))
    np.testing.assert_allclose(curves[i], want, rtol=1e-9)


def test_state_a_module_cannot_carry_is_named():
  class Odd(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.ones((2,)))
      self.note = nnx.Variable('not an array')
  with pytest.raises(ValueError, match=r'^note: Variable holds a str'):
    nnx_bridge.NNXModel(Odd())


def test_train_mode_dropout_without_a_key_is_refused():
  model = nnx_bridge.NNXModel(DropoutRecorder(nnx.Rngs(0)))
  task = jax.tree.map(lambda a: a[0], recorder_batch(1))
  with pytest.raises(ValueError, match=r'rng=None: .*RNG streams \(default\)'):
    model.task_loss(recorder_loss)(model.params, model.model_state,
                                   task['support'], None)


def test_parameter_only_module_gets_the_plain_loss():
  class Plain(nnx.Module):
    def __init__(self, rngs):
      self.l = nnx.Linear(1, 1, rngs=rngs)
    def __call__(self, x):
      return self.l(x)
  model = nnx_bridge.NNXModel(Plain(nnx.Rngs(0)))
  loss = model.task_loss(mse)
  assert not model.stateful and model.model_state is None
  assert not core.is_stateful(loss)
  batch = {'x': jnp.ones((4, 1)), 'y': jnp.zeros((4, 1))}
  kernel = model.params['l']['kernel'].value
  bias = model.params['l']['bias'].value
  np.testing.assert_allclose(loss(model.params, batch),
                             np.mean((kernel[0, 0] + bias[0]) ** 2),
                             rtol=1e-6)


def test_model_state_is_checkpointed_and_restored(tmp_path):
  from maml_plugin import checkpointing  # pylint: disable=g-import-not-at-top
  model = nnx_bridge.NNXModel(DropoutRecorder(nnx.Rngs(0)))
  tx = optax.adam(1e-3)
  step = jax.jit(maml_plugin.make_train_step(
      'maml', loss_fn=model.task_loss(recorder_loss), tx=tx, inner_lr=0.1))
  state = maml_plugin.MetaTrainState.create(model.params, tx,
                                            model_state=model.model_state)
  state, _ = step(state, recorder_batch(2), jax.random.key(3))
  manager = checkpointing.create_manager(str(tmp_path), max_to_keep=2)
  checkpointing.save(manager, state, jax.random.key(9))
  fresh = maml_plugin.MetaTrainState.create(model.params, tx,
                                            model_state=model.model_state)
  restored, _ = checkpointing.restore_latest(manager, fresh,
                                             jax.random.key(0))
  manager.close()
  assert int(pure(restored.model_state)['count']) == 2  # support, query
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
