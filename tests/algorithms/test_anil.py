"""ANIL's train step against independent computations, float64."""

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
from tests.helpers import TOL
from tests.helpers import close as _close
from tests.helpers import problem as _problem
from tests.helpers import task as _task

pytestmark = pytest.mark.usefixtures('x64')


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
