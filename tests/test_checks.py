"""Meta-batch shape checks and shape-checked losses, at trace time."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from maml_plugin import checks
from maml_plugin import losses
from maml_plugin import nnx_bridge
from maml_plugin import algorithms
from maml_plugin.models import MLP
from maml_plugin.tasks import EpisodicTasks
from maml_plugin.tasks import SinusoidTasks
from tests.layout_checks import package_names

# Every algorithm the package registers, read from the registry.
ALGORITHMS = package_names(algorithms.TRAIN_STEPS)


def _batch(tasks=4, shots=10, queries=5):
  z = np.zeros
  return {'support': {'x': z((tasks, shots, 1), np.float32),
                      'y': z((tasks, shots, 1), np.float32)},
          'query': {'x': z((tasks, queries, 1), np.float32),
                    'y': z((tasks, queries, 1), np.float32)}}


def _with(part, **leaves):
  batch = _batch()
  batch[part] = dict(batch[part], **leaves)
  return batch


def _error(batch) -> str:
  with pytest.raises(ValueError) as err:
    checks.check_meta_batch(batch)
  message = str(err.value)
  assert '\n' not in message
  return message


def test_the_samplers_batches_pass():
  checks.check_meta_batch(SinusoidTasks(num_support=5, num_query=7).sample(
      jax.random.key(0), 3))  # With 'amplitude' and 'phase' [tasks].
  images = np.zeros((4 * 3, 2, 2, 1), np.float32)
  episodic = EpisodicTasks.from_arrays(images, np.repeat(np.arange(4), 3),
                                       ways=2, num_support=1, num_query=2)
  checks.check_meta_batch(episodic.train_batch(jax.random.key(0), 3))


def test_one_task_without_its_task_axis_is_named_with_the_fix():
  one = jax.tree.map(lambda a: a[0], _batch())
  message = _error(one)
  assert message.startswith('meta-batch support/x: shape (10, 1), expected '
                            '[tasks, examples, features...] (rank >= 3)')
  assert 'one task without the task axis' in message
  assert 'x[None]' in message
  batch = _with('query', x=np.zeros((5, 1)))
  assert _error(batch).startswith('meta-batch query/x: shape (5, 1)')


@pytest.mark.parametrize('batch, expected', [
    ((np.zeros((4, 10, 1)),) * 2, "meta-batch: got a tuple, expected a dict"),
    ({'support': _batch()['support']}, "meta-batch: no 'query' in its keys"),
    ({'support': np.zeros((4, 10, 1)), 'query': _batch()['query']},
     'meta-batch support: got a ndarray of shape (4, 10, 1), expected a dict'),
    (_with('support', y=np.zeros((10,))),
     'meta-batch support/y: shape (10,), expected [tasks, examples, ...] '
     '(rank >= 2): it looks like one task'),
    (_with('query', x=np.zeros((3, 5, 1)), y=np.zeros((3, 5, 1))),
     'meta-batch query/x: shape (3, 5, 1), expected (4, ...): 3 tasks where '
     'support/x has 4'),
    (dict(_batch(), amplitude=np.zeros(3)),
     'meta-batch amplitude: shape (3,), expected (4, ...): 3 tasks'),
    (_with('support', y=np.zeros((4, 9, 1))),
     'meta-batch support/y: shape (4, 9, 1), expected (4, 10, ...): 9 '
     'examples where support/x has 10'),
    (_with('query', y=np.zeros((4, 10, 1))),
     'meta-batch query/y: shape (4, 10, 1), expected (4, 5, ...): 10 '
     'examples where query/x has 5'),
])
def test_bad_meta_batch_is_named_in_one_line(batch, expected):
  assert _error(batch).startswith(expected)


def _algorithm(name):
  graphdef, params = nnx.split(MLP(1, (8,), 1, rngs=nnx.Rngs(0)), nnx.Param)

  def loss_fn(p, batch):
    return losses.mse(nnx.merge(graphdef, p)(batch['x']), batch['y'])

  tx = optax.sgd(0.1)
  algorithm = algorithms.make_algorithm(name, loss_fn=loss_fn, tx=tx,
                                         inner_lr=0.01)
  state = algorithms.MetaTrainState.create(algorithm.init_params(params), tx)
  return algorithm, state


@pytest.mark.parametrize('name', ALGORITHMS)
def test_every_registered_step_refuses_a_task_without_its_axis(name):
  algorithm, state = _algorithm(name)
  one = jax.tree.map(lambda a: a[0], _batch())
  with pytest.raises(ValueError, match='one task without the task axis'):
    jax.jit(algorithm.train_step)(state, one, jax.random.key(0))


def test_the_check_runs_once_at_trace_time_not_per_step(monkeypatch):
  calls = []
  check = checks.check_meta_batch
  monkeypatch.setattr(checks, 'check_meta_batch',
                      lambda b: calls.append(1) or check(b))
  algorithm, state = _algorithm('maml')
  step = jax.jit(algorithm.train_step)
  for i in range(3):
    state, _ = step(state, _batch(), jax.random.key(i))
  assert len(calls) == 1 and int(state.step) == 3


class _TwoLayers(nnx.Module):
  """A user's own network: one input feature."""

  def __init__(self, rngs, *, batch_norm=False):
    self.hidden = nnx.Linear(1, 8, rngs=rngs)
    self.bn = nnx.BatchNorm(8, rngs=rngs) if batch_norm else None
    self.head = nnx.Linear(8, 1, rngs=rngs)

  def __call__(self, x):
    h = self.hidden(x)  # _HIDDEN_LINE
    if self.bn is not None:
      h = self.bn(h)
    return self.head(jax.nn.relu(h))


