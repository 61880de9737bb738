"""Reptile's train step against independent computations, float64."""

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
