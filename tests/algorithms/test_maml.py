"""The registry of train steps and the registered `maml` step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import maml_plugin
from maml_plugin import core
from maml_plugin import algorithms
from maml_plugin.models import MLP
from maml_plugin.registry import Registry
from maml_plugin.tasks import SinusoidTasks


def _setup(seed=0):
  graphdef, params = nnx.split(MLP(1, (16, 16), 1, rngs=nnx.Rngs(seed)),
                               nnx.Param)

  def loss_fn(p, batch):
    return jnp.mean((nnx.merge(graphdef, p)(batch['x']) - batch['y']) ** 2)

  batch = SinusoidTasks(num_support=5, num_query=5).sample(
      jax.random.key(seed), 4)
  return loss_fn, params, batch


def test_registering_a_name_twice_is_an_error():
  registry = Registry('train_step')
  registry.register('a')(lambda: None)
  with pytest.raises(ValueError, match="train_step='a' is already registered"):
    registry.register('a')(lambda: None)


def test_maml_name_is_taken_in_the_global_registry():
  with pytest.raises(ValueError, match='already registered'):
    algorithms.TRAIN_STEPS.register('maml')(lambda: None)


def test_unknown_name_lists_the_known_ones():
  with pytest.raises(ValueError) as err:
    algorithms.TRAIN_STEPS.lookup('mamll')
  assert "train_step='mamll' is not registered" in str(err.value)
  assert 'maml' in str(err.value).split('known:')[1]


def test_maml_step_applies_adam_to_the_exact_meta_gradient():
  loss_fn, params, batch = _setup()
  tx = optax.adam(1e-3)
  state = maml_plugin.MetaTrainState.create(params, tx)
  step = maml_plugin.make_train_step('maml', loss_fn=loss_fn, tx=tx,
                                     inner_lr=0.01, num_inner_steps=2)
  new_state, metrics = jax.jit(step)(state, batch, jax.random.key(0))

  grads = jax.grad(core.maml_loss, argnums=1)(
      loss_fn, params, batch, inner_lr=0.01, num_steps=2)
  updates, _ = tx.update(grads, tx.init(params), params)
  expected = optax.apply_updates(params, updates)
  for a, b in zip(jax.tree.leaves(new_state.params),
                  jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert int(new_state.step) == 1

  values = metrics.compute()
  assert set(values) == {'query_loss_before', 'query_loss_after',
                         'meta_grad_norm'}
  np.testing.assert_allclose(values['meta_grad_norm'],
                             optax.global_norm(grads), rtol=1e-5)
  np.testing.assert_allclose(
      values['query_loss_after'],
      core.maml_loss(loss_fn, params, batch, inner_lr=0.01, num_steps=2),
      rtol=1e-5)


def test_train_step_compiles_once_across_steps():
  loss_fn, params, _ = _setup()
  tx = optax.adam(1e-3)
  state = maml_plugin.MetaTrainState.create(params, tx)
  step = jax.jit(maml_plugin.make_train_step(
      'maml', loss_fn=loss_fn, tx=tx, inner_lr=0.01), donate_argnums=0)
  tasks = SinusoidTasks(num_support=5, num_query=5)
  for i in range(3):
    state, _ = step(state, tasks.sample(jax.random.key(i), 4),
                    jax.random.key(i))
  assert step._cache_size() == 1  # pylint: disable=protected-access


def test_meta_training_lowers_the_query_loss_after_adaptation():
  loss_fn, params, _ = _setup()
  tx = optax.adam(3e-3)
  state = maml_plugin.MetaTrainState.create(params, tx)
  step = jax.jit(maml_plugin.make_train_step(
      'maml', loss_fn=loss_fn, tx=tx, inner_lr=0.01))
  tasks = SinusoidTasks(num_support=10, num_query=10)
  held_out = tasks.sample(jax.random.key(999), 100)
  before = core.maml_loss(loss_fn, state.params, held_out, inner_lr=0.01)
  for i in range(300):
    state, _ = step(state, tasks.sample(jax.random.key(i), 10),
                    jax.random.key(i))
  after = core.maml_loss(loss_fn, state.params, held_out, inner_lr=0.01)
  assert float(after) < 0.7 * float(before)


def test_steps_that_report_a_metric_are_those_that_take_metric_fn():
  """The trainer hands `metric_fn` (Omniglot's accuracy) to the factories
  that take it: the MAML-style steps report `query_accuracy_*`; Reptile,
  ANIL and Meta-SGD report the loss only (pins
  `algorithms.accepts_metric_fn`; an inverted test passes `metric_fn` to a
  factory that has no such argument)."""
  from maml_plugin import algorithms  # pylint: disable=import-outside-toplevel
  expected = {'maml': True, 'fomaml': True, 'mamlpp': True, 'imaml': True,
              'reptile': False, 'anil': False, 'metasgd': False}
  assert {name: algorithms.accepts_metric_fn(name)
          for name in expected} == expected


def test_mamlpp_keeps_one_copy_of_the_model_state_unless_asked():
  """MAML++'s per-step batch-norm statistics (BNRS) are off by default:
  the train state keeps the model's state as it is, not N stacked copies
  (pins the default `per_step_bn_stats=False`)."""
  loss_fn, _, _ = _setup()
  state = {'mean': jnp.arange(3.0), 'var': jnp.ones((3,))}
  stateful = core.StatefulLoss(lambda p, s, b, r: (loss_fn(p, b), s))
  kwargs = dict(loss_fn=stateful, tx=optax.adam(1e-3), inner_lr=0.1,
                num_inner_steps=4)
  default = maml_plugin.make_algorithm('mamlpp', **kwargs)
  kept = default.init_model_state(state)
  assert jax.tree.map(jnp.shape, kept) == {'mean': (3,), 'var': (3,)}
  stacked = maml_plugin.make_algorithm('mamlpp', per_step_bn_stats=True,
                                       **kwargs).init_model_state(state)
  assert jax.tree.map(jnp.shape, stacked) == {'mean': (4, 3),
                                               'var': (4, 3)}


@pytest.mark.parametrize('name', ['maml', 'anil', 'metasgd', 'mamlpp'])
def test_inner_steps_are_rematerialized_only_when_asked(name):
  """`remat_inner_steps` is off by default (remat trades time for memory):
  the default step's program has no `jax.checkpoint` (a ``remat``/
  ``checkpoint`` equation), the one with ``remat_inner_steps=True`` has
  (pins the default of each algorithm that offers it)."""
  loss_fn, params, batch = _setup()

  def program(**extra):
    algorithm = maml_plugin.make_algorithm(
        name, loss_fn=loss_fn, tx=optax.sgd(0.1), inner_lr=0.01,
        num_inner_steps=2, **extra)
    state = maml_plugin.MetaTrainState.create(
        algorithm.init_params(params), optax.sgd(0.1))
    return str(jax.make_jaxpr(algorithm.train_step)(state, batch,
                                                    jax.random.key(0)))

  def has_remat(text):
    return 'checkpoint[' in text or 'remat' in text

  assert not has_remat(program())
  assert has_remat(program(remat_inner_steps=True))