with open(__file__) as _f:
  _HIDDEN_LINE = next(i + 1 for i, line in enumerate(_f)
                      if line.rstrip().endswith('# _HIDDEN_LINE'))


def _user_step(name, *, batch_norm=False):
  """`make_train_step` and the state a user's loop makes for a user's NNX
  model (README "Use it in your own loop")."""
  model = nnx_bridge.NNXModel(_TwoLayers(nnx.Rngs(0), batch_norm=batch_norm))
  loss_fn = model.task_loss(lambda net, b: losses.mse(net(b['x']), b['y']))
  tx = optax.adam(1e-3)
  step = algorithms.make_train_step(name, loss_fn=loss_fn, tx=tx,
                                     inner_lr=0.01)
  state = algorithms.MetaTrainState.create(model.params, tx,
                                            model_state=model.model_state)
  return jax.jit(step), state


def _features(part, n):
  batch = _batch()
  batch[part] = dict(batch[part], x=np.zeros(batch[part]['x'].shape[:2] + (n,),
                                              np.float32))
  return batch


@pytest.mark.parametrize('name', ALGORITHMS)
def test_a_batch_the_users_model_cannot_take_is_named_in_one_line(name):
  """Support x with 2 features for a model of 1: dot_general's TypeError
  from deep inside the step named no leaf of the meta-batch."""
  step, state = _user_step(name)
  with pytest.raises(ValueError) as err:
    step(state, _features('support', 2), jax.random.key(0))
  message = str(err.value)
  assert '\n' not in message
  assert message.startswith(
      'meta-batch support/x (4, 10, 2), support/y (4, 10, 1): the loss fails '
      'on one task of these shapes'), message
  assert message.endswith(
      'TypeError: dot_general requires contracting dimensions to have the '
      f'same shape, got (2,) and (1,). (at {__file__}:{_HIDDEN_LINE} in '
      '__call__)'), message  # The user's line that failed.
  # Traced only: the check stops the step before anything compiles.


@pytest.mark.parametrize('batch_norm', [False, True])
def test_the_query_set_is_checked_too_and_a_stateful_loss(batch_norm):
  step, state = _user_step('maml', batch_norm=batch_norm)
  with pytest.raises(ValueError, match=r'^meta-batch query/x \(4, 5, 3\), '
                     r'query/y \(4, 5, 1\): the loss fails'):
    step(state, _features('query', 3), jax.random.key(0))
  with pytest.raises(ValueError, match=r'^meta-batch support/x \(4, 10, 3\)'):
    step(state, _features('support', 3), jax.random.key(0))


def test_other_errors_of_a_users_loss_pass_through_unchanged():
  """Only JAX's shape errors become the one line; a user's bug in the loss
  keeps its own exception."""
  def loss_fn(params, batch):
    return batch['no such key'].sum()
  tx = optax.adam(1e-3)
  step = algorithms.make_train_step('maml', loss_fn=loss_fn, tx=tx,
                                     inner_lr=0.01)
  state = algorithms.MetaTrainState.create({'w': jnp.zeros(())}, tx)
  with pytest.raises(KeyError, match='no such key'):
    jax.jit(step)(state, _batch(), jax.random.key(0))


