"""`max_meta_grad_norm`: the meta-gradient's global norm bounded before Adam.

One meta-batch whose inner steps overshoot can have a meta-gradient of norm
1e17; unclipped, Adam's second moment takes its square and the following
steps stall (docs/sinusoid.md). These tests compare the clipped optimizer
with Adam applied to a gradient scaled by hand, and check what a train step
on such a meta-batch leaves in Adam's state.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs import maml_sine
from maml_plugin import train


def _adam_state(opt_state):
  return next(node for node in jax.tree.leaves(
      opt_state, is_leaf=lambda n: isinstance(n, optax.ScaleByAdamState))
              if isinstance(node, optax.ScaleByAdamState))


def _params_and_grads(norm, seed=0):
  rng = np.random.default_rng(seed)
  params = {'w': jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
            'b': jnp.asarray(rng.normal(size=(3,)), jnp.float32)}
  grads = {k: rng.normal(size=v.shape) for k, v in params.items()}
  total = np.sqrt(sum(np.sum(g ** 2) for g in grads.values()))
  grads = {k: jnp.asarray(g * norm / total, jnp.float32)
           for k, g in grads.items()}
  return params, grads


def _maml_config(max_norm):
  config = maml_sine.get_config('paper')
  config.max_meta_grad_norm = max_norm
  return config


def test_the_default_clips_to_ten_and_paper_does_not():
  assert maml_sine.get_config().max_meta_grad_norm == 10.0
  assert maml_sine.get_config('paper').max_meta_grad_norm is None


def test_a_large_gradient_reaches_adam_scaled_to_the_bound():
  """An ordinary step (norm 1, untouched), then one of norm 1e17: Adam
  sees it at norm 10 (after an ordinary step Adam is not scale-invariant,
  so an unclipped or wrongly scaled gradient moves differently)."""
  params, small = _params_and_grads(norm=1.0, seed=1)
  _, big = _params_and_grads(norm=1e17)
  tx = train.create_optimizer(_maml_config(10.0))
  state = tx.init(params)
  _, state = tx.update(small, state, params)
  updates, _ = tx.update(big, state, params)
  # By hand: the same gradients, the second with its norm set to 10.
  adam = optax.adam(1e-3)
  adam_state = adam.init(params)
  _, adam_state = adam.update(small, adam_state, params)
  scaled = jax.tree.map(lambda g: g * (10.0 / 1e17), big)
  expected, _ = adam.update(scaled, adam_state, params)
  for k in params:
    np.testing.assert_allclose(updates[k], expected[k], rtol=1e-5)


def test_a_gradient_under_the_bound_is_untouched():
  params, grads = _params_and_grads(norm=5.0)
  tx = train.create_optimizer(_maml_config(10.0))
  plain = train.create_optimizer(_maml_config(None))
  got, _ = tx.update(grads, tx.init(params), params)
  want, _ = plain.update(grads, plain.init(params), params)
  for k in params:
    np.testing.assert_array_equal(got[k], want[k])


def test_second_moment_stays_bounded_only_with_the_clip():
  """The mechanism of the blow-up: unclipped, one huge gradient puts its
  square into Adam's second moment (1e-3 * g^2); clipped, at most
  1e-3 * 10^2 in any entry."""
  params, grads = _params_and_grads(norm=1e17)
  for max_norm, bound in ((10.0, 1e-3 * 10.0 ** 2), (None, None)):
    tx = train.create_optimizer(_maml_config(max_norm))
    _, state = tx.update(grads, tx.init(params), params)
    nu_max = max(float(jnp.max(v)) for v in
                 jax.tree.leaves(_adam_state(state).nu))
    if bound is None:
      assert nu_max > 1e28
    else:
      assert nu_max <= bound * (1 + 1e-5)


def test_a_train_step_reports_the_raw_norm_and_adam_sees_the_clipped():
  """The default config's own step on a meta-batch with targets x10 (its
  inner steps overshoot): `meta_grad_norm` is the gradient's own norm, far
  above the bound; Adam's second moment holds at most the bound's square."""
  config = maml_sine.get_config()
  components = train.build_components(config)
  batch = components.meta_batch(jax.random.key(3))
  batch = {part: {'x': batch[part]['x'], 'y': batch[part]['y'] * 10.0}
           for part in ('support', 'query')}
  state, metrics = jax.jit(components.train_step)(
      components.state, batch, jax.random.key(4))
  raw = float(metrics.compute()['meta_grad_norm'])
  assert raw > 100 * config.max_meta_grad_norm
  nu_max = max(float(jnp.max(v)) for v in
               jax.tree.leaves(_adam_state(state.opt_state).nu))
  assert nu_max <= 1e-3 * config.max_meta_grad_norm ** 2 * (1 + 1e-5)
