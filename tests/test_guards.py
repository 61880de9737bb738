"""The opt-in non-finite guard of a registered train step in another loop."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from maml_plugin import guards
from maml_plugin import losses
from maml_plugin import algorithms


def _linear_loss(p, batch):
  return losses.mse(batch['x'] @ p['w'], batch['y'])


def _residual_norm_loss(p, batch):
  # Finite (0) where the residual is exactly zero, but its gradient there is
  # 0/0: NaN. The query sets below make it so; the support sets do not.
  return jnp.linalg.norm(batch['x'] @ p['w'] - batch['y'])


def _setup(loss_fn=_linear_loss, tx=optax.adam(0.1)):
  algorithm = algorithms.make_algorithm('maml', loss_fn=loss_fn, tx=tx,
                                         inner_lr=0.1)
  state = algorithms.MetaTrainState.create({'w': jnp.ones((1, 1))}, tx)
  return algorithm.train_step, state


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  return {part: {'x': rng.normal(size=(3, 4, 1)).astype(np.float32),
                 'y': rng.normal(size=(3, 4, 1)).astype(np.float32)}
          for part in ('support', 'query')}


def _nan_batch():
  batch = _batch(1)
  batch['query']['y'][1, 2, 0] = np.nan
  return batch


def _nan_gradient_batch():
  batch = _batch(2)
  batch['query'] = {'x': np.zeros((3, 4, 1), np.float32),
                    'y': np.zeros((3, 4, 1), np.float32)}
  return batch


def _same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_the_nan_gradient_batch_has_a_finite_loss_and_a_nan_gradient():
  train_step, state = _setup(_residual_norm_loss)
  _, metrics = train_step(state, _nan_gradient_batch(), jax.random.key(0))
  values = metrics.compute()
  assert np.isfinite(values['query_loss_after'])
  assert np.isnan(values['meta_grad_norm'])


@pytest.mark.parametrize('loss_fn, bad_batch', [
    (_linear_loss, _nan_batch()),
    (_residual_norm_loss, _nan_gradient_batch()),
], ids=['nan_in_batch', 'finite_loss_nan_gradient'])
def test_skip_keeps_the_state_and_counts_the_skipped_step(loss_fn, bad_batch):
  """Also pins: a good step's metrics passed through unchanged (a kept
  metric chosen with the arguments of its `jnp.where` swapped turns each
  average into 1)."""
  train_step, state = _setup(loss_fn)
  step = jax.jit(guards.guard_train_step(train_step, on_nonfinite='skip'))
  good_state, good = step(state, _batch(), jax.random.key(0))
  assert int(good.compute()['skipped_updates']) == 0
  expected, unguarded = jax.jit(train_step)(state, _batch(),
                                            jax.random.key(0))
  np.testing.assert_allclose(good_state.params['w'], expected.params['w'],
                             rtol=1e-6)
  for name, value in unguarded.compute().items():
    np.testing.assert_allclose(good.compute()[name], value, rtol=1e-6)

  kept, bad = step(good_state, bad_batch, jax.random.key(1))
  _same((kept.params, kept.opt_state), (good_state.params,
                                        good_state.opt_state))
  assert int(kept.step) == 2  # The next step draws new tasks.
  merged = good.merge(bad).compute()
  assert int(merged['skipped_updates']) == 1
  # The skipped step adds nothing to the averages.
  for name in ('query_loss_after', 'meta_grad_norm'):
    np.testing.assert_allclose(merged[name], good.compute()[name])


def test_stop_names_the_meta_step_and_the_nan_meta_loss():
  train_step, state = _setup()
  step = guards.guard_train_step(train_step, on_nonfinite='stop')
  state, metrics = step(state, _batch(), jax.random.key(0))
  assert set(metrics.compute()) == {'query_loss_before', 'query_loss_after',
                                    'meta_grad_norm'}
  with pytest.raises(guards.NonFiniteError) as err:
    step(state, _nan_batch(), jax.random.key(1))
  assert str(err.value).startswith(
      'meta-step 2: meta-loss (query_loss_after) is nan and meta-gradient '
      '(meta_grad_norm) is nan; stopped')


def test_stop_names_a_nan_gradient_under_a_finite_loss():
  train_step, state = _setup(_residual_norm_loss)
  step = guards.guard_train_step(train_step, on_nonfinite='stop')
  with pytest.raises(guards.NonFiniteError) as err:
    step(state, _nan_gradient_batch(), jax.random.key(0))
  assert str(err.value).startswith(
      'meta-step 1: meta-gradient (meta_grad_norm) is nan; stopped')


def test_stop_passes_a_good_step_through_unchanged():
  train_step, state = _setup()
  new_state, metrics = guards.guard_train_step(train_step, 'stop')(
      state, _batch(), jax.random.key(0))
  expected_state, expected = jax.jit(train_step)(state, _batch(),
                                                  jax.random.key(0))
  _same((new_state, metrics), (expected_state, expected))


def test_stop_under_jit_and_an_unknown_mode_are_refused():
  train_step, state = _setup()
  with pytest.raises(TypeError, match='cannot run under jax.jit'):
    jax.jit(guards.guard_train_step(train_step, 'stop'))(
        state, _batch(), jax.random.key(0))
  with pytest.raises(ValueError, match="on_nonfinite='ignore': must be one "
                     "of 'stop', 'skip'"):
    guards.guard_train_step(train_step, 'ignore')