def test_mse_refuses_targets_that_would_broadcast():
  predictions, y = jnp.ones((25, 10, 1)), jnp.zeros((25, 10))
  with pytest.raises(ValueError) as err:
    jax.jit(losses.mse)(predictions, y)
  assert str(err.value) == (
      'mse: targets of shape (25, 10) against predictions of shape '
      '(25, 10, 1) would broadcast; add the trailing axis to the targets: '
      'y[..., None]')
  np.testing.assert_allclose(losses.mse(predictions, y[..., None]), 1.0)
  np.testing.assert_allclose(
      losses.mse(jnp.array([1., 2.]), jnp.array([0., 0.])), 2.5)


def test_cross_entropy_wants_integer_labels_of_the_logits_leading_shape():
  logits = jnp.log(jnp.array([[0.25, 0.75], [0.5, 0.5]]))
  labels = jnp.array([1, 0])
  np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels),
                             -(np.log(0.75) + np.log(0.5)) / 2, rtol=1e-6)
  for bad, fix in ((labels[:, None], 'y[..., 0]'),
                   (jax.nn.one_hot(labels, 2).astype(jnp.int32), 'one-hot'),
                   (labels[:1], 'one integer class id per row')):
    with pytest.raises(ValueError) as err:
      jax.jit(losses.softmax_cross_entropy)(logits, bad)
    assert str(err.value).startswith(
        f'softmax_cross_entropy: labels of shape {bad.shape} against logits '
        'of shape (2, 2): expected labels of shape (2,)')
    assert fix in str(err.value)
  with pytest.raises(ValueError, match='labels of dtype float32'):
    losses.softmax_cross_entropy(logits, labels.astype(jnp.float32))


@pytest.mark.parametrize('predictions,targets,fix', [
    ((10, 1), (10,), 'add the trailing axis to the targets: y[..., None]'),
    ((10,), (10, 1), 'drop the trailing axis of the targets: y[..., 0]'),
    ((25, 10), (25, 10, 1),
     'drop the trailing axis of the targets: y[..., 0]'),
    ((10, 1), (1, 10), "reshape the targets to the predictions' shape"),
    ((2, 5), (10,), "reshape the targets to the predictions' shape"),
])
def test_mse_refuses_targets_of_the_same_size_in_another_shape(
    predictions, targets, fix):
  """Pins the shape check on every pair that has the same number of
  values but broadcasts (or would, against a differently laid out
  target) to another loss: [10, 1] - [10] is [10, 10]."""
  with pytest.raises(ValueError) as err:
    jax.jit(losses.mse)(jnp.ones(predictions), jnp.zeros(targets))
  assert str(err.value) == (
      f'mse: targets of shape {targets} against predictions of shape '
      f'{predictions} would broadcast; {fix}')


def test_accuracy_refuses_labels_that_would_broadcast():
  """Pins: ``argmax(logits) == y`` on labels [n, 1] compares [n] with
  [n, 1] as [n, n] (here 0.5 instead of 1.0), without a word."""
  logits = jnp.array([[0.0, 1.0], [1.0, 0.0], [0.0, 3.0]])
  labels = jnp.array([1, 0, 0])
  assert float(losses.accuracy(logits, labels)) == pytest.approx(2 / 3)
  assert float(losses.accuracy(logits, 1 - labels)) == pytest.approx(1 / 3)
  with pytest.raises(ValueError) as err:
    jax.jit(losses.accuracy)(logits, labels[:, None])
  assert str(err.value) == (
      'accuracy: labels of shape (3, 1) against logits of shape (3, 2): '
      'expected labels of shape (3,); drop the trailing axis of the labels: '
      'y[..., 0]')
  with pytest.raises(ValueError, match='^accuracy: labels of dtype float32'):
    losses.accuracy(logits, labels.astype(jnp.float32))


def test_a_leaf_nested_under_x_is_held_to_xs_rank():
  """x may be a dict of inputs (an image and a mask, say): each of its
  leaves is x's [tasks, examples, features...], rank >= 3 (the mutation
  run's survivor checks.py:106, path[:1] -> path[:2], named it by its own
  key and let rank 2 pass)."""
  batch = _batch()
  batch['support'] = dict(batch['support'], x={'a': np.zeros((4, 10, 1)),
                                               'b': np.zeros((4, 10))})
  message = _error(batch)
  assert message.startswith('meta-batch support/x/b: shape (4, 10), expected '
                            '[tasks, examples, features...] (rank >= 3)')
