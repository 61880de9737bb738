"""FOMAML's train step against the first-order MAML gradient, float64."""

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
